"""imagedsl: container images built from Python, with exact, explainable caching.

Write stages with the constructors below (``import imagedsl as dsl``)::

    import imagedsl as dsl

    src = dsl.context(".")
    app = dsl.image("python:3.12-slim").copy(src.dir("app"), "/app").cmd("python", "/app/main.py")

This module is the vocabulary of build files and its errors. Planning, building, pushing and
the store are in :mod:`imagedsl.api` (what the ``imagedsl`` command itself calls).
"""

from __future__ import annotations

__version__ = "0.1.0"

from imagedsl.context import Context, ContextSource
from imagedsl.dsl import (
    BUILDARCH,
    BUILDOS,
    BUILDPLATFORM,
    BUILDVARIANT,
    TARGETARCH,
    TARGETOS,
    TARGETPLATFORM,
    TARGETVARIANT,
    GlobalArg,
    Platforms,
    Stage,
    StageRef,
    Targets,
    arg,
    bind,
    cache,
    context,
    from_stage,
    image,
    inline,
    platforms,
    scratch,
    script,
    secret,
    stage,
    targets,
    tmpfs,
    url,
)
from imagedsl.errors import (
    BuildFailure,
    BuildFileError,
    ContextError,
    CycleError,
    EnvironmentFailure,
    ImageDSLError,
    InputError,
    StepArgumentError,
    UnknownStageError,
    UnknownTargetError,
)

__all__ = [
    "BUILDARCH",
    "BUILDOS",
    "BUILDPLATFORM",
    "BUILDVARIANT",
    "TARGETARCH",
    "TARGETOS",
    "TARGETPLATFORM",
    "TARGETVARIANT",
    "BuildFailure",
    "BuildFileError",
    "Context",
    "ContextError",
    "ContextSource",
    "CycleError",
    "EnvironmentFailure",
    "GlobalArg",
    "ImageDSLError",
    "InputError",
    "Platforms",
    "Stage",
    "StageRef",
    "StepArgumentError",
    "Targets",
    "UnknownStageError",
    "UnknownTargetError",
    "__version__",
    "arg",
    "bind",
    "cache",
    "context",
    "from_stage",
    "image",
    "inline",
    "platforms",
    "scratch",
    "script",
    "secret",
    "stage",
    "targets",
    "tmpfs",
    "url",
]

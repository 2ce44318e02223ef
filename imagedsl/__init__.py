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

import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

#: Where each name of the vocabulary lives. They are imported when first used (PEP 562): a
#: command that needs none of them (``imagedsl inspect``) does not pay for the planner's
#: modules behind them.
_CONTEXT: tuple[str, ...] = ("Context", "ContextSource")
_ERRORS: tuple[str, ...] = (
    "BuildFailure",
    "BuildFileError",
    "ContextError",
    "CycleError",
    "EnvironmentFailure",
    "ImageDSLError",
    "InputError",
    "StepArgumentError",
    "UnknownStageError",
    "UnknownTargetError",
)


def __getattr__(name: str) -> object:
    if name not in __all__ or name == "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    home = (
        "imagedsl.context"
        if name in _CONTEXT
        else "imagedsl.errors"
        if name in _ERRORS
        else "imagedsl.dsl"
    )
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Vocabulary(types.ModuleType):
    """The package: ``imagedsl.context`` stays the DSL's ``context()`` when the submodule of
    that name is imported (the import system binds a submodule on its package), as it was
    when this module imported everything up front."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "context" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Vocabulary

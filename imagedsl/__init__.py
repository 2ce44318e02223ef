"""imagedsl: container images built from Python, with exact, explainable caching.

Write stages with the constructors below (``import imagedsl as dsl``), then plan them::

    import imagedsl as dsl

    src = dsl.context(".")
    app = dsl.image("python:3.12-slim").copy(src.dir("app"), "/app").cmd("python", "/app/main.py")
"""

from __future__ import annotations

__version__ = "0.1.0"

from imagedsl.context import Context, ContextSource
from imagedsl.dsl import (
    Stage,
    StageRef,
    Targets,
    bind,
    cache,
    context,
    image,
    scratch,
    secret,
    stage,
    targets,
    tmpfs,
    url,
)
from imagedsl.errors import (
    BuildFileError,
    ContextError,
    CycleError,
    ImageDSLError,
    StepArgumentError,
    UnknownStageError,
    UnknownTargetError,
)
from imagedsl.loader import BuildFile, load_buildfile
from imagedsl.planner import Plan, PlannedStep, PlanStatus, plan, record_copy_output, record_step
from imagedsl.reporting import Reporter
from imagedsl.store import Record, Store, StoreWarning

__all__ = [
    "BuildFile",
    "BuildFileError",
    "Context",
    "ContextError",
    "ContextSource",
    "CycleError",
    "ImageDSLError",
    "Plan",
    "PlanStatus",
    "PlannedStep",
    "Record",
    "Reporter",
    "Stage",
    "StageRef",
    "StepArgumentError",
    "Store",
    "StoreWarning",
    "Targets",
    "UnknownStageError",
    "UnknownTargetError",
    "__version__",
    "bind",
    "cache",
    "context",
    "image",
    "load_buildfile",
    "plan",
    "record_copy_output",
    "record_step",
    "scratch",
    "secret",
    "stage",
    "targets",
    "tmpfs",
    "url",
]

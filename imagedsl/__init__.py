"""imagedsl: container images built from Python, with exact, explainable caching.

Write stages with the constructors below (``import imagedsl as dsl``)::

    import imagedsl as dsl

    src = dsl.context(".")
    app = dsl.image("python:3.12-slim").copy(src.dir("app"), "/app").cmd("python", "/app/main.py")

This module is the vocabulary of build files and its errors. Planning, building, pushing and
the store are in :mod:`imagedsl.api` (what the ``imagedsl`` command itself calls).

The names are loaded on first use (PEP 562): ``import imagedsl`` alone costs next to nothing,
so the ``imagedsl`` command can hand a plan to a running server (:mod:`imagedsl._server`)
before it imports the rest. The first name asked for loads them all.
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # importing typing would cost the command's front door 5 ms
if TYPE_CHECKING:
    from typing import Any

    from imagedsl.contexts import Context, ContextSource
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


def _load() -> dict[str, Any]:
    """Every name of ``__all__``, from the modules that define them."""
    from imagedsl import contexts, dsl, errors

    found: dict[str, Any] = {}
    for module in (contexts, dsl, errors):
        found.update((name, vars(module)[name]) for name in __all__ if name in vars(module))
    return found


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all attribute

    def __getattr__(name: str) -> Any:
        if name not in __all__:
            raise AttributeError(f"module 'imagedsl' has no attribute {name!r}")
        names = _load()
        globals().update(names)
        return names[name]

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})

"""One base error for everything imagedsl refuses, in three categories, each with its exit code.

    ImageDSLError
    ├── InputError          exit 2: the build file, an option or an input is wrong
    ├── BuildFailure        exit 1: the build ran and a step failed (a RUN, BuildKit)
    └── EnvironmentFailure  exit 1: something outside the input failed (registry, engine,
                            runtime, store, disk)

Subclasses keep the facts as attributes (attrs writes their ``__init__``, ``repr`` and exception
``args``) and build the message in ``__str__``, so tests (and tools) assert on data rather than
wording, and the CLI prints one clean line and maps the category to an exit code
(:func:`exit_code_of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

import attrs


@attrs.frozen(order=True)
class SourceLocation:
    """Where in a build file a value was made: the file and the 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class ImageDSLError(Exception):
    """The base of every error imagedsl raises on purpose."""

    #: Where in the user's build file the problem is, when known.
    location: SourceLocation | None = None
    #: The process exit status the CLI gives this category of error.
    exit_code: ClassVar[int] = 2

    def with_location(self, location: SourceLocation | None) -> ImageDSLError:
        """Attach a location unless one is already known; return self for ``raise``."""
        if self.location is None and location is not None:
            self.location = location
        return self


class InputError(ImageDSLError):
    """The input is wrong: the build file, a target, an option, a reference, the context."""

    exit_code: ClassVar[int] = 2


class BuildFailure(ImageDSLError):
    """The build ran and a step failed (a RUN exited non-zero, BuildKit failed a step)."""

    exit_code: ClassVar[int] = 1


class EnvironmentFailure(ImageDSLError):
    """Something the build needs from its surroundings failed: a registry, the Docker engine,
    the container runtime, the store, the disk."""

    exit_code: ClassVar[int] = 1


def exit_code_of(error: ImageDSLError) -> int:
    """The exit status for ``error``: its category's."""
    return type(error).exit_code


def string_tuple(values: Iterable[str]) -> tuple[str, ...]:
    """An attrs converter: any iterable of strings, kept as a tuple."""
    return tuple(values)


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "(none)"


@attrs.define
class StepArgumentError(InputError, TypeError):
    """A step was given an argument of the wrong type or an impossible value."""

    step: str
    argument: str
    problem: str

    def __str__(self) -> str:
        return f"{self.step}: argument {self.argument!r} {self.problem}"


@attrs.define
class PlatformError(InputError):
    """``--platform`` (or ``platform=``) is not a platform or a comma-separated list of them."""

    value: str
    problem: str

    def __str__(self) -> str:
        return f"--platform {self.value!r}: {self.problem}"


@attrs.define
class BuildFileError(InputError):
    """A build file could not be loaded: syntax error, exception, or nothing to build."""

    location: SourceLocation | None
    message: str

    def __str__(self) -> str:
        return self.message


@attrs.define
class UnknownTargetError(InputError):
    """The requested target is not a stage of the build file."""

    target: str
    available: tuple[str, ...] = attrs.field(converter=string_tuple)

    def __str__(self) -> str:
        return f"unknown target {self.target!r}; available targets: {_names(self.available)}"


@attrs.define
class UnknownStageError(InputError):
    """A reference by name points at no stage."""

    name: str
    available: tuple[str, ...] = attrs.field(converter=string_tuple)

    def __str__(self) -> str:
        return (
            f"stage {self.name!r} is referenced but not defined; stages: {_names(self.available)}"
        )


@attrs.define
class CycleError(InputError):
    """Stages depend on each other in a loop; ``cycle`` lists the stage names in order."""

    cycle: tuple[str, ...] = attrs.field(converter=string_tuple)

    def __str__(self) -> str:
        loop = " -> ".join((*self.cycle, self.cycle[0])) if self.cycle else "?"
        return f"stages depend on each other in a cycle: {loop}"


@attrs.define
class ContextError(InputError):
    """A build context cannot be read as asked: missing root, missing selected paths."""

    root: str
    missing: tuple[str, ...] = attrs.field(default=(), converter=string_tuple)
    problem: str = ""

    def __str__(self) -> str:
        if self.missing:
            return f"not in the build context {self.root}: {', '.join(self.missing)}"
        return f"build context {self.root}: {self.problem}"


@attrs.define
class StoreError(EnvironmentFailure):
    """The store cannot be used (not writable, not a directory, ...)."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"store {self.path}: {self.problem}"

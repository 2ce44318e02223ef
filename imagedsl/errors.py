"""One base error for everything imagedsl refuses; subclasses keep the facts as attributes.

Messages are built in ``__str__`` from those attributes, so tests (and tools) can assert on
data rather than wording, and the CLI can print one clean line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Sequence


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

    def with_location(self, location: SourceLocation | None) -> ImageDSLError:
        """Attach a location unless one is already known; return self for ``raise``."""
        if self.location is None and location is not None:
            self.location = location
        return self


class StepArgumentError(ImageDSLError, TypeError):
    """A step was given an argument of the wrong type or an impossible value."""

    def __init__(self, step: str, argument: str, problem: str) -> None:
        super().__init__(step, argument, problem)
        self.step = step
        self.argument = argument
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.step}: argument {self.argument!r} {self.problem}"


class BuildFileError(ImageDSLError):
    """A build file could not be loaded: syntax error, exception, or nothing to build."""

    def __init__(self, location: SourceLocation | None, message: str) -> None:
        super().__init__(location, message)
        self.location = location
        self.message = message

    def __str__(self) -> str:
        return self.message


class UnknownTargetError(ImageDSLError):
    """The requested target is not a stage of the build file."""

    def __init__(self, target: str, available: Sequence[str]) -> None:
        super().__init__(target, tuple(available))
        self.target = target
        self.available = tuple(available)

    def __str__(self) -> str:
        have = ", ".join(self.available) if self.available else "(none)"
        return f"unknown target {self.target!r}; available targets: {have}"


class UnknownStageError(ImageDSLError):
    """A reference by name points at no stage."""

    def __init__(self, name: str, available: Sequence[str]) -> None:
        super().__init__(name, tuple(available))
        self.name = name
        self.available = tuple(available)

    def __str__(self) -> str:
        have = ", ".join(self.available) if self.available else "(none)"
        return f"stage {self.name!r} is referenced but not defined; stages: {have}"


class CycleError(ImageDSLError):
    """Stages depend on each other in a loop; ``cycle`` lists the stage names in order."""

    def __init__(self, cycle: Sequence[str]) -> None:
        super().__init__(tuple(cycle))
        self.cycle = tuple(cycle)

    def __str__(self) -> str:
        loop = " -> ".join((*self.cycle, self.cycle[0])) if self.cycle else "?"
        return f"stages depend on each other in a cycle: {loop}"


class ContextError(ImageDSLError):
    """A build context cannot be read as asked: missing root, missing selected paths."""

    def __init__(self, root: str, missing: Sequence[str] = (), problem: str = "") -> None:
        super().__init__(root, tuple(missing), problem)
        self.root = root
        self.missing = tuple(missing)
        self.problem = problem

    def __str__(self) -> str:
        if self.missing:
            names = ", ".join(self.missing)
            return f"not in the build context {self.root}: {names}"
        return f"build context {self.root}: {self.problem}"


class StoreError(ImageDSLError):
    """The store cannot be used (not writable, not a directory, ...)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        return f"store {self.path}: {self.problem}"

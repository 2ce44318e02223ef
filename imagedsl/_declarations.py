"""What a build file declares by calling rather than assigning.

``dsl.targets("app")`` on a line of its own declares targets as surely as ``targets =
dsl.targets("app")`` does, but leaves nothing in the module's namespace. While the loader runs
a build file it collects here every declaration made (in this thread only), so a bare call is
checked like an assigned one instead of being silently ignored.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_made: contextvars.ContextVar[list[object] | None] = contextvars.ContextVar(
    "imagedsl_declarations", default=None
)


@contextlib.contextmanager
def collecting() -> Iterator[list[object]]:
    """Collect the declarations made inside the block (the loader runs a build file here)."""
    made: list[object] = []
    token = _made.set(made)
    try:
        yield made
    finally:
        _made.reset(token)


def note(value: object) -> None:
    """A declaration was made (outside a load, nobody is collecting: nothing happens)."""
    made = _made.get()
    if made is not None:
        made.append(value)

"""Secret values kept out of what a build prints: RUN output, failure tails, relayed progress.

Both backends mask the same way: every secret value given to the build, and each line of a
multi-line value (output arrives line by line), is replaced by ``****`` wherever it appears in
a line, longest first. Values shorter than four characters are not masked (they would mask
everything).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

#: Secret values shorter than this are not masked in output (they would mask everything).
MASK_MIN: Final = 4
MASK: Final = "****"


def masks_for(values: Iterable[bytes]) -> tuple[str, ...]:
    """What to mask: each secret value, and each line of a multi-line one (output arrives
    line by line), longest first so a value is masked whole before any part of it."""
    found: set[str] = set()
    for value in values:
        text = value.decode("utf-8", "replace")
        for candidate in (text, text.strip(), *text.splitlines()):
            if len(candidate.strip()) >= MASK_MIN:
                found.add(candidate)
    return tuple(sorted(found, key=len, reverse=True))


def masked(line: str, masks: Sequence[str]) -> str:
    """``line`` with every occurrence of every mask replaced by ``****``."""
    for mask in masks:
        if mask in line:
            line = line.replace(mask, MASK)
    return line

"""``RUN --mount`` option values read as BuildKit reads them (sizes, secret ids).

Kept apart from :mod:`._translate`, which turns the options into DSL calls.
"""

from __future__ import annotations

import posixpath
import re
from typing import Final

__all__ = ["MountOptionError", "ram_in_bytes", "secret_id"]

# go-units' RAMInBytes, which BuildKit reads a tmpfs `size` with: a number, an optional
# space, an optional binary prefix (k = 1024), then an optional "i" and "b" ("64m", "4G",
# "1.5GiB", "512 kb", "67108864").
_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", re.IGNORECASE)
_PREFIXES: Final = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


class MountOptionError(ValueError):
    """A mount option BuildKit refuses too; the message names it."""


def ram_in_bytes(text: str) -> int:
    """A tmpfs size in bytes, as BuildKit computes it (the fraction of a byte is dropped)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise MountOptionError(f"--mount option size={text}: not a size (BuildKit refuses it too)")
    number: str = match.group(1)
    prefix: str | None = match.group(2)
    power = _PREFIXES[prefix.lower()] if prefix else 0
    whole, _, fraction = number.partition(".")
    # Exact arithmetic: Go multiplies a float64 and truncates, which equals this for every
    # size a tmpfs can have (below 2**53 bytes).
    scale: int = 1024**power
    part = int(fraction) * scale // 10 ** len(fraction) if fraction else 0
    return int(whole) * scale + part


def secret_id(fields: dict[str, str], target: str | None) -> str:
    """The id a secret mount reads (BuildKit's dispatchSecret): ``source`` (or ``src``)
    before ``id``, else the last element of the target. Takes those fields out of ``fields``."""
    source = fields.pop("source", None) or fields.pop("src", None)
    declared = fields.pop("id", None)
    chosen = source or declared
    if chosen:
        return chosen
    if target is None:
        raise MountOptionError("--mount=type=secret needs an id, a source or a target")
    return posixpath.basename(target.rstrip("/")) or target

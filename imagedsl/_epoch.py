"""``SOURCE_DATE_EPOCH``: the one time a build writes (every mtime, ``created``, the source
mtime recorded in the ``.pyc`` files a RUN writes: :mod:`imagedsl.backends.oci.run.bytecode`).
It enters RUN keys, since it changes what a RUN's layer holds (docs/cache-keys.md); it is not
in a RUN's environment, as under BuildKit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

import attrs

from imagedsl.errors import InputError

ENV: Final = "SOURCE_DATE_EPOCH"
DEFAULT_EPOCH: Final = 0
#: The largest mtime a tar header's 11 octal digits hold (2242-03-16): later epochs are
#: refused rather than written as layers some readers cannot read.
MAX_EPOCH: Final = 8**11 - 1


@attrs.define
class EpochError(InputError):
    """``SOURCE_DATE_EPOCH`` (or an epoch argument) is not a usable time."""

    value: str
    problem: str

    def __str__(self) -> str:
        return f"{ENV}={self.value!r}: {self.problem}"


def check_epoch(value: int) -> int:
    """``value`` if a tar header can hold it as an mtime, else :class:`EpochError`."""
    if not 0 <= value <= MAX_EPOCH:
        raise EpochError(
            str(value), f"must be from 0 to {MAX_EPOCH} (the largest mtime a tar header holds)"
        )
    return value


def epoch_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``$SOURCE_DATE_EPOCH`` as whole seconds (default 0), checked."""
    text = (os.environ if environ is None else environ).get(ENV)
    if not text:
        return DEFAULT_EPOCH
    if not text.isdigit():
        raise EpochError(text, "must be a whole number of seconds")
    return check_epoch(int(text))

"""How many cores this process may run on (its CPU affinity, which containers and ``taskset``
limit, not the machine's count), and whether a second process may share the work."""

from __future__ import annotations

import os
import sys
from typing import Final


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


#: Set to ``0`` never to fork workers (the work then runs on threads, or in this process).
NO_FORK_ENV: Final = "IMAGEDSL_FORK"


def fork_is_safe(workers: int = 2) -> bool:
    """Whether forking is safe and may pay for work shared by ``workers`` processes (this
    one included): on Linux (macOS's system libraries do not survive a fork without an exec),
    two cores or more, ``IMAGEDSL_FORK`` is not ``0``, and no other thread runs (a lock
    another thread holds would stay held in the child)."""
    threading_module = sys.modules.get("threading")
    return (
        workers > 1
        and sys.platform.startswith("linux")
        and os.environ.get(NO_FORK_ENV, "1") != "0"
        and (threading_module is None or threading_module.active_count() == 1)
        and cores() >= 2
    )


__all__ = ["NO_FORK_ENV", "cores", "fork_is_safe"]

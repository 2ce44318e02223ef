"""How many cores this process may run on (its CPU affinity, which containers and ``taskset``
limit, not the machine's count), and whether a second process may share the work."""

from __future__ import annotations

import os
import sys


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def fork_is_safe() -> bool:
    """Whether forking a worker is safe and may pay: ``os.fork`` exists, two cores, and no
    other thread (a forked child of a threaded process may deadlock)."""
    threading_module = sys.modules.get("threading")
    return (
        hasattr(os, "fork")
        and (threading_module is None or threading_module.active_count() == 1)
        and cores() >= 2
    )


__all__ = ["cores", "fork_is_safe"]

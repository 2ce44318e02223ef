"""How many cores this process may run on (its CPU affinity, which containers and ``taskset``
limit, not the machine's count)."""

from __future__ import annotations

import os


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


__all__ = ["cores"]

"""Waiting on explicit markers instead of sleeping: a test waits for the event it needs, and
the bound only turns a hang into a failure (it never decides a pass)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

_DEVICE_INODE = re.compile(r"^[0-9a-f]+:[0-9a-f]+:(\d+)$")


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float = 60.0) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def flock_waiters(path: Path) -> int:
    """How many processes or threads are blocked in ``flock`` on ``path`` (from /proc/locks,
    where a blocked request is listed with ``->`` after the lock that holds it up)."""
    inode = path.stat().st_ino
    waiting = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields or "FLOCK" not in fields:
            continue
        for field in fields:
            found = _DEVICE_INODE.match(field)
            if found and int(found.group(1)) == inode:
                waiting += 1
    return waiting

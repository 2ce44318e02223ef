"""Integrity records of snapshots: what every path of an extracted layer was when it was made.

A snapshot (an extracted layer that RUN steps stand on) is made once and then only read: an
overlay never writes to its lower directories. So each snapshot carries a record, written
before it is renamed into place: per path its type, mode, owner, size, mtime, inode and ctime,
and the blake3 of a file's bytes (a symlink's target, a whiteout's device). Any write to a
file, a ``chmod``, a ``chown`` or a new hard link changes its ctime, so the *cheap check*
(:func:`check_snapshot` without ``contents``: one ``lstat`` per path) finds every change made
through the filesystem; the full check (``contents=True``, what ``imagedsl cache verify`` does)
hashes the files as well and finds damage that bypassed the filesystem.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Final

import attrs
import blake3

from imagedsl.store import atomic_write

RECORD_VERSION: Final = 1
_OPAQUE_XATTR: Final = "trusted.overlay.opaque"
_CHUNK: Final = 1 << 20


@attrs.frozen
class SnapshotDamage:
    """What is wrong with a snapshot: the first path found different, and how."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"/{self.path}: {self.problem}" if self.path else self.problem


def _walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """Every path below ``root`` (not following symlinks), sorted."""
    found: list[tuple[str, os.stat_result]] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(root / rel if rel else root) as listing:
            for item in listing:
                path = f"{rel}/{item.name}" if rel else item.name
                st = item.stat(follow_symlinks=False)
                found.append((path, st))
                if stat.S_ISDIR(st.st_mode):
                    pending.append(path)
    found.sort()
    return found


def _content(root: Path, path: str, st: os.stat_result) -> str:
    """A file's blake3, a symlink's target, a device's number, a directory's opacity."""
    full = root / path
    if stat.S_ISREG(st.st_mode):
        hasher = blake3.blake3()
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            while chunk := os.read(fd, _CHUNK):
                hasher.update(chunk)
        finally:
            os.close(fd)
        return hasher.hexdigest()
    if stat.S_ISLNK(st.st_mode):
        return os.fsdecode(os.readlink(full))
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return str(st.st_rdev)
    if stat.S_ISDIR(st.st_mode):
        try:
            opaque = os.getxattr(full, _OPAQUE_XATTR, follow_symlinks=False) == b"y"
        except OSError:
            opaque = False
        return "opaque" if opaque else ""
    return ""


def _row(st: os.stat_result) -> list[int]:
    """What the cheap check compares. Not a device's inode and ctime: overlayfs makes the
    whiteouts of an upper directory hard links to one inode of its work directory, whose
    link count (so ctime) changes when the work directory goes; a device has no bytes."""
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return [st.st_mode, st.st_uid, st.st_gid, st.st_rdev, 0, 0, 0]
    return [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def write_record(tree: Path, record: Path) -> None:
    """Describe ``tree`` as it is now into the file ``record`` (atomically)."""
    entries = [[path, *_row(st), _content(tree, path, st)] for path, st in _walk(tree)]
    payload = {"v": RECORD_VERSION, "entries": entries}
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    atomic_write(record, data.encode("utf-8", "surrogateescape"))


def check_snapshot(tree: Path, record: Path, *, contents: bool = False) -> SnapshotDamage | None:
    """None if ``tree`` is still what ``record`` says, else the first difference found.

    Without ``contents`` only the metadata is compared (the ctime catches every write made
    through the filesystem); with it, every file is hashed as well.
    """
    try:
        payload = json.loads(record.read_bytes().decode("utf-8", "surrogateescape"))
        if not isinstance(payload, dict) or payload.get("v") != RECORD_VERSION:
            raise ValueError("not a version 1 record")
        expected = {row[0]: row for row in payload["entries"]}
    except FileNotFoundError:
        return SnapshotDamage("", "it has no integrity record")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        return SnapshotDamage("", f"its integrity record cannot be read ({error})")
    try:
        found = _walk(tree)
    except OSError as error:
        return SnapshotDamage("", f"it cannot be read ({error.strerror})")
    for path, st in found:
        row = expected.pop(path, None)
        if row is None:
            return SnapshotDamage(path, "is not in its integrity record")
        if row[1:8] != _row(st):
            return SnapshotDamage(path, "changed since the snapshot was made")
        if contents and _content(tree, path, st) != row[8]:
            return SnapshotDamage(path, "holds other bytes than when the snapshot was made")
    if expected:
        return SnapshotDamage(min(expected), "is missing")
    return None

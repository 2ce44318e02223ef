"""What a plan server knows of directories it watches: which have not changed since a plan
listed them, so a later plan need not list and stat them again.

A warm plan is mostly stat(2): one per file of every context, about 3 us each here. A plan
server (:mod:`imagedsl._server`) holds an inotify instance. The child it forks for a plan
adds a watch on each directory *before* it lists it, and sends the server what it listed;
the server counts every event per watch. For the next plan, a directory is taken as listed
last time (its entries, signature and subdirectories) only when all of this holds:

- no event arrived on its watch since the plan that listed it was forked (events come for
  every change of an entry: created, deleted, moved, written, closed after writing, its
  attributes changed), and the event queue never overflowed since;
- it held no file with more than one link (a write through a link in another directory
  reaches only that directory's watch) and is on the context root's device;
- the scan's top directory (the context root, or the directory a COPY names in it) is the
  same directory (device and inode: a symlink pointed elsewhere, or a directory on the way
  to it replaced, brings no event) and on a file system whose events are complete
  (:data:`LOCAL_FILE_SYSTEMS`: not NFS, FUSE or overlay, whose other side changes unseen).

Everything else is listed as before. What inotify cannot see stays a limit: a file changed
through a shared memory mapping without write(2) or close(2), or a mount made over a
directory. ``IMAGEDSL_WATCH=0`` turns watching off.

The state lives in the server and is inherited by each forked child, which reads it and
never changes what the server holds: it sends its listing back through a pipe.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import struct
from typing import Final

from imagedsl import _client

#: inotify(7) masks: every change of a directory's entries or of the directory itself.
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF = 0x400, 0x800
_IN_ONLYDIR, _IN_DONT_FOLLOW = 0x01000000, 0x02000000
_IN_Q_OVERFLOW = 0x4000
_MASK: Final = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
    | _IN_DONT_FOLLOW
)
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
#: statfs(2) f_type of file systems whose inotify events cover every change: ext2-4, XFS,
#: Btrfs, tmpfs, F2FS, ZFS.
LOCAL_FILE_SYSTEMS: Final = frozenset(
    {0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0xF2F52010, 0x2FC12FC1}
)

_MAX_BASELINES: Final = 32
_MAX_BYTES: Final = 64 << 20

#: One directory as a plan listed it: (watch, entries marshalled, signature, directories to
#: list below it, whether it may be trusted later).
Listed = tuple[int, bytes, bytes, list[str], bool]
#: Per scan (context root, rules, start): its top directory's (device, inode) and its
#: directories.
Baseline = tuple[tuple[int, int], dict[str, Listed]]


class Watcher:
    """The server's inotify instance and what it learnt; in a child, what it may reuse."""

    def __init__(self) -> None:
        import ctypes  # only a server makes a watcher: a plan's own import stays small

        self._ctypes = ctypes
        libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter runs on
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._statfs = libc.statfs
        self._statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd: int = fd
        #: Events counted so far; per watch, the count when its last event came.
        self.sequence = 0
        self.last_event: dict[int, int] = {}
        self.overflowed_at = -1
        #: Per scan key: its baseline, and the count when the plan that listed it forked.
        self.baselines: dict[str, tuple[int, Baseline]] = {}
        self.sizes: dict[str, int] = {}
        #: In a child: the count when it was forked, what its scans listed, and the stat-cache
        #: files it read or wrote (to report).
        self.forked_at = -1
        self.listed: dict[str, Baseline] = {}
        self.files: set[str] = set()
        #: In the server: stat-cache files to unmarshal while idle, and the (inode, size,
        #: mtime) of each when it was.
        self.pending: dict[str, None] = {}
        self.parsed: dict[str, tuple[int, int, int]] = {}

    # -- in the server -----------------------------------------------------------------------

    def drain(self) -> None:
        """Count every event queued (the server does this before it forks a child)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                self.sequence += 1
                if mask & _IN_Q_OVERFLOW:
                    self.overflowed_at = self.sequence
                else:
                    self.last_event[wd] = self.sequence

    def forking(self) -> None:
        """Called just before a fork: the child's view starts at this count."""
        self.drain()
        self.forked_at = self.sequence
        self.listed = {}
        self.files = set()

    def take(self, report: bytes, forked_at: int) -> None:
        """Keep what a child listed (its report), as of the count when it was forked."""
        with contextlib.suppress(ValueError, EOFError, TypeError):
            listed, files = marshal.loads(report)
            for key, baseline in listed.items():
                self.baselines.pop(key, None)
                self.baselines[key] = (forked_at, baseline)
                self.sizes[key] = sum(len(d[1]) for d in baseline[1].values())
            self.pending.update(dict.fromkeys(files))
        # The oldest scans go first, past 32 of them or 64 MB of listings (a 100,000-file
        # tree's is about 7 MB).
        while len(self.baselines) > _MAX_BASELINES or sum(self.sizes.values()) > _MAX_BYTES:
            oldest = next(iter(self.baselines))
            del self.baselines[oldest]
            self.sizes.pop(oldest, None)

    # -- in a child --------------------------------------------------------------------------

    def reusable(self, key: str, top: str) -> dict[str, Listed]:
        """The directories of scan ``key`` that have not changed since they were listed (an
        empty dict when the scan's top directory is not the same directory as then, or not on
        a local file system)."""
        known = self.baselines.get(key)
        if known is None or known[0] <= self.overflowed_at:
            return {}
        since, (identity, directories) = known
        if self.identity_of(top) != identity:
            return {}
        last = self.last_event
        return {
            d: listed
            for d, listed in directories.items()
            if listed[4] and last.get(listed[0], -1) < since
        }

    def identity_of(self, top: str) -> tuple[int, int] | None:
        """A scan's top directory's (device, inode), if its file system's events are
        complete."""
        buffer = self._ctypes.create_string_buffer(256)
        if self._statfs(os.fsencode(top), buffer) != 0:
            return None
        (kind,) = struct.unpack_from("l", buffer.raw)
        if kind & 0xFFFFFFFF not in LOCAL_FILE_SYSTEMS:
            return None
        try:
            st = os.stat(top)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def watch(self, path: str) -> int:
        """A watch on the directory ``path`` (-1 if the kernel refused one)."""
        return int(self._add_watch(self.fd, os.fsencode(path), _MASK))

    def keep(self, key: str, identity: tuple[int, int], directories: dict[str, Listed]) -> None:
        """Note what scan ``key`` listed (reused or new), for the report."""
        self.listed[key] = (identity, directories)

    def report(self) -> bytes:
        """What this child's scans listed and the stat-cache files it used, for the server."""
        return marshal.dumps((self.listed, sorted(self.files)))


def note_file(path: str) -> None:
    """A stat-cache file a plan read or wrote: its server unmarshals it while idle."""
    if WATCHER is not None:
        WATCHER.files.add(path)


#: The server's watcher, inherited by its children; None elsewhere.
WATCHER: Watcher | None = None


def start() -> Watcher | None:
    """A watcher for this process, unless ``IMAGEDSL_WATCH=0`` or the system refuses one."""
    global WATCHER
    if _client.switched_off("IMAGEDSL_WATCH"):
        return None
    try:
        WATCHER = Watcher()
    except (OSError, AttributeError):
        return None
    return WATCHER

"""Root filesystems for RUN steps: extracted layers, overlay mounts, and the change a RUN makes.

**Snapshots.** Each layer a RUN stands on is extracted once into the store, keyed by its
diff_id (``oci/snapshots/v3/<hex>/fs``), in overlayfs's own format: a deletion is a 0/0
character device, an opaque directory carries ``trusted.overlay.opaque=y``. Extraction goes to
a temporary directory renamed into place, so a snapshot is whole or absent; beside the tree
goes its integrity record (``check.json``), checked before a RUN stands on it. Base layers have been
checked by :func:`imagedsl.backends.oci.filesystem.scan_layer` before they get here; extraction checks
again on its own: every path is opened component by component with ``O_NOFOLLOW`` from the
snapshot's root, so no entry can make a write land outside it, and what the kernel could not
apply (names, owners, times past its bounds) is refused before it is tried. A RUN's own upper directory
becomes the snapshot of the layer it produced (mtimes set to the build's epoch, overlay's
private attributes dropped), so a later RUN never extracts it. Extended attributes a layer
carries (``SCHILY.xattr.*``) are set on what is extracted, after its owner (``chown`` clears
file capabilities).

**Workspaces.** A RUN's root is an overlay mount of those snapshots (lowest layer last in
``lowerdir``) with a fresh upper directory, when the kernel allows it here; otherwise
(``$IMAGEDSL_OCI_SNAPSHOTTER=copy``, or a failed overlay mount) a full copy of the snapshots,
compared with the layers below afterwards.

**Changes.** What the RUN did becomes the entries of one layer: new and changed files,
directories, symlinks and hard links with the owners, modes and extended attributes (file
capabilities, ACLs, ``user.*``: :func:`~imagedsl.backends.oci.layer.carries_xattr`) the command
gave them, deletions as whiteouts, recreated directories as opaque. Mount points that were created for the
RUN (and parents created only for them) are left out, as are directories copied up but left as
they were.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import IO, Final, Literal

import attrs

from imagedsl.backends.oci.filesystem import (
    Filesystem,
    LayerTar,
    UnsafeLayerError,
    _clean_member_name,
    check_extractable,
    drain,
    whiteout_target,
)
from imagedsl.backends.oci.layer import (
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    LayerEntry,
    Xattrs,
    pax_xattrs,
    read_xattrs,
    sort_key,
)
from imagedsl.backends.oci.run.snapshot_check import check_snapshot, write_record
from imagedsl.errors import EnvironmentFailure
from imagedsl.oci.blobs import BlobStore, VerifyingReader, damaged_as_digest_error
from imagedsl.oci.image import LayerBlob
from imagedsl.oci.layerstream import decompressed
from imagedsl.store import StoreArea, StoreWarning

#: v2: snapshots hold the extended attributes their layers carry. v3: each is ``fs/`` beside
#: its integrity record ``check.json``.
SNAPSHOT_FORMAT: Final = "v3"
SNAPSHOTTER_ENV: Final = "IMAGEDSL_OCI_SNAPSHOTTER"
OPAQUE_XATTR: Final = "trusted.overlay.opaque"
_OVERLAY_XATTR_PREFIX: Final = "trusted.overlay."
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MNT_DETACH: Final = 2
_COPY_CHUNK: Final = 1 << 20
_MAX_CACHED_FDS: Final = 256

Snapshotter = Literal["overlay", "copy"]


@attrs.define
class RootfsError(EnvironmentFailure):
    """A root filesystem for a RUN cannot be made or read (a mount failed, an unsupported
    file type in the RUN's output)."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


# -- mounts ----------------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def mount(source: str, target: Path, fstype: str, data: str, flags: int = 0) -> None:
    """mount(2); an OSError names what failed."""
    result = _c().mount(
        source.encode(), os.fsencode(target), fstype.encode(), ctypes.c_ulong(flags), data.encode()
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount -t {fstype} at {target}: {os.strerror(code)}")


def unmount(target: Path) -> None:
    """Detach a mount (lazily: it goes away once nothing uses it)."""
    result = _c().umount2(os.fsencode(target), ctypes.c_int(_MNT_DETACH))
    if result != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            raise OSError(code, f"umount {target}: {os.strerror(code)}")


def mount_overlay(target: Path, lowers: Sequence[Path], upper: Path, work: Path) -> None:
    """Mount an overlay at ``target``: ``lowers`` from the top layer down, ``upper`` on top.

    Directories are named by ``/proc/self/fd/N`` (short, and no ``:`` or ``,`` of a path can
    break the option string); redirects, metacopy and the index are off, so the upper directory
    holds whole files and plain directories only.
    """
    fds: list[int] = []
    try:
        for path in (*lowers, upper, work):
            fds.append(os.open(path, _DIR_FLAGS))
        names = [f"/proc/self/fd/{fd}" for fd in fds]
        options = (
            f"lowerdir={':'.join(names[:-2])},upperdir={names[-2]},workdir={names[-1]},"
            "redirect_dir=off,metacopy=off,index=off,xino=off"
        )
        mount("overlay", target, "overlay", options)
    finally:
        for fd in fds:
            os.close(fd)


def mounts_below(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    prefix = os.fsencode(path)
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as handle:
        for line in handle:
            fields = line.split(b" ")
            if len(fields) < 5:
                continue
            point = _unescape_mountinfo(fields[4])
            if point == prefix or point.startswith(prefix + b"/"):
                found.append(Path(os.fsdecode(point)))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unescape_mountinfo(text: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i : i + 1] == b"\\" and text[i + 1 : i + 4].isdigit():
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


def remove_tree(path: Path) -> None:
    """Unmount whatever is mounted below ``path``, then delete it; never deletes through a
    mount that would not come off."""
    for point in mounts_below(path):
        unmount(point)
    if mounts_below(path):
        raise RootfsError(str(path), "is still mounted; left in place")
    shutil.rmtree(path, ignore_errors=True)


# -- safe file operations relative to a root -------------------------------------------------


def open_dir(root_fd: int, rel: str, *, create: bool) -> int:
    """An fd for directory ``rel`` under ``root_fd``, never following a symlink on the way
    (a symlink or a file where a directory is expected raises :class:`RootfsError`); missing
    directories are made (0755) when ``create``."""
    fd = os.dup(root_fd)
    try:
        for part in rel.split("/") if rel else ():
            following = _open_child(fd, part, create=create, rel=rel)
            os.close(fd)
            fd = following
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child(parent: int, name: str, *, create: bool, rel: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
        os.mkdir(name, 0o755, dir_fd=parent)
        os.chmod(name, 0o755, dir_fd=parent)  # whatever the umask
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RootfsError(rel, f"{name!r} is not a directory (a symlink?)") from None
        raise


class _DirFds:
    """Directory fds under a root, each opened from its parent's (so one ``openat`` per new
    directory), the most recently used few hundred kept open."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._fds: OrderedDict[str, int] = OrderedDict()

    def get(self, rel: str, *, create: bool = True) -> int:
        if not rel:
            return self.root_fd
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        head, base = posixpath.split(rel)
        parent = self.get(head, create=create)
        fd = _open_child(parent, base, create=create, rel=rel)
        self._fds[rel] = fd
        while len(self._fds) > _MAX_CACHED_FDS:  # the oldest: never an ancestor just used
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def forget(self, rel: str) -> None:
        """Drop ``rel`` and everything below it (it was removed or replaced)."""
        prefix = rel + "/"
        for name in [n for n in self._fds if n == rel or n.startswith(prefix)]:
            os.close(self._fds.pop(name))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(name: str, dir_fd: int) -> None:
    """Remove whatever ``name`` is in ``dir_fd`` (a directory with its contents)."""
    found = _lstat(name, dir_fd)
    if found is None:
        return
    if stat.S_ISDIR(found.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _set_owner_mode(fd: int, uid: int, gid: int, mode: int) -> None:
    os.chown(fd, uid, gid)
    os.chmod(fd, mode & 0o7777)  # after chown, which clears setuid and setgid


#: What the kernel answers for an extended attribute it will not take as given (a malformed
#: ``security.capability``, a value or name past its bounds): the layer's fault, not the host's.
_XATTR_REFUSED: Final = frozenset({errno.EINVAL, errno.E2BIG, errno.ERANGE})


def _set_xattrs(fd: int, xattrs: Xattrs, *, layer: str, entry: str) -> None:
    """Set extended attributes on an open file or directory (after its owner: ``chown``
    clears file capabilities); a filesystem that cannot hold one (``ENOTSUP``) goes without,
    and one the kernel refuses is an :class:`UnsafeLayerError` naming the entry."""
    for name, value in xattrs:
        try:
            os.setxattr(fd, name, value)
        except OSError as error:
            if error.errno in _XATTR_REFUSED:
                raise UnsafeLayerError(
                    layer,
                    entry,
                    f"has extended attribute {name!r} ({len(value)} bytes), which the kernel"
                    f" refuses: {error.strerror}",
                ) from None
            if error.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise


def _whiteout(name: str, dir_fd: int) -> None:
    _remove(name, dir_fd)
    os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=dir_fd)


def _create(name: str, dir_fd: int) -> int:
    """A new file ``name`` in ``dir_fd``, replacing whatever was there (tried first, since
    replacing is rare and every system call counts when a layer has 30,000 files)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        _remove(name, dir_fd)
        return os.open(name, flags, 0o600, dir_fd=dir_fd)


def _copy_fd(source: int, dest: int) -> None:
    while True:
        data = os.read(source, _COPY_CHUNK)
        if not data:
            return
        view = memoryview(data)
        while view:
            written = os.write(dest, view)
            view = view[written:]


# -- extracting layers -----------------------------------------------------------------------


def extract_layer(
    stream: IO[bytes], dest: Path, *, layer: str, lowers: Sequence[Path] = ()
) -> None:
    """Write the tar ``stream`` under the empty directory ``dest`` in overlay format.

    ``lowers`` are the snapshots below (top first), read only for a hard link to a file of a
    lower layer, which becomes a copy.
    """
    root_fd = os.open(dest, _DIR_FLAGS)
    dirs = _DirFds(root_fd)
    dir_times: list[tuple[str, int]] = []
    try:
        with LayerTar(stream, layer) as archive:
            for member in archive:
                name = _clean_member_name(layer, member.name)
                if not name:
                    continue
                check_extractable(layer, member, name)
                head, base = posixpath.split(name)
                parent = dirs.get(head)
                if base == OPAQUE_MARKER:
                    os.setxattr(parent, OPAQUE_XATTR, b"y")
                    continue
                if base.startswith(WHITEOUT_PREFIX):
                    target = whiteout_target(layer, member.name, base)
                    dirs.forget(posixpath.join(head, target))
                    _whiteout(target, parent)
                    continue
                _extract_member(archive, member, name, parent, dirs, lowers, layer)
                if member.isdir():
                    dir_times.append((name, int(member.mtime)))
        for name, mtime in reversed(dir_times):  # children first: they touch their parents
            os.utime(dirs.get(name, create=False), (mtime, mtime))
    finally:
        dirs.close()
        os.close(root_fd)


def _extract_member(
    archive: LayerTar,
    member: tarfile.TarInfo,
    name: str,
    parent: int,
    dirs: _DirFds,
    lowers: Sequence[Path],
    layer: str,
) -> None:
    base = posixpath.basename(name)
    mtime = int(member.mtime)
    if member.isdir():
        found = _lstat(base, parent)
        if found is not None and not stat.S_ISDIR(found.st_mode):
            _remove(base, parent)
            found = None
        if found is None:
            os.mkdir(base, 0o700, dir_fd=parent)
        fd = dirs.get(name, create=False)
        _set_owner_mode(fd, member.uid, member.gid, member.mode)
        _set_xattrs(fd, pax_xattrs(member.pax_headers), layer=layer, entry=member.name)
        return
    dirs.forget(name)
    if member.isreg():
        handle = archive.extractfile(member)
        fd = _create(base, parent)
        try:
            while data := handle.read(_COPY_CHUNK):
                os.write(fd, data)
            _set_owner_mode(fd, member.uid, member.gid, member.mode)
            _set_xattrs(fd, pax_xattrs(member.pax_headers), layer=layer, entry=member.name)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
    elif member.issym():
        _remove(base, parent)
        os.symlink(member.linkname, base, dir_fd=parent)
        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(base, (mtime, mtime), dir_fd=parent, follow_symlinks=False)
    elif member.islnk():
        target = _clean_member_name(layer, member.linkname.lstrip("/"))
        t_head, t_base = posixpath.split(target)
        _remove(base, parent)
        try:
            t_parent = dirs.get(t_head, create=False)
            os.link(t_base, base, src_dir_fd=t_parent, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            _copy_from_lowers(target, lowers, base, parent, member, layer)
    else:
        raise UnsafeLayerError(layer, member.name, "is a device node or special file")


def _copy_from_lowers(
    target: str,
    lowers: Sequence[Path],
    base: str,
    parent: int,
    member: tarfile.TarInfo,
    layer: str,
) -> None:
    """A hard link to a file of a lower layer: a copy of it (snapshots stay independent)."""
    head, name = posixpath.split(target)
    for lower in lowers:
        try:
            root = os.open(lower, _DIR_FLAGS)
            try:
                folder = open_dir(root, head, create=False)
            finally:
                os.close(root)
            try:
                source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
            finally:
                os.close(folder)
        except (FileNotFoundError, RootfsError):
            continue
        try:
            if not stat.S_ISREG(os.fstat(source).st_mode):
                continue
            fd = os.open(
                base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent
            )
            try:
                _copy_fd(source, fd)
                _set_owner_mode(fd, member.uid, member.gid, member.mode)
                _set_xattrs(fd, read_xattrs(source), layer=layer, entry=member.name)
                os.utime(fd, (int(member.mtime), int(member.mtime)))
            finally:
                os.close(fd)
            return
        finally:
            os.close(source)
    raise UnsafeLayerError(layer, member.name, f"is a hard link to {target!r}, which is no file")


class Snapshots:
    """Extracted layers in the store, one directory per diff_id, each made atomically, each
    with an integrity record checked before a RUN stands on it.

    A snapshot is ``<root>/<diff_id hex>/`` holding the tree (``fs/``) and its record
    (``check.json``, :mod:`~imagedsl.backends.oci.run.snapshot_check`), made in a staging
    directory and renamed into place whole. One found changed since it was made is a
    :class:`~imagedsl.store.StoreWarning`; it is removed and extracted again from its layer.
    """

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.root = blobs.store.area(StoreArea.OCI_SNAPSHOTS) / SNAPSHOT_FORMAT
        #: Snapshots checked by this process (a build checks each once).
        self._checked: set[Path] = set()

    def path(self, diff_id: str) -> Path:
        """Where the tree of the snapshot of ``diff_id`` lives (it may not exist yet)."""
        return self.root / diff_id.partition(":")[2] / "fs"

    def _staging(self) -> Path:
        # The tree below holds setuid files and root's secrets: only root may walk into it.
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root.parent, 0o700)
        return Path(tempfile.mkdtemp(prefix=".extract-", dir=self.root))

    def ensure(self, layers: Sequence[LayerBlob]) -> list[Path]:
        """The snapshots of ``layers`` (bottom first), extracting those not made yet or found
        damaged."""
        paths: list[Path] = []
        for layer in layers:
            final = self.path(layer.diff_id)
            if not (final.is_dir() and self.intact(final)):
                self._extract(layer, final, lowers=list(reversed(paths)))
                self._checked.add(final)
            paths.append(final)
        return paths

    def intact(self, final: Path) -> bool:
        """Whether the snapshot whose tree is ``final`` still matches its record (checked
        once per process); a damaged one is reported and removed."""
        if final in self._checked:
            return True
        record = final.parent / "check.json"
        damage = check_snapshot(final, record)
        if damage is None:
            with contextlib.suppress(OSError):
                os.utime(record)  # its last use
            self._checked.add(final)
            return True
        warnings.warn(
            f"snapshot {final.parent} is damaged ({damage}); it is extracted again",
            StoreWarning,
            stacklevel=3,
        )
        self.discard(final)
        return False

    def discard(self, final: Path) -> None:
        """Remove a snapshot (renamed aside first, so it is never seen half removed)."""
        self._checked.discard(final)
        unit = final.parent
        self.root.mkdir(parents=True, exist_ok=True)
        doomed = Path(tempfile.mkdtemp(prefix=".discard-", dir=self.root))
        with contextlib.suppress(FileNotFoundError):  # another build removed it first
            os.rename(unit, doomed / "unit")
        shutil.rmtree(doomed, ignore_errors=True)

    def _extract(self, layer: LayerBlob, final: Path, lowers: Sequence[Path]) -> None:
        staging = self._staging()
        try:
            tree = staging / "fs"
            tree.mkdir(mode=0o755)
            with (
                self.blobs.open(layer.digest) as raw,
                damaged_as_digest_error(raw, f"layer {layer.digest}"),
            ):
                inner = VerifyingReader(
                    decompressed(raw), layer.diff_id, f"the tar inside {layer.digest}"
                )
                extract_layer(inner, tree, layer=layer.digest, lowers=lowers)  # type: ignore[arg-type]
                inner.drain()
                drain(raw)
            self._seal(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def adopt(self, tree: Path, final: Path) -> None:
        """Make the finished ``tree`` the snapshot whose tree is ``final`` (another build may
        have won the race; then ``tree`` is left where it is)."""
        staging = self._staging()
        try:
            os.rename(tree, staging / "fs")
            self._seal(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _seal(self, staging: Path, final: Path) -> None:
        """Record ``staging/fs`` and rename ``staging`` into place as ``final``'s snapshot."""
        write_record(staging / "fs", staging / "check.json")
        try:
            os.rename(staging, final.parent)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise


# -- the change a RUN makes ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Change:
    """The entries of a RUN's layer, and how to make parents the layer needs."""

    entries: tuple[LayerEntry, ...]
    parent: Callable[[str], LayerEntry] = attrs.field(eq=False, repr=False)


def parent_from(lower: Filesystem) -> Callable[[str], LayerEntry]:
    """A directory the layer needs but the change lacks keeps its metadata from below."""

    def parent(path: str) -> LayerEntry:
        found = lower.get(path)
        if found is not None and found.kind == "dir":
            return LayerEntry(
                path=path,
                kind="dir",
                mode=found.mode,
                uid=found.uid,
                gid=found.gid,
                xattrs=found.xattrs,
            )
        return LayerEntry(path=path, kind="dir", mode=0o755)

    return parent


@attrs.frozen
class _Seen:
    """One path of a changed tree, as found after the RUN."""

    path: str
    st: os.stat_result
    opaque: bool = False


def _walk(root: Path) -> Iterator[_Seen]:
    """Every path under ``root`` (not following symlinks), parents before children."""
    pending = [""]
    while pending:
        rel = pending.pop()
        folder = root / rel if rel else root
        with os.scandir(folder) as listing:
            items = sorted(listing, key=lambda e: e.name, reverse=True)
        for item in items:
            path = f"{rel}/{item.name}" if rel else item.name
            st = item.stat(follow_symlinks=False)
            opaque = False
            if stat.S_ISDIR(st.st_mode):
                opaque = _is_opaque(root / path)
                pending.append(path)
            yield _Seen(path, st, opaque)


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class _Tree:
    """The changed paths, with children counts so empty leftovers can be pruned."""

    def __init__(self, seen: Sequence[_Seen]) -> None:
        self.items = {s.path: s for s in seen}
        self.children: dict[str, int] = {}
        for path in self.items:
            parent = posixpath.dirname(path)
            self.children[parent] = self.children.get(parent, 0) + 1

    def drop(self, path: str) -> None:
        del self.items[path]
        parent = posixpath.dirname(path)
        self.children[parent] -= 1

    def empty(self, path: str) -> bool:
        return self.children.get(path, 0) == 0


def prune(
    tree: _Tree, lower: Filesystem, stubs: Collection[str], root: Path | None = None
) -> list[str]:
    """Remove from ``tree`` the mount points made for the RUN and directories that are as
    they were below; return the removed paths, deepest first."""
    removed: list[str] = []
    for path in sorted(tree.items, key=lambda p: p.count("/"), reverse=True):
        seen = tree.items[path]
        mode = seen.st.st_mode
        if stat.S_ISSOCK(mode):
            tree.drop(path)  # sockets are never part of a layer (as in Docker)
            removed.append(path)
            continue
        if path in stubs and lower.get(path) is None:
            is_empty_dir = stat.S_ISDIR(mode) and tree.empty(path) and not seen.opaque
            is_empty_file = stat.S_ISREG(mode) and seen.st.st_size == 0
            if is_empty_dir or is_empty_file:
                tree.drop(path)
                removed.append(path)
                continue
        if stat.S_ISDIR(mode) and tree.empty(path) and not seen.opaque:
            below = lower.get(path)
            same = (
                below is not None
                and below.kind == "dir"
                and below.mode == stat.S_IMODE(mode)
                and below.uid == seen.st.st_uid
                and below.gid == seen.st.st_gid
                and (root is None or below.xattrs == read_xattrs(root / path))
            )
            if same:
                tree.drop(path)
                removed.append(path)
    return removed


def _entries(root: Path, tree: _Tree, whiteouts: Sequence[str]) -> list[LayerEntry]:
    """Layer entries for what is left in ``tree`` (files read from under ``root``)."""
    entries = [LayerEntry(path=p, kind="whiteout") for p in whiteouts]
    linked: dict[tuple[int, int], str] = {}
    for path in sorted(tree.items, key=sort_key):
        seen = tree.items[path]
        st = seen.st
        mode = stat.S_IMODE(st.st_mode)
        uid, gid = st.st_uid, st.st_gid
        if _is_whiteout(st):
            entries.append(LayerEntry(path=path, kind="whiteout"))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(
                LayerEntry(
                    path=path,
                    kind="dir",
                    mode=mode,
                    uid=uid,
                    gid=gid,
                    xattrs=read_xattrs(root / path),
                )
            )
            if seen.opaque:
                entries.append(LayerEntry(path=path, kind="opaque"))
        elif stat.S_ISREG(st.st_mode):
            inode = (st.st_dev, st.st_ino)
            first = linked.get(inode) if st.st_nlink > 1 else None
            if first is not None:
                entries.append(
                    LayerEntry(
                        path=path, kind="hardlink", mode=mode, linkname=first, uid=uid, gid=gid
                    )
                )
                continue
            if st.st_nlink > 1:
                linked[inode] = path
            entries.append(
                LayerEntry(
                    path=path,
                    kind="file",
                    mode=mode,
                    size=st.st_size,
                    source=str(root / path),
                    uid=uid,
                    gid=gid,
                    xattrs=read_xattrs(root / path),
                )
            )
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(root / path)
            entries.append(
                LayerEntry(path=path, kind="symlink", mode=0o777, linkname=target, uid=uid, gid=gid)
            )
        else:
            what = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device node"
            raise RootfsError("/" + path, f"is {what} made by the RUN; layers here cannot hold one")
    return entries


def upper_change(
    upper: Path, lower: Filesystem, stubs: Collection[str]
) -> tuple[Change, list[str]]:
    """The change in an overlay's upper directory; also the paths pruned from it."""
    tree = _Tree(list(_walk(upper)))
    removed = prune(tree, lower, stubs, upper)
    return Change(entries=tuple(_entries(upper, tree, ())), parent=parent_from(lower)), removed


def seal_upper(upper: Path, removed: Sequence[str], epoch: int) -> None:
    """Make an upper directory the snapshot of the layer written from it: pruned paths
    gone, every mtime the epoch, overlay's private attributes dropped (opaque stays)."""
    root_fd = os.open(upper, _DIR_FLAGS)
    try:
        for path in removed:  # deepest first
            head, base = posixpath.split(path)
            try:
                parent = open_dir(root_fd, head, create=False)
            except FileNotFoundError:
                continue
            try:
                found = _lstat(base, parent)
                if found is not None and stat.S_ISDIR(found.st_mode):
                    os.rmdir(base, dir_fd=parent)
                elif found is not None:
                    os.unlink(base, dir_fd=parent)
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)
    for where in [upper, *(upper / seen.path for seen in _walk(upper))]:
        for name in os.listxattr(where, follow_symlinks=False):
            if name.startswith(_OVERLAY_XATTR_PREFIX) and name != OPAQUE_XATTR:
                os.removexattr(where, name, follow_symlinks=False)
    for seen in sorted(_walk(upper), key=lambda s: s.path.count("/"), reverse=True):
        os.utime(upper / seen.path, (epoch, epoch), follow_symlinks=False)
    os.utime(upper, (epoch, epoch))


# -- copies instead of overlays ------------------------------------------------------------


def apply_snapshot(source: Path, dest: Path) -> None:
    """Apply one overlay-format snapshot onto the tree ``dest`` (deletions, opaque
    directories, files copied with owners, modes and mtimes)."""
    dest_fd = os.open(dest, _DIR_FLAGS)
    dirs = _DirFds(dest_fd)
    try:
        for seen in _walk(source):
            head, base = posixpath.split(seen.path)
            parent = dirs.get(head, create=False)
            st = seen.st
            if _is_whiteout(st):
                dirs.forget(seen.path)
                _remove(base, parent)
                continue
            if stat.S_ISDIR(st.st_mode):
                found = _lstat(base, parent)
                if found is not None and (seen.opaque or not stat.S_ISDIR(found.st_mode)):
                    dirs.forget(seen.path)
                    _remove(base, parent)
                    found = None
                if found is None:
                    os.mkdir(base, 0o700, dir_fd=parent)
                fd = dirs.get(seen.path, create=False)
                _set_owner_mode(fd, st.st_uid, st.st_gid, st.st_mode)
                _set_xattrs(fd, read_xattrs(source / seen.path), layer=str(source), entry=seen.path)
                continue
            dirs.forget(seen.path)
            _remove(base, parent)
            host = source / seen.path
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(host), base, dir_fd=parent)
                os.chown(base, st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)
                os.utime(
                    base, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False
                )
                continue
            source_fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                fd = os.open(
                    base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent
                )
                try:
                    _copy_fd(source_fd, fd)
                    _set_owner_mode(fd, st.st_uid, st.st_gid, st.st_mode)
                    _set_xattrs(fd, read_xattrs(host), layer=str(source), entry=seen.path)
                    os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))
                finally:
                    os.close(fd)
            finally:
                os.close(source_fd)
        for seen in sorted(_walk(source), key=lambda s: s.path.count("/"), reverse=True):
            if stat.S_ISDIR(seen.st.st_mode):
                with contextlib.suppress(FileNotFoundError, RootfsError):
                    os.utime(dirs.get(seen.path, create=False), ns=(seen.st.st_mtime_ns,) * 2)
    finally:
        dirs.close()
        os.close(dest_fd)


def copy_change(
    root: Path,
    lower: Filesystem,
    snapshots: Sequence[Path],
    stubs: Collection[str],
) -> Change:
    """The change a RUN made to a copied root, found by comparing it with the layers below
    (``snapshots``, bottom first, hold their files)."""
    seen = list(_walk(root))
    present = {s.path for s in seen}

    def unchanged(item: _Seen) -> bool:
        below = lower.get(item.path)
        st = item.st
        if below is None:
            return False
        if stat.S_ISDIR(st.st_mode):
            return below.kind == "dir" and _same_owner_mode(below, st)
        if stat.S_ISLNK(st.st_mode):
            return below.kind == "symlink" and below.linkname == os.readlink(root / item.path)
        if not stat.S_ISREG(st.st_mode) or below.kind not in ("file", "hardlink"):
            return False
        if not _same_owner_mode(below, st):
            return False
        if _xattrs_below(lower, item.path) != read_xattrs(root / item.path):
            return False
        origin = lower.origin.get(item.path)
        if origin is None:
            return False
        return _same_content(root / item.path, st, snapshots[origin] / item.path)

    changed = [s for s in seen if stat.S_ISDIR(s.st.st_mode) or not unchanged(s)]
    tree = _Tree(changed)
    prune(tree, lower, stubs, root)
    whiteouts = []
    for path in lower.entries:
        if path in present:
            continue
        if posixpath.dirname(path) and posixpath.dirname(path) not in present:
            continue  # a deleted directory's whiteout covers it
        whiteouts.append(path)
    entries = _entries(root, tree, sorted(whiteouts))
    return Change(entries=tuple(entries), parent=parent_from(lower))


def _xattrs_below(lower: Filesystem, path: str) -> Xattrs:
    """The extended attributes of a file below (a hard link's are its target's)."""
    found = lower.get(path)
    if found is not None and found.kind == "hardlink":
        found = lower.get(found.linkname)
    return () if found is None else found.xattrs


def _same_owner_mode(below: object, st: os.stat_result) -> bool:
    return (
        getattr(below, "mode", None) == stat.S_IMODE(st.st_mode)
        and getattr(below, "uid", None) == st.st_uid
        and getattr(below, "gid", None) == st.st_gid
    )


def _same_content(path: Path, st: os.stat_result, original: Path) -> bool:
    try:
        before = os.lstat(original)
    except OSError:
        return False
    if before.st_size != st.st_size:
        return False
    if before.st_mtime_ns == st.st_mtime_ns:
        return True  # copied with its mtime and not touched since
    with path.open("rb") as a, original.open("rb") as b:
        while True:
            chunk = a.read(_COPY_CHUNK)
            if chunk != b.read(_COPY_CHUNK):
                return False
            if not chunk:
                return True


# -- choosing a snapshotter ------------------------------------------------------------------

_overlay_ok: dict[str, bool] = {}


def snapshotter(work_root: Path) -> Snapshotter:
    """``overlay`` if an overlay mount works on the store's filesystem (tried once per
    process), else ``copy``; ``$IMAGEDSL_OCI_SNAPSHOTTER`` decides when set."""
    wanted = os.environ.get(SNAPSHOTTER_ENV)
    if wanted in ("overlay", "copy"):
        return wanted  # type: ignore[return-value]
    key = str(work_root)
    if key not in _overlay_ok:
        _overlay_ok[key] = _try_overlay(work_root)
    return "overlay" if _overlay_ok[key] else "copy"


def _try_overlay(work_root: Path) -> bool:
    work_root.mkdir(parents=True, exist_ok=True)
    probe = work_root / f".probe-{uuid.uuid4().hex[:12]}"
    try:
        for name in ("lower", "upper", "work", "merged"):
            (probe / name).mkdir(parents=True)
        mount_overlay(probe / "merged", [probe / "lower"], probe / "upper", probe / "work")
    except OSError:
        return False
    else:
        unmount(probe / "merged")
        return True
    finally:
        with contextlib.suppress(OSError, RootfsError):
            remove_tree(probe)


__all__ = [
    "Change",
    "RootfsError",
    "Snapshots",
    "apply_snapshot",
    "copy_change",
    "extract_layer",
    "mount_overlay",
    "remove_tree",
    "seal_upper",
    "snapshotter",
    "unmount",
    "upper_change",
]

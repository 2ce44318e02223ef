"""Writing the context files a Dockerfile needs: one directory per tree, named by its digest.

Every COPY, ADD or bind mount from the build context reads exactly one *tree* (the files the
step selected, placed as the step places them, see :class:`imagedsl.treehash.Tree`). Each tree
is written once under its short digest, so a COPY's source path in the Dockerfile depends on
nothing but the content it copies: BuildKit's cache key for the COPY then depends on the same
inputs as ours (renaming a source directory without changing its files misses in neither).

Files are written with their normalised modes and with an mtime derived from their content
digest. BuildKit decides which context files to send again by size and mtime only; with
mtimes that follow the content, a rewrite that keeps size and mtime (the known stale-COPY
case) still reaches BuildKit, and built images do not depend on checkout times.

Trees are immutable once written: a tree is written into a temporary directory and renamed
into place, so concurrent builds and killed builds never leave a half-written tree under its
final name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs
import blake3

from imagedsl.backends.dockerfile._words import Unspellable
from imagedsl.contexts import ContextSource
from imagedsl.errors import ContextError, EnvironmentFailure
from imagedsl.store import atomic_write
from imagedsl.treehash import ContextChangedError, TreeEntry

#: Length of the digest prefix that names a tree in the build context.
NAME_LENGTH: Final = 16
#: 2000-01-01T00:00:00Z: directories and symlinks get this mtime, files a digest-derived one.
EPOCH: Final = 946_684_800
_CHUNK: Final = 1 << 20
#: Trees not used by any build for this long are removed from the store's pool.
POOL_MAX_AGE: Final = 14 * 24 * 3600


@attrs.frozen(kw_only=True)
class StagedTree:
    """One tree as the build context holds it: a directory holding the entries at their
    placed paths, or, for a single file copied to a file name (its only entry is placed at
    ``.``), a directory holding that file under ``file_name``.
    """

    name: str
    #: The tree digest of the entries (as the planner computed it).
    digest: str
    #: The context root the entries' ``source`` paths are relative to.
    root: str
    entries: tuple[TreeEntry, ...] = attrs.field(eq=False, repr=False)
    file_name: str | None = None
    #: The bytes of a file written in the build file (``COPY <<EOF``), its only entry.
    data: bytes | None = attrs.field(default=None, eq=False, repr=False)
    #: A file to fetch (``ADD --checksum``): ``digest`` is its ``sha256:`` checksum.
    url: str | None = None

    @property
    def is_file(self) -> bool:
        """Whether the tree is one file placed at the destination itself."""
        return self.file_name is not None

    @property
    def identity(self) -> str:
        """What the name is derived from: the digest, and the file name of a file tree."""
        if self.file_name is None:
            return self.digest
        return f"{self.digest}/{self.file_name}"


def tree_name(digest: str, file_name: str | None = None) -> str:
    """The name a tree has in the build context (a file tree's also follows its file name)."""
    if file_name is not None:
        text = f"{digest}\0{file_name}".encode("utf-8", "surrogateescape")
        digest = blake3.blake3(text).hexdigest()
    return digest[:NAME_LENGTH]


def content_mtime_ns(digest: str) -> int:
    """An mtime that changes whenever the content does (about 2**58 distinct values)."""
    seconds = EPOCH + int(digest[:7], 16)
    return seconds * 1_000_000_000 + int(digest[7:15], 16) % 1_000_000_000


def write_tree(tree: StagedTree, parent: Path) -> None:
    """Write ``tree`` as ``parent/tree.name``, atomically; an existing one is kept as is."""
    final = parent / tree.name
    if final.exists() or final.is_symlink():
        return
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".staging-{tree.name}-", dir=parent))
    try:
        built = scratch / "tree"
        built.mkdir()
        directories = [built]
        if tree.url is not None:
            assert tree.file_name is not None
            _download(tree.url, tree.digest, built / tree.file_name)
        elif tree.data is not None:
            assert tree.file_name is not None
            _write_data(tree.data, tree.entries[0], built / tree.file_name)
        elif tree.file_name is not None:
            _write_entry(tree.root, tree.entries[0], built / tree.file_name)
        else:
            for entry in sorted(tree.entries, key=lambda e: e.placed):
                target = built / entry.placed
                if not target.parent.is_dir():
                    target.parent.mkdir(parents=True)
                    directories.append(target.parent)
                if entry.type == "dir":
                    target.mkdir(exist_ok=True)
                    directories.append(target)
                else:
                    _write_entry(tree.root, entry, target)
        for directory in sorted(set(directories), key=lambda p: len(p.parts), reverse=True):
            os.chmod(directory, 0o755)
            os.utime(directory, ns=(EPOCH * 10**9, EPOCH * 10**9))
        try:
            os.rename(built, final)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                raise
            # Another build wrote the same tree first; content-addressed, so theirs is ours.
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_data(data: bytes, entry: TreeEntry, target: Path) -> None:
    with open(target, "xb") as writer:
        writer.write(data)
    os.chmod(target, entry.mode)
    mtime = content_mtime_ns(entry.digest)
    os.utime(target, ns=(mtime, mtime))


#: Seconds a download may wait for the server (each read, not the whole transfer).
DOWNLOAD_TIMEOUT: Final = 60.0
#: The mode ``ADD`` gives a file it downloads.
DOWNLOADED_MODE: Final = 0o600


@attrs.define
class DownloadError(EnvironmentFailure):
    """A file for ``ADD --checksum`` could not be fetched, or its bytes are not the pinned ones."""

    url: str
    problem: str

    def __str__(self) -> str:
        return f"ADD {self.url}: {self.problem}"


def _download(url: str, checksum: str, target: Path) -> None:
    """Fetch ``url`` into ``target`` (mode 0600, as ADD writes it), checking ``checksum``."""
    import hashlib
    import urllib.request  # here: only ADD of a URL needs it, and it is slow to import

    hasher = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,
            open(target, "xb") as writer,
        ):
            while chunk := response.read(_CHUNK):
                hasher.update(chunk)
                writer.write(chunk)
    except OSError as error:
        raise DownloadError(url, f"cannot fetch it: {error}") from None
    got = "sha256:" + hasher.hexdigest()
    if got != checksum:
        raise DownloadError(url, f"its checksum is {got}, not the pinned {checksum}")
    os.chmod(target, DOWNLOADED_MODE)
    mtime = content_mtime_ns(hasher.hexdigest())
    os.utime(target, ns=(mtime, mtime))


def _write_entry(root: str, entry: TreeEntry, target: Path) -> None:
    source = os.path.join(root, entry.source)
    if entry.type == "symlink":
        link = os.readlink(source)
        digest = blake3.blake3(link.encode("utf-8", "surrogateescape")).hexdigest()
        if digest != entry.digest:
            raise ContextChangedError(root, entry.source)
        os.symlink(link, target)
        os.utime(target, ns=(EPOCH * 10**9, EPOCH * 10**9), follow_symlinks=False)
        return
    hasher = blake3.blake3()
    try:
        with open(source, "rb") as reader, open(target, "xb") as writer:
            while chunk := reader.read(_CHUNK):
                hasher.update(chunk)
                writer.write(chunk)
    except FileNotFoundError:
        raise ContextChangedError(root, entry.source) from None
    if hasher.hexdigest() != entry.digest:
        raise ContextChangedError(root, entry.source)
    os.chmod(target, entry.mode)
    mtime = content_mtime_ns(entry.digest)
    os.utime(target, ns=(mtime, mtime))


class ContextPool:
    """The store's staged trees: ``<store>/contexts/<name>``, the build context of every build.

    BuildKit only transfers the paths a Dockerfile's COPY, ADD and bind mounts name, so one
    shared directory serves all builds, and a tree that did not change is neither written nor
    sent again. ``.meta/<name>.json`` keeps each tree's full digest (to refuse a prefix
    collision) and when a build last used it (trees unused for :data:`POOL_MAX_AGE` go).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def _meta(self) -> Path:
        return self.root / ".meta"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the pool's lock (staging and pruning; builds only read the pool)."""
        self._meta.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._meta / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def stage(self, trees: Iterable[StagedTree], *, now: float | None = None) -> None:
        """Make sure every tree is in the pool, and note that it was used."""
        now = time.time() if now is None else now
        with self.locked():
            for tree in trees:
                self._stage_one(tree, now)

    def _stage_one(self, tree: StagedTree, now: float) -> None:
        meta = self._meta / f"{tree.name}.json"
        known = _read_meta(meta)
        if known is not None and known.get("identity") != tree.identity:
            raise ContextError(
                str(self.root),
                problem=f"two trees share the name {tree.name} ({known.get('identity')} and "
                f"{tree.identity}); remove {self.root / tree.name} and build again",
            )
        if known is None:
            # A tree without metadata is a leftover of an interrupted build: write it afresh.
            _remove(self.root / tree.name)
        write_tree(tree, self.root)
        atomic_write(meta, json.dumps({"identity": tree.identity, "used": now}).encode())

    def prune(self, *, keep: Sequence[str] = (), now: float | None = None) -> list[str]:
        """Remove trees unused for :data:`POOL_MAX_AGE` and abandoned staging directories."""
        now = time.time() if now is None else now
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        with self.locked():
            for path in self.root.iterdir():
                name = path.name
                if name == ".meta" or name in keep:
                    continue
                if name.startswith(".staging-"):
                    # Left by a killed build (live ones hold the lock while they stage).
                    _remove(path)
                    continue
                meta = self._meta / f"{name}.json"
                known = _read_meta(meta)
                used = known.get("used") if known is not None else None
                if not isinstance(used, int | float) or now - used > POOL_MAX_AGE:
                    _remove(path)
                    with contextlib.suppress(FileNotFoundError):
                        meta.unlink()
                    removed.append(name)
        return removed


def _read_meta(path: Path) -> dict[str, object] | None:
    try:
        payload = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _remove(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def archive_sources(staged: StagedTree, source: ContextSource) -> list[str] | None:
    """The sources of an ADD of several context files among which is an archive ADD unpacks
    (None: there is none, one staged directory says it): each file by its staged path, so
    BuildKit unpacks the archives and copies the rest, as it does the sources as written.
    Refused when a directory's contents are among them (one path cannot place them)."""
    # Here, not at the top: only an ADD of several files needs the OCI backend's reader.
    from imagedsl.backends.oci.copy_entries import unpacked_by_add

    archives = [e for e in staged.entries if unpacked_by_add(staged.root, source, e)]
    if not archives:
        return None
    if any("/" in e.placed or e.type != "file" for e in staged.entries):
        raise Unspellable(
            f"ADD {archives[0].source}",
            "is an archive ADD unpacks, among other sources that are directories: the docker "
            "backend cannot write both in one ADD; add the archive on its own",
        )
    return [f"{staged.name}/{entry.placed}" for entry in staged.entries]

"""Blobs in the store: written atomically under their sha256, checked whenever they are read.

This is the one place that writes, verifies and renames a blob, for the builder, for base
images read from layouts and archives, and for the registry client. A blob is written to a
temporary file beside its final name, hashed as it is written, fsynced, and renamed once it is
what its digest says, so a build killed at any point leaves either no blob or the whole blob
(never a short one under a digest's name). A blob fetched from a registry goes to a partial
file that an interrupted fetch leaves behind and the next one resumes (:meth:`BlobStore.
resumable`). Anything read from a blob, from the store or from a base image, is hashed as it
is read and refused if it does not match its digest.

A blob that is used without being read (reused as a cached layer, copied into an output) is
checked by :meth:`BlobStore.intact` first: each verified blob has a *stamp* (its size, inode,
mtime and ctime when its bytes last hashed right, in the store's ``BLOB_STAMPS`` area). Any
write to the file, a ``chmod`` or a new hard link changes its ctime, so a blob whose stamp
still matches has not been touched since; one that does not is hashed again, and a damaged one
is reported (:class:`~imagedsl.store.StoreWarning`), removed, and made or fetched again by
whoever needed it. The stamp's mtime is the blob's last use (what ``cache prune`` reads).
Outputs get copies (a reflink where the filesystem has them), never hard links: editing an
output cannot reach the store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Final, Protocol

import attrs

from imagedsl.errors import EnvironmentFailure, ImageDSLError
from imagedsl.oci.digest import is_sha256
from imagedsl.store import StoreArea, StoreWarning, fsync_dir, naming

if TYPE_CHECKING:
    from imagedsl.store import Store

_COPY_CHUNK = 1 << 20
#: Temporary files older than this are left over from killed builds.
_STALE_SECONDS = 3600.0


@attrs.define
class BlobDigestError(EnvironmentFailure):
    """A blob's bytes do not match the digest that names it."""

    where: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return (
            f"blob {self.expected} in {self.where} is corrupt: its bytes hash to {self.actual}; "
            "it was refused"
        )


@attrs.define
class MissingBlobError(EnvironmentFailure):
    """A blob that an image refers to is not where it should be."""

    where: str
    digest: str

    def __str__(self) -> str:
        return f"blob {self.digest} is missing from {self.where}"


def check_digest(digest: object) -> str:
    """Refuse anything but ``sha256:<64 lowercase hex>`` (a digest names a file here)."""
    if not isinstance(digest, str):
        raise BlobDigestError("a descriptor", "sha256:...", repr(digest))
    if not is_sha256(digest):
        raise BlobDigestError("a descriptor", "sha256:<64 hex digits>", digest)
    return digest


class BlobSource(Protocol):
    """Where blobs are read from by digest: a :class:`~imagedsl.store.Store` is one, and so
    is an OCI layout (:class:`~imagedsl.oci.layout.LayoutBlobs`)."""

    def blob_path(self, digest: str) -> Path:
        """The file holding blob ``digest``."""
        ...


class VerifyingReader:
    """Reads a stream, hashing it; at its end the hash must be ``digest`` (and ``size``)."""

    def __init__(self, raw: BinaryIO | IO[bytes], digest: str, where: str, size: int | None = None):
        self._raw = raw
        self._digest = digest
        self._where = where
        self._size = size
        self._hash = hashlib.sha256()
        self._read = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._hash.update(data)
            self._read += len(data)
        if not data or n < 0:
            self._check()
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _check(self) -> None:
        if self._done:
            return
        self._done = True
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self._digest:
            raise BlobDigestError(self._where, self._digest, actual)
        if self._size is not None and self._read != self._size:
            raise BlobDigestError(self._where, self._digest, f"{self._read} bytes")

    def drain(self) -> None:
        """Read (and check) whatever is left."""
        while self.read(_COPY_CHUNK):
            pass
        self._check()


@contextlib.contextmanager
def damaged_as_digest_error(reader: VerifyingReader, what: str) -> Iterator[None]:
    """Turn a decompression or tar error into :class:`BlobDigestError` when the blob's bytes
    are wrong (the usual cause), else into a clear "damaged" error."""
    import tarfile

    import zstandard

    try:
        yield
    except (OSError, EOFError, ValueError, tarfile.TarError, zstandard.ZstdError) as error:
        if isinstance(error, ImageDSLError):
            raise
        if isinstance(error, OSError) and error.errno is not None:
            raise  # the system's (a full disk, a denied write), not the blob's bytes
        reader.drain()  # raises BlobDigestError if the bytes are not what the digest says
        raise DamagedBlobError(what, str(error)) from None


@attrs.define
class DamagedBlobError(EnvironmentFailure):
    """A blob has the right digest but cannot be read (a bad archive made upstream)."""

    what: str
    problem: str

    def __str__(self) -> str:
        return f"{self.what} cannot be read: {self.problem}"


class BlobStore:
    """The store's ``blobs/sha256`` directory."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.area(StoreArea.BLOBS)

    def sweep(self, older_than: float = _STALE_SECONDS) -> int:
        """Remove temporary files and directories that killed builds left, and interrupted
        downloads no fetch holds (only old ones: a concurrent build may be writing a new
        one). Returns how many were removed."""
        now = time.time()
        removed = 0
        candidates: list[Path] = []
        if self.root.is_dir():
            candidates += [
                p for p in self.root.iterdir() if p.name.startswith((".incoming.", ".partial."))
            ]
        scratch = self.store.area(StoreArea.TMP)
        if scratch.is_dir():
            candidates += list(scratch.iterdir())
        for path in candidates:
            try:
                if now - path.lstat().st_mtime < older_than:
                    continue
                if path.name.startswith(".partial."):
                    # An old interrupted download (its size is what a registry claimed): gone
                    # unless a fetch holds it now; a later fetch starts it again.
                    removed += _remove_unlocked(path)
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
            except OSError:
                continue  # another build got there first
        return removed

    def path(self, digest: str) -> Path:
        """Where ``digest`` lives (it may not exist)."""
        return self.store.blob_path(check_digest(digest))

    def has(self, digest: str, size: int | None = None) -> bool:
        """Whether the blob is present (and, if given, of ``size`` bytes); see :meth:`intact`
        before using a blob without reading it."""
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def intact(self, digest: str, size: int | None = None) -> bool:
        """Whether the blob is present and its bytes are what ``digest`` (and ``size``) say.

        Cheap when the blob's stamp still matches it (one ``stat``); otherwise the blob is
        hashed. A damaged blob is reported as a :class:`~imagedsl.store.StoreWarning`,
        removed, and reported absent, so the caller makes or fetches it again.
        """
        path = self.path(digest)
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        stamp = self.stamp_path(digest)
        if (size is None or st.st_size == size) and _read_stamp(stamp) == _stamp_of(st):
            with contextlib.suppress(OSError):
                os.utime(stamp)  # its last use
            return True
        problem = self.check(digest)
        if problem is None and (size is None or st.st_size == size):
            return True
        self._drop(digest, problem or f"it has {st.st_size} bytes, not {size}")
        return False

    def check(self, digest: str) -> str | None:
        """Hash the blob in full: None if it is ``digest`` (its stamp is then renewed), else
        what is wrong. A missing blob is not checked (None)."""
        path = self.path(digest)
        hasher = hashlib.sha256()
        try:
            with path.open("rb") as handle:
                before = os.fstat(handle.fileno())
                while chunk := handle.read(_COPY_CHUNK):
                    hasher.update(chunk)
        except FileNotFoundError:
            return None
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            return f"its bytes hash to {actual}"
        self._stamp(digest, before)
        return None

    def verified_path(self, digest: str, size: int | None = None) -> Path:
        """The blob's file, checked by :meth:`intact`; a missing or damaged blob raises."""
        if not self.intact(digest, size):
            raise MissingBlobError(str(self.store.root), digest)
        return self.path(digest)

    def copy_out(self, digest: str, dest: Path) -> None:
        """Put a verified copy of the blob at ``dest`` atomically (read-only), as a reflink
        where the filesystem makes them, else a copy: never a hard link into the store."""
        copy_file(self.verified_path(digest), dest)

    def place(self, digests: Iterable[str], blob_dir: Path) -> int:
        """Make sure ``blob_dir`` (an output layout's ``blobs/sha256``) holds each of
        ``digests`` under its hex name: a copy is made (:meth:`copy_out`) unless the file
        there already holds it. Returns how many were copied.

        A file already there is trusted without reading it when the stamp taken when it was
        last copied or hashed still matches its ``stat`` (size, inode, mtime and ctime: any
        write or replacement changes one of them), as for the store's own blobs; otherwise it
        is hashed. Re-writing a layout thus costs a ``stat`` per blob it already holds, not a
        read of every layer. The stamps of one layout live in one file of the store, which
        keeps only the blobs still in the layout."""
        record = self._placed_record(blob_dir)
        stamps = _read_placed(record)
        unsure: list[tuple[str, str]] = []
        for digest in dict.fromkeys(digests):  # once each: two layers may be the same blob
            name = check_digest(digest).partition(":")[2]
            try:
                current: str | None = _stamp_of((blob_dir / name).stat())
            except OSError:
                current = None
            if current is None or stamps.get(name) != current:
                unsure.append((digest, name))

        def settle(digest: str, name: str) -> tuple[str, str, bool]:
            dest = blob_dir / name
            copy = not file_holds(dest, digest)
            if copy:
                self.copy_out(digest, dest)
            return name, _stamp_of(dest.stat()), copy

        copied = 0
        for name, stamp, copy in _each(settle, unsure):
            stamps[name] = stamp
            copied += copy
        with contextlib.suppress(OSError):
            present = set(os.listdir(blob_dir))
            data = "".join(f"{n} {stamp}" for n, stamp in sorted(stamps.items()) if n in present)
            self._write_text(record, data)
        return copied

    def _placed_record(self, blob_dir: Path) -> Path:
        where = hashlib.sha256(os.path.abspath(blob_dir).encode()).hexdigest()
        return self.store.area(StoreArea.BLOB_STAMPS) / "placed" / where

    def stamp_path(self, digest: str) -> Path:
        """Where the blob's stamp lives (its mtime is the blob's last use)."""
        hexdigest = digest.partition(":")[2]
        return self.store.area(StoreArea.BLOB_STAMPS) / hexdigest[:2] / hexdigest

    def _stamp(self, digest: str, st: os.stat_result) -> None:
        """Note that the blob's bytes hashed right while the file was as ``st`` says."""
        self._write_text(self.stamp_path(digest), _stamp_of(st))

    @staticmethod
    def _write_text(stamp: Path, text: str) -> None:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            # No fsync: a stamp lost in a crash only costs hashing the blob once more.
            tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, stamp)
        except OSError:
            pass  # without a stamp the blob is hashed when next used: slower, as safe

    def _drop(self, digest: str, problem: str) -> None:
        warnings.warn(
            f"blob {digest} in the store {self.store.root} is damaged ({problem}); "
            "it was removed and will be made again",
            StoreWarning,
            stacklevel=3,
        )
        self.remove(digest)

    def remove(self, digest: str) -> None:
        """Remove the blob and its stamp (gone already is fine)."""
        for path in (self.path(digest), self.stamp_path(digest)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def open(self, digest: str, size: int | None = None) -> Iterator[VerifyingReader]:
        """Read a blob; its bytes are checked against ``digest`` as they are read."""
        path = self.path(digest)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise MissingBlobError(str(self.store.root), digest) from None
        with handle:
            yield VerifyingReader(handle, digest, f"the store {self.store.root}", size)

    def read(self, digest: str, size: int | None = None) -> bytes:
        """A small blob's bytes, checked."""
        with self.open(digest, size) as reader:
            data = reader.read()
            reader.drain()
        return data

    @contextlib.contextmanager
    def writer(self) -> Iterator[IO[bytes]]:
        """A temporary file in the blob directory; :meth:`commit` gives it its name."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".incoming.", suffix=".tmp", dir=self.root)
        os.close(fd)
        handle = open(tmp, "wb")  # noqa: SIM115 - closed in finally; .name is the path
        try:
            yield handle
        except OSError as error:
            raise naming(error, self.root) from None  # a full disk names no file
        finally:
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def commit(self, handle: IO[bytes], digest: str) -> Path:
        """fsync and rename a written temporary file to the blob's name."""
        handle.flush()
        os.fsync(handle.fileno())
        final = self.path(digest)
        os.chmod(handle.name, 0o444)
        os.replace(handle.name, final)
        fsync_dir(final.parent)
        self._stamp(digest, final.stat())  # its bytes were hashed as they were written
        return final

    def put(self, data: bytes) -> str:
        """Store small bytes (a config, a manifest); return their digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.intact(digest, len(data)):
            with self.writer() as handle:
                handle.write(data)
                self.commit(handle, digest)
        return digest

    @contextlib.contextmanager
    def resumable(self, digest: str, size: int) -> Iterator[PartialBlob | None]:
        """The partial file of a blob being fetched, or None when the blob is in place.

        The partial file is kept when a fetch is interrupted, and whoever fetches the blob
        next (this process or another) continues from it. An exclusive lock on it makes
        concurrent fetches of one blob take turns: whoever comes second finds the blob in
        place. :meth:`commit` gives the finished file its name.
        """
        final = self.path(digest)
        if self.intact(digest, size):
            yield None
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".partial.{final.name}")
        while True:  # until the file locked is the one at that name (a sweep may remove it)
            handle = open(partial, "a+b")  # noqa: SIM115 - closed below, or by the with
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            if _same_file(handle, partial):
                break
            handle.close()
        with handle:
            if self.intact(digest, size):
                _unlink_if_empty(partial)
                yield None
                return
            yield PartialBlob(handle, digest, size)

    def import_stream(self, source: BinaryIO | IO[bytes], digest: str, where: str) -> None:
        """Copy a blob into the store from ``source``, refusing it if it is not ``digest``."""
        if self.intact(digest):
            return
        reader = VerifyingReader(source, digest, where)
        with self.writer() as handle:
            while True:
                data = reader.read(_COPY_CHUNK)
                if not data:
                    break
                handle.write(data)
            reader.drain()
            self.commit(handle, digest)


class PartialBlob:
    """A blob being written to its partial file, hashed as it goes, resumable.

    What an earlier, interrupted fetch left in the file is read and hashed first, so the
    digest covers every byte however many attempts wrote them.
    """

    def __init__(self, handle: IO[bytes], digest: str, size: int) -> None:
        self.handle = handle
        self.digest = digest
        self.size = size
        self._hash = hashlib.sha256()
        handle.seek(0)
        self.have = 0
        while chunk := handle.read(_COPY_CHUNK):
            self._hash.update(chunk)
            self.have += len(chunk)
        if self.have > size:
            self.restart()

    @property
    def actual(self) -> str:
        """The digest of the bytes written so far."""
        return "sha256:" + self._hash.hexdigest()

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes (and hash them)."""
        self.handle.write(data)
        self._hash.update(data)
        self.have += len(data)

    def rewind(self) -> None:
        """Drop anything past what was hashed (a write torn by an interruption)."""
        self.handle.seek(self.have)
        self.handle.truncate()

    def restart(self) -> None:
        """Start the blob over, from nothing."""
        self.handle.seek(0)
        self.handle.truncate()
        self._hash = hashlib.sha256()
        self.have = 0

    def discard(self) -> None:
        """Empty the partial file: what it holds is not the blob."""
        self.handle.truncate(0)


def _same_file(handle: IO[bytes], path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _remove_unlocked(path: Path) -> int:
    """Remove a partial download no fetch holds (its lock is free); 1 if removed."""
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # being fetched right now
        path.unlink()
    return 1


def _each(
    work: Callable[[str, str], tuple[str, str, bool]], items: list[tuple[str, str]]
) -> Iterator[tuple[str, str, bool]]:
    """``work`` on each item: several blobs at once on a few threads (hashing, copying and
    fsyncing release the GIL: the 20 blobs, 270 MB, of the cold-build benchmark's image took
    0.24 s one after the other and 0.16 s this way, on 2 cores); one alone on this thread."""
    if len(items) < 2:
        yield from (work(*item) for item in items)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(_PLACE_THREADS, len(items))) as pool:
        yield from pool.map(lambda item: work(*item), items)


#: Blobs copied into an output at once.
_PLACE_THREADS: Final = 4


def _stamp_of(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}\n"


def _read_placed(record: Path) -> dict[str, str]:
    """A layout's stamps (``<hex> <stamp>`` lines), empty if missing or unreadable."""
    stamps: dict[str, str] = {}
    for line in (_read_stamp(record) or "").splitlines(keepends=True):
        name, _, stamp = line.partition(" ")
        if stamp:
            stamps[name] = stamp
    return stamps


def _read_stamp(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def file_holds(path: Path, digest: str) -> bool:
    """Whether the file at ``path`` exists and its bytes hash to ``digest``."""
    hasher = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_COPY_CHUNK):
                hasher.update(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    return "sha256:" + hasher.hexdigest() == digest


_FICLONE: Final = 0x40049409  # ioctl(dest, FICLONE, source): share extents, copy on write


def copy_file(source: Path, dest: Path, *, mode: int = 0o444) -> None:
    """Put a copy of ``source`` at ``dest`` atomically: a reflink where the filesystem makes
    them (btrfs, XFS), else ``copy_file_range``; fsynced, with ``mode``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        with source.open("rb") as src, open(tmp, "xb") as out:
            try:
                fcntl.ioctl(out.fileno(), _FICLONE, src.fileno())
            except OSError:
                _copy_range(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise naming(error, dest) from None
        raise


def _copy_range(src: IO[bytes], out: IO[bytes]) -> None:
    size = os.fstat(src.fileno()).st_size
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src.fileno(), out.fileno(), min(size - done, 1 << 30))
            if n == 0:
                break
            done += n
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        src.seek(done)
        out.seek(done)
        shutil.copyfileobj(src, out, _COPY_CHUNK)


def _unlink_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()


@contextlib.contextmanager
def scratch_dir(blobs: BlobStore) -> Iterator[Path]:
    """A temporary directory inside the store (same filesystem as the blobs)."""
    root = blobs.store.area(StoreArea.TMP)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        yield Path(tmp)

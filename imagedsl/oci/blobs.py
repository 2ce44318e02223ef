"""Blobs in the store: written atomically under their sha256, checked whenever they are read.

This is the one place that writes, verifies and renames a blob, for the builder, for base
images read from layouts and archives, and for the registry client. A blob is written to a
temporary file beside its final name, hashed as it is written, fsynced, and renamed once it is
what its digest says, so a build killed at any point leaves either no blob or the whole blob
(never a short one under a digest's name). A blob fetched from a registry goes to a partial
file that an interrupted fetch leaves behind and the next one resumes (:meth:`BlobStore.
resumable`). Anything read from a blob, from the store or from a base image, is hashed as it
is read and refused if it does not match its digest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol

import attrs

from imagedsl.errors import EnvironmentFailure, ImageDSLError
from imagedsl.oci.digest import is_sha256
from imagedsl.store import StoreArea, fsync_dir

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
        """Remove temporary files and directories that killed builds left (only old ones:
        a concurrent build may be writing a new one). Returns how many were removed."""
        now = time.time()
        removed = 0
        candidates: list[Path] = []
        if self.root.is_dir():
            candidates += [p for p in self.root.iterdir() if p.name.startswith(".incoming.")]
        scratch = self.store.area(StoreArea.TMP)
        if scratch.is_dir():
            candidates += list(scratch.iterdir())
        for path in candidates:
            try:
                if now - path.lstat().st_mtime < older_than:
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
        """Whether the blob is present (and, if given, of ``size`` bytes)."""
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

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
        return final

    def put(self, data: bytes) -> str:
        """Store small bytes (a config, a manifest); return their digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest, len(data)):
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
        if _has_file(final, size):
            yield None
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".partial.{final.name}")
        with open(partial, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            if _has_file(final, size):
                _unlink_if_empty(partial)
                yield None
                return
            yield PartialBlob(handle, digest, size)

    def import_stream(self, source: BinaryIO | IO[bytes], digest: str, where: str) -> None:
        """Copy a blob into the store from ``source``, refusing it if it is not ``digest``."""
        if self.has(digest):
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


def _has_file(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


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


def link_or_copy(source: Path, dest: Path) -> None:
    """Put ``source`` at ``dest`` atomically: a hard link when possible, else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        with source.open("rb") as src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out, _COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
    try:
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

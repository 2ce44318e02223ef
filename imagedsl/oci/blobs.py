"""Blobs in the store: written atomically under their sha256, checked whenever they are read.

A blob is written to a temporary file beside its final name, fsynced, and renamed, so a build
killed at any point leaves either no blob or the whole blob (never a short one under a digest's
name). Anything read from a blob, from the store or from a base image, is hashed as it is read
and refused if it does not match its digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from imagedsl.errors import ImageDSLError
from imagedsl.ledger import fsync_dir

if TYPE_CHECKING:
    from imagedsl.ledger import Store

_COPY_CHUNK = 1 << 20
#: Temporary files older than this are left over from killed builds.
_STALE_SECONDS = 3600.0


class BlobDigestError(ImageDSLError):
    """A blob's bytes do not match the digest that names it."""

    def __init__(self, where: str, expected: str, actual: str) -> None:
        super().__init__(where, expected, actual)
        self.where = where
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return (
            f"blob {self.expected} in {self.where} is corrupt: its bytes hash to {self.actual}; "
            "it was refused"
        )


class MissingBlobError(ImageDSLError):
    """A blob that an image refers to is not where it should be."""

    def __init__(self, where: str, digest: str) -> None:
        super().__init__(where, digest)
        self.where = where
        self.digest = digest

    def __str__(self) -> str:
        return f"blob {self.digest} is missing from {self.where}"


def check_digest(digest: object) -> str:
    """Refuse anything but ``sha256:<64 lowercase hex>`` (a digest names a file here)."""
    if not isinstance(digest, str):
        raise BlobDigestError("a descriptor", "sha256:...", repr(digest))
    algorithm, _, hexdigest = digest.partition(":")
    if (
        algorithm != "sha256"
        or len(hexdigest) != 64
        or not all(c in "0123456789abcdef" for c in hexdigest)
    ):
        raise BlobDigestError("a descriptor", "sha256:<64 hex digits>", digest)
    return digest


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


class DamagedBlobError(ImageDSLError):
    """A blob has the right digest but cannot be read (a bad archive made upstream)."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(what, problem)
        self.what = what
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.what} cannot be read: {self.problem}"


class BlobStore:
    """The store's ``blobs/sha256`` directory."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root / "blobs" / "sha256"

    def sweep(self, older_than: float = _STALE_SECONDS) -> int:
        """Remove temporary files and directories that killed builds left (only old ones:
        a concurrent build may be writing a new one). Returns how many were removed."""
        now = time.time()
        removed = 0
        candidates: list[Path] = []
        if self.root.is_dir():
            candidates += [p for p in self.root.iterdir() if p.name.startswith(".incoming.")]
        scratch = self.store.root / "tmp"
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

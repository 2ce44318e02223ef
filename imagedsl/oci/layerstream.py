"""The tar inside a layer blob, whatever its compression (gzip, zstd or none).

Layers are read as streams, never extracted whole: the first bytes say the compression
(:func:`~imagedsl.oci.mediatypes.sniff_compression`): :func:`decompressed` gives a reader of
the tar behind them (the OCI backend), :func:`decompressed_chunks` the same bytes as a series
of large chunks (``imagedsl inspect``, which parses them in place).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Final, cast

from imagedsl.oci.mediatypes import sniff_compression

if TYPE_CHECKING:
    from imagedsl.oci.blobs import VerifyingReader

#: The largest PAX (``x``/``g``) or GNU long-name/long-link (``L``/``K``) header a layer may
#: carry, and how many may come in a row before one entry: every reader of a layer reads such a
#: header whole (the OCI backend's scan, ``imagedsl inspect``'s readers). PATH_MAX is 4096 bytes
#: and the kernel bounds an extended attribute's value at 64 KiB, so real headers stay far
#: below; GNU tar writes at most two in a row (``L``, ``K``), PAX one.
EXTENSION_MAX: Final = 1 << 20
EXTENSION_CHAIN_MAX: Final = 8


class _Peek:
    """A reader that can give back its first bytes once."""

    def __init__(self, raw: BinaryIO | IO[bytes] | VerifyingReader) -> None:
        self._raw = raw
        self.head = raw.read(4)
        self._pending = self.head

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._pending:
            if n < 0:
                data = self._pending + self._raw.read()
                self._pending = b""
                return data
            data, self._pending = self._pending[:n], self._pending[n:]
            if len(data) < n:
                data += self._raw.read(n - len(data))
            return data
        return self._raw.read(n)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def inflated_chunks(raw: Any, *, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of gzip members one after another, inflated by isal a large chunk at a time.

    Zero padding after a member is skipped (as ``gzip`` does); anything else after a member,
    a stream cut short, or bad data is an ``OSError`` or ``EOFError`` (as ``gzip`` raises).
    """
    from isal import isal_zlib

    inflater = isal_zlib.decompressobj(wbits=31)
    while True:
        if inflater.eof:
            rest = inflater.unused_data.lstrip(b"\0")
            while not rest:
                more = raw.read(chunk)
                if not more:
                    return
                rest = more.lstrip(b"\0")
            if not rest.startswith(b"\x1f\x8b"):
                raise OSError("not gzip data after a gzip member")
            inflater = isal_zlib.decompressobj(wbits=31)
            pending = rest
        else:
            pending = inflater.unconsumed_tail or raw.read(chunk)
            if not pending:
                raise EOFError("the gzip data ends before its end-of-stream marker")
        try:
            out = inflater.decompress(pending, 4 * chunk)
        except isal_zlib.error as error:  # type: ignore[misc]  # as gzip.BadGzipFile: an OSError
            raise OSError(f"bad gzip data: {error}") from None
        if out:
            yield bytes(out)


def decompressed_chunks(raw: Any, *, size: int = 4 << 20) -> Iterator[bytes]:
    """The tar inside a layer blob, whatever its compression, as a series of chunks."""
    peek: Any = _Peek(raw)
    kind = sniff_compression(peek.head)
    if kind == "gzip":
        yield from inflated_chunks(peek, chunk=size // 4)
        return
    reader: Any = peek
    if kind == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(peek, read_across_frames=True)
    while data := reader.read(size):
        yield data


class _ChunkReader:
    """``read(n)`` over a series of chunks (a layer is read by many small reads: a header,
    then a file; ``gzip.GzipFile``'s 8 KiB buffer made Python's work cost more than inflating)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [self._buffer[self._offset :], *self._chunks]
            self._buffer, self._offset = b"", 0
            return b"".join(parts)
        available = len(self._buffer) - self._offset
        if available >= n:
            data = self._buffer[self._offset : self._offset + n]
            self._offset += n
            return data
        parts = [self._buffer[self._offset :]]
        while available < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            parts.append(chunk)
            available += len(chunk)
        joined = b"".join(parts)
        self._buffer, self._offset = joined, min(n, len(joined))
        return joined[:n]

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def decompressed(raw: BinaryIO | IO[bytes] | VerifyingReader) -> IO[bytes]:
    """A reader of the tar inside a layer blob, whatever its compression."""
    peek: Any = _Peek(raw)
    kind = sniff_compression(peek.head)
    if kind == "gzip":
        reader: Any = _ChunkReader(inflated_chunks(peek))
        return cast("IO[bytes]", reader)
    if kind == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(peek, read_across_frames=True)
        return cast("IO[bytes]", reader)
    return cast("IO[bytes]", peek)

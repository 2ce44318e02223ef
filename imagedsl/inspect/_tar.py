"""A fast reader of tar entries arriving in large chunks, for looking at layers in place.

``tarfile`` works, but its stream mode moves the data it skips in small pieces and builds a
``TarInfo`` per entry. Here the decompressed tar arrives as chunks of a few MiB
(:func:`~imagedsl.oci.layerstream.decompressed_chunks`); headers are parsed where they lie,
skipped data is never copied, and each chunk is searched once, at C speed, for *markers*
(``PRIVATE KEY``...), so the caller asks for a small file's bytes only when a marker lies
in it or its name calls for a look. Understood: ustar and GNU headers, GNU long names
(``L``/``K``), PAX records (``path``, ``linkpath``, ``size``) and base-256 sizes.
"""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import attrs

BLOCK: Final = 512
REGULAR: Final = frozenset({"0", "7"})
#: Types whose header is all there is (a size in it has no data behind it).
_HEADER_ONLY: Final = frozenset({"1", "2", "3", "4", "5", "6"})
_ZERO_BLOCK: Final = b"\0" * BLOCK


class TarFormatError(ValueError):
    """The stream is not a tar this reader understands."""


@attrs.define(slots=True)
class TarEntry:
    """One entry: its cleaned path (no leading ``/`` or ``./``), type flag, size and link."""

    path: str
    type: str
    size: int
    link: str
    #: The entry's bytes, when the caller asked for them.
    data: bytes | None = None

    @property
    def is_file(self) -> bool:
        """A regular file."""
        return self.type in REGULAR

    @property
    def is_dir(self) -> bool:
        """A directory."""
        return self.type == "5"


def clean_path(name: str) -> str:
    """A member name as a path from the image root: ``./a//b/`` -> ``a/b``; ``.`` -> ``""``."""
    if name and "//" not in name and "." not in (name[0], name[-1]) and "/." not in name:
        return name.strip("/")  # already clean (most names): skip normpath
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    return "" if cleaned == "." else cleaned


#: Given a regular file's path, size, and whether a marker lies in its bytes: fetch them?
WantsData = Callable[[str, int, bool], bool]


class TarReader:
    """The entries of a tar that arrives as ``chunks``; ``total`` counts its bytes."""

    def __init__(self, chunks: Iterator[bytes], markers: Sequence[bytes] = ()) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._position = 0
        #: Offset in the stream of ``_buffer[0]``.
        self._base = 0
        self.total = 0
        self._markers = tuple(markers)
        self._overlap = max((len(m) for m in self._markers), default=1) - 1
        self._tail = b""
        self._hits: list[int] = []

    def entries(self, wants_data: WantsData, *, data_limit: int) -> Iterator[TarEntry]:
        """Every entry in order; regular files up to ``data_limit`` bytes come with their
        bytes when ``wants_data`` says so."""
        pending: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        zero_blocks = 0
        while True:
            header = self._take(BLOCK)
            if len(header) < BLOCK:
                return
            if header == _ZERO_BLOCK:
                zero_blocks += 1
                if zero_blocks == 2:
                    return
                continue
            zero_blocks = 0
            kind = chr(header[156]) if header[156] else "0"
            size = _number(header[124:136])
            if kind in ("x", "g", "L", "K"):
                payload = self._take(size)
                self._skip(-size % BLOCK)
                if kind == "x":
                    pending.update(_pax(payload))
                elif kind == "L":
                    long_name = _text(payload.rstrip(b"\0"))
                elif kind == "K":
                    long_link = _text(payload.rstrip(b"\0"))
                continue
            name = long_name if long_name is not None else _name(header)
            link = long_link if long_link is not None else _text(header[157:257].split(b"\0", 1)[0])
            name = pending.get("path", name)
            link = pending.get("linkpath", link)
            if "size" in pending:
                size = int(pending["size"])
            pending.clear()
            long_name = long_link = None
            entry = TarEntry(path=clean_path(name), type=kind, size=size, link=link)
            if size and kind not in _HEADER_ONLY:
                padded = size + (-size % BLOCK)
                if kind in REGULAR and size <= data_limit and self._have(padded):
                    start = self._base + self._position
                    if wants_data(entry.path, size, self._marked(start, start + size)):
                        entry.data = self._buffer[self._position : self._position + size]
                    self._position += padded
                else:
                    self._skip(padded)
            yield entry

    def drain(self) -> None:
        """Read the stream to its end (what follows the tar's end still counts in ``total``)."""
        while self._pull():
            self._buffer, self._position, self._base = b"", 0, self.total

    # -- the buffer --------------------------------------------------------------------------

    def _pull(self) -> bool:
        chunk = next(self._chunks, b"")
        if not chunk:
            return False
        if self._markers:
            self._scan(chunk)
        self.total += len(chunk)
        rest = self._buffer[self._position :]
        self._base += self._position
        self._buffer = rest + chunk if rest else chunk
        self._position = 0
        return True

    def _scan(self, chunk: bytes) -> None:
        """Note where markers start in ``chunk``, and in the seam with the chunk before."""
        found = []
        seam = self._tail + chunk[: self._overlap]
        for marker in self._markers:
            index = seam.find(marker)
            while index >= 0:
                if index < len(self._tail) < index + len(marker):  # across the seam only
                    found.append(self.total - len(self._tail) + index)
                index = seam.find(marker, index + 1)
            index = chunk.find(marker)
            while index >= 0:
                found.append(self.total + index)
                index = chunk.find(marker, index + 1)
        self._hits.extend(sorted(found))
        if self._overlap:
            self._tail = (
                (self._tail + chunk)[-self._overlap :]
                if len(chunk) < self._overlap
                else chunk[-self._overlap :]
            )

    def _marked(self, start: int, end: int) -> bool:
        index = bisect.bisect_left(self._hits, start)
        return index < len(self._hits) and self._hits[index] < end

    def _have(self, size: int) -> bool:
        while len(self._buffer) - self._position < size:
            if not self._pull():
                return False
        return True

    def _take(self, size: int) -> bytes:
        self._have(size)
        data = self._buffer[self._position : self._position + size]
        self._position += len(data)
        return data

    def _skip(self, size: int) -> None:
        while size > 0:
            available = len(self._buffer) - self._position
            if available >= size:
                self._position += size
                return
            size -= available
            self._position = len(self._buffer)
            if not self._pull():
                raise TarFormatError("the tar ends inside an entry")


def _name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix may hold the leading part
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return _text(name)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256, for sizes of 8 GiB and more
        value = field[0] & 0x3F
        for byte in field[1:]:
            value = (value << 8) | byte
        return value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad number in a tar header: {field!r}") from None


def _pax(payload: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    position = 0
    while position < len(payload):
        space = payload.find(b" ", position)
        if space < 0:
            break
        length = int(payload[position:space])
        record = payload[space + 1 : position + length - 1]
        key, _, value = record.partition(b"=")
        records[_text(key)] = _text(value)
        position += length
    return records

"""A fast reader of tar entries, for looking at layers in place.

``tarfile`` works, but its stream mode moves the data it skips in small pieces and builds a
``TarInfo`` per entry. Here a layer is read one of two ways:

- a compressed layer arrives as large decompressed chunks
  (:func:`~imagedsl.oci.layerstream.decompressed_chunks`): headers are parsed where they lie
  and skipped data is never copied;
- an uncompressed layer in a file (a layout blob, a ``docker save`` member) is read by
  position: each header with one ``pread``, and a file's bytes only when asked for; what is
  skipped is never read at all.

:class:`TarReader` gives a :class:`TarEntry` per entry; :func:`list_at` and
:func:`list_chunks` read the same entries (and the same bytes) as columns, a
:class:`Listing`, without an object per entry: what ``imagedsl inspect`` uses.

Understood: ustar and GNU headers, GNU long names (``L``/``K``), PAX records (``path``,
``linkpath``, ``size``) and base-256 sizes. An extension header is read whole, so one over
:data:`EXTENSION_MAX`, or more than :data:`EXTENSION_CHAIN_MAX` of them before one entry, is
refused before it is read (:class:`~imagedsl.backends.oci.filesystem.UnsafeLayerError`, as the
OCI backend's scan refuses it).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterator
from typing import Final, NoReturn, Protocol

import attrs

from imagedsl.oci.layerstream import EXTENSION_CHAIN_MAX, EXTENSION_MAX

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


#: Given a regular file's path and size: fetch its bytes?
WantsData = Callable[[str, int], bool]


class _Source(Protocol):
    """Where the tar's bytes come from, in order."""

    total: int

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end)."""

    def skip(self, size: int) -> None:
        """Pass over ``size`` bytes."""

    def finish(self) -> None:
        """Account for the rest of the stream."""


class _Chunks:
    """A tar arriving as chunks: one buffer, headers and data sliced out of it."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._position = 0
        self.total = 0

    def _pull(self) -> bool:
        chunk = next(self._chunks, b"")
        if not chunk:
            return False
        self.total += len(chunk)
        if self._position < len(self._buffer):
            self._buffer = self._buffer[self._position :] + chunk
        else:
            self._buffer = chunk
        self._position = 0
        return True

    def take(self, size: int) -> bytes:
        while len(self._buffer) - self._position < size:  # usually already there
            if not self._pull():
                break
        data = self._buffer[self._position : self._position + size]
        self._position += len(data)
        return data

    def skip(self, size: int) -> None:
        while size > 0:
            available = len(self._buffer) - self._position
            if available >= size:
                self._position += size
                return
            size -= available
            self._position = len(self._buffer)
            if not self._pull():
                raise TarFormatError("the tar ends inside an entry")

    def finish(self) -> None:
        while self._pull():
            self._buffer, self._position = b"", 0


class _Positional:
    """An uncompressed tar in a file, read by position: skipped bytes are never read."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd = fd
        self._position = offset
        self._end = offset + size
        self.total = size

    def take(self, size: int) -> bytes:
        size = min(size, self._end - self._position)
        data = os.pread(self._fd, size, self._position) if size > 0 else b""
        self._position += len(data)
        return data

    def skip(self, size: int) -> None:
        if self._position + size > self._end:
            raise TarFormatError("the tar ends inside an entry")
        self._position += size

    def finish(self) -> None:
        """Nothing to do: the size is known."""


class TarReader:
    """The entries of a tar; ``total`` is its size in bytes once read. ``layer`` names the
    tar in a refusal."""

    def __init__(self, source: _Source, *, layer: str = "") -> None:
        self._source = source
        self._layer = layer

    @classmethod
    def of_chunks(cls, chunks: Iterator[bytes], *, layer: str = "") -> TarReader:
        """A tar arriving as chunks (a compressed layer, inflated)."""
        return cls(_Chunks(chunks), layer=layer)

    @classmethod
    def at(cls, fd: int, offset: int, size: int, *, layer: str = "") -> TarReader:
        """An uncompressed tar of ``size`` bytes at ``offset`` in the file ``fd``."""
        return cls(_Positional(fd, offset, size), layer=layer)

    @property
    def total(self) -> int:
        """Bytes of the tar (after :meth:`finish`)."""
        return self._source.total

    def finish(self) -> None:
        """Read to the end of the stream (what follows the tar's end counts in ``total``)."""
        self._source.finish()

    def entries(self, wants_data: WantsData, *, data_limit: int) -> Iterator[TarEntry]:
        """Every entry in order; regular files up to ``data_limit`` bytes come with their
        bytes when ``wants_data`` says so."""
        source = self._source
        pending: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        chain = 0
        zero_blocks = 0
        while True:
            header = source.take(BLOCK)
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
                chain += 1
                _check_extension(self._layer, header, size, chain)
                payload = source.take(size)
                source.skip(-size % BLOCK)
                if kind == "x":
                    pending.update(_pax(payload))
                elif kind == "L":
                    long_name = _text(payload.rstrip(b"\0"))
                elif kind == "K":
                    long_link = _text(payload.rstrip(b"\0"))
                continue
            chain = 0
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
                padding = -size % BLOCK
                if kind in REGULAR and size <= data_limit and wants_data(entry.path, size):
                    entry.data = source.take(size)
                    if len(entry.data) < size:
                        raise TarFormatError("the tar ends inside an entry")
                    source.skip(padding)
                else:
                    source.skip(size + padding)
            yield entry


def _check_extension(layer: str, header: bytes, size: int, chain: int) -> None:
    """Refuse an extension header over :data:`EXTENSION_MAX` (before its payload is read) or
    past :data:`EXTENSION_CHAIN_MAX` in a row (their records add up until the entry)."""
    if size > EXTENSION_MAX:
        _refuse(
            layer,
            header,
            f"is an extension header of {size} bytes, more than the {EXTENSION_MAX} a layer may use",
        )
    if chain > EXTENSION_CHAIN_MAX:
        _refuse(
            layer, header, f"is one of more than {EXTENSION_CHAIN_MAX} extension headers in a row"
        )


def _refuse(layer: str, header: bytes, problem: str) -> NoReturn:
    # Imported only to refuse: reading a layer for inspect does not load the backends.
    from imagedsl.backends.oci.filesystem import UnsafeLayerError

    raise UnsafeLayerError(layer, _text(_raw_name(header)), problem)


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


# -- listing a layer at speed ------------------------------------------------------------------

#: Type flags as bytes of a header: regular files (NUL is an old regular file), header-only
#: types, and the headers that describe the next entry (PAX ``x``/``g``, GNU ``L``/``K``).
_REGULAR_FLAGS: Final = frozenset(b"07\0")
_HEADER_ONLY_FLAGS: Final = frozenset(b"123456")
_EXTENSION_FLAGS: Final = frozenset(b"xgLK")


class Listing:
    """A tar's entries as columns (what :class:`TarReader` gives, without an object per
    entry): cleaned paths, sizes, type flags (``b"0"`` for a NUL flag), the bytes of the
    regular files that were read (by entry index), and the tar's size in bytes."""

    __slots__ = ("data", "kinds", "paths", "sizes", "total")

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes: list[int] = []
        self.kinds = bytearray()
        self.data: dict[int, bytes] = {}
        self.total = 0


def _wanted(path: str, unread: frozenset[str]) -> bool:
    """Whether a file's bytes are read: its extension (lowercased) is not in ``unread``; a
    name that starts with its only dot has no extension."""
    dot = path.rfind(".")
    return dot <= 0 or path[dot - 1] == "/" or path[dot:].lower() not in unread


def _extended(kind: int, payload: bytes, pending: dict[str, str], names: list[str | None]) -> None:
    """Keep what an extension header says of the next entry (``names``: [long name, long
    link])."""
    if kind == 0x78:  # x: PAX records
        pending.update(_pax(payload))
    elif kind == 0x4C:  # L: GNU long name
        names[0] = _text(payload.rstrip(b"\0"))
    elif kind == 0x4B:  # K: GNU long link
        names[1] = _text(payload.rstrip(b"\0"))


def _apply(
    header_path: str, size: int, pending: dict[str, str], names: list[str | None]
) -> tuple[str, int]:
    """The path and size of an entry after its extension headers."""
    name = names[0] if names[0] is not None else header_path
    name = pending.get("path", name)
    if "size" in pending:
        size = int(pending["size"])
    pending.clear()
    names[0] = names[1] = None
    return name, size


def _raw_name(header: bytes) -> bytes:
    end = header.find(0, 0, 100)
    name = header[: end if end >= 0 else 100]
    if header[345] and header[257:263] == b"ustar\0":  # a ustar prefix holds the leading part
        prefix = header[345:500]
        end = prefix.find(0)
        name = (prefix[:end] if end >= 0 else prefix) + b"/" + name
    return name


def _size(header: bytes) -> int:
    field = header[124:136]
    try:  # the usual field: octal digits, then NUL or space
        return int(field[:11] if field[11] == 0 else field, 8)
    except ValueError:  # NULs inside, base-256, blanks: the general reader
        return _number(field)


def list_at(
    fd: int, offset: int, size: int, *, data_limit: int, unread: frozenset[str], layer: str = ""
) -> Listing:
    """The entries of an uncompressed tar of ``size`` bytes at ``offset`` in the file ``fd``,
    read by position (one ``pread`` per header; what is skipped is never read). Regular files
    up to ``data_limit`` bytes come with their bytes unless :func:`_wanted` says no; what is
    read is what :class:`TarReader` reads, entry for entry (``layer`` names the tar in a
    refusal)."""
    listing = Listing()
    paths, sizes, kinds, data = listing.paths, listing.sizes, listing.kinds, listing.data
    pread = os.pread
    position = offset
    end = offset + size
    listing.total = size
    pending: dict[str, str] = {}
    names: list[str | None] = [None, None]
    extended = 0  # extension headers since the last entry
    zero_blocks = 0
    while end - position >= BLOCK:
        header = pread(fd, BLOCK, position)
        if len(header) < BLOCK:
            break
        position += BLOCK
        kind = header[156]
        if not kind and header == _ZERO_BLOCK:
            zero_blocks += 1
            if zero_blocks == 2:
                break
            continue
        zero_blocks = 0
        try:  # the usual size field: octal digits, then NUL or space
            entry_size = int(header[124:135] if header[135] == 0 else header[124:136], 8)
        except ValueError:
            entry_size = _size(header)
        if kind in _EXTENSION_FLAGS:
            extended += 1
            _check_extension(layer, header, entry_size, extended)
            length = min(entry_size, end - position)
            payload = pread(fd, length, position) if length > 0 else b""
            position += len(payload)
            padding = -entry_size % BLOCK
            if position + padding > end:
                raise TarFormatError("the tar ends inside an entry")
            position += padding
            _extended(kind, payload, pending, names)
            continue
        end_of_name = header.find(0, 0, 100)
        if header[345] or end_of_name < 0:
            path = _text(_raw_name(header))
        else:
            path = header[:end_of_name].decode("utf-8", "surrogateescape")
        if extended:
            path, entry_size = _apply(path, entry_size, pending, names)
            extended = 0
        if path and "//" not in path and path[0] != "." and path[-1] != "." and "/." not in path:
            path = path.strip("/")
        else:
            path = clean_path(path)
        if not kind:
            kind = 0x30
        paths.append(path)
        sizes.append(entry_size)
        kinds.append(kind)
        if entry_size and kind not in _HEADER_ONLY_FLAGS:
            padding = -entry_size % BLOCK
            if (
                kind in _REGULAR_FLAGS
                and entry_size <= data_limit
                and (
                    (dot := path.rfind(".")) <= 0
                    or path[dot - 1] == "/"
                    or path[dot:].lower() not in unread
                )
            ):  # _wanted(path, unread), inline
                length = min(entry_size, end - position)
                read = pread(fd, length, position) if length > 0 else b""
                position += len(read)
                if len(read) < entry_size:
                    raise TarFormatError("the tar ends inside an entry")
                data[len(paths) - 1] = read
                entry_size = padding
            else:
                entry_size += padding
            if position + entry_size > end:
                raise TarFormatError("the tar ends inside an entry")
            position += entry_size
    return listing


def list_chunks(
    chunks: Iterator[bytes], *, data_limit: int, unread: frozenset[str], layer: str = ""
) -> Listing:
    """:func:`list_at` for a tar arriving as chunks (a compressed layer, inflated); the total
    counts what follows the tar's end too."""
    source = _Chunks(chunks)
    take, skip = source.take, source.skip
    listing = Listing()
    paths, sizes, kinds, data = listing.paths, listing.sizes, listing.kinds, listing.data
    pending: dict[str, str] = {}
    names: list[str | None] = [None, None]
    extended = 0  # extension headers since the last entry
    zero_blocks = 0
    while True:
        header = take(BLOCK)
        if len(header) < BLOCK:
            break
        kind = header[156]
        if not kind and header == _ZERO_BLOCK:
            zero_blocks += 1
            if zero_blocks == 2:
                break
            continue
        zero_blocks = 0
        entry_size = _size(header)
        if kind in _EXTENSION_FLAGS:
            extended += 1
            _check_extension(layer, header, entry_size, extended)
            payload = take(entry_size)
            skip(-entry_size % BLOCK)
            _extended(kind, payload, pending, names)
            continue
        path = _text(_raw_name(header))
        if extended:
            path, entry_size = _apply(path, entry_size, pending, names)
            extended = 0
        path = clean_path(path)
        if not kind:
            kind = 0x30
        paths.append(path)
        sizes.append(entry_size)
        kinds.append(kind)
        if entry_size and kind not in _HEADER_ONLY_FLAGS:
            padding = -entry_size % BLOCK
            if kind in _REGULAR_FLAGS and entry_size <= data_limit and _wanted(path, unread):
                read = take(entry_size)
                if len(read) < entry_size:
                    raise TarFormatError("the tar ends inside an entry")
                data[len(paths) - 1] = read
                skip(padding)
            else:
                skip(entry_size + padding)
    source.finish()
    listing.total = source.total
    return listing

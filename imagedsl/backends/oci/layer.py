"""Layer tars written byte for byte the same on every machine, and their compression.

The tar rules (DESIGN.md §4): entries sorted by path component, every parent directory
present, no path twice, whiteouts first in their directory, one fixed mtime, owners by number
only (no user or group names), permission bits exactly as asked, symlinks and hard links kept,
ustar headers with a PAX record only where ustar cannot hold a value, and the archive closed
by two zero blocks (no padding to a tar "record"). Extended attributes travel as PAX
``SCHILY.xattr.NAME`` records, as BuildKit and Docker write them (see :func:`carries_xattr`).

Compression must not depend on the Python build either. ``zlib`` output changes with the zlib
that CPython links (zlib, zlib-ng, Apple's, distribution patches), so gzip is a header and
trailer we write ourselves around raw deflate from ISA-L, pinned through the ``isal`` package
(which carries its own ISA-L). Input reaches the compressor in fixed 1 MiB pieces, so the bytes
depend only on the tar stream, the ISA-L version and the level. zstd comes from the pinned
``zstandard`` package: fixed level, single-threaded, no content size. The digest that names a
layer's *content* (the diff_id, sha256 of the tar) never depends on the compressor at all.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import queue
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Final, Literal

import attrs
import blake3
from isal import isal_zlib

from imagedsl.errors import InputError
from imagedsl.oci.image import LayerBlob, encodes_utf8
from imagedsl.oci.mediatypes import LAYER_MEDIA_TYPES, Compression

EntryKind = Literal["file", "dir", "symlink", "hardlink", "whiteout", "opaque"]

#: ISA-L level 1: measured here at 0.2-0.7 GB/s on one core, within a few percent of zlib 6's
#: ratio on source trees (docs/oci-backend.md has the numbers).
GZIP_LEVEL: Final = 1
ZSTD_LEVEL: Final = 3
#: Input reaches the compressor in pieces of exactly this size (the last one may be shorter).
CHUNK: Final = 1 << 20
WHITEOUT_PREFIX: Final = ".wh."
OPAQUE_MARKER: Final = ".wh..wh..opq"
#: The PAX record prefix of an extended attribute (``SCHILY.xattr.security.capability``).
XATTR_PAX_PREFIX: Final = "SCHILY.xattr."
#: Extended attributes a layer carries besides ``user.*``: file capabilities and ACLs.
CARRIED_XATTRS: Final = frozenset(
    {"security.capability", "system.posix_acl_access", "system.posix_acl_default"}
)

#: Extended attributes as (name, value) pairs, sorted by name.
Xattrs = tuple[tuple[str, bytes], ...]

_BLOCK: Final = 512
_ZEROS: Final = bytes(_BLOCK)
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no mtime, no name, OS unknown
_TYPEFLAGS: Final[dict[str, bytes]] = {
    "file": b"0",
    "hardlink": b"1",
    "symlink": b"2",
    "dir": b"5",
    "whiteout": b"0",
    "opaque": b"0",
}


def carries_xattr(name: str) -> bool:
    """Whether a layer carries the extended attribute ``name``: file capabilities, ACLs and
    ``user.*``, what a command in a RUN sets on purpose. Never ``trusted.*`` (overlayfs's
    private attributes among them: a layer must not steer the overlay it is mounted in) or
    other ``security.*`` (labels the host's security module owns)."""
    if name.startswith("user."):
        return not name.startswith("user.overlay.")
    return name in CARRIED_XATTRS


def read_xattrs(path: str | os.PathLike[str] | int) -> Xattrs:
    """The carried extended attributes of a file or directory, by path (symlinks not
    followed) or open descriptor."""
    follow = isinstance(path, int)  # a descriptor is the file itself
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError:
        return ()
    found = []
    for name in sorted(names):
        if carries_xattr(name):
            try:
                found.append((name, os.getxattr(path, name, follow_symlinks=follow)))
            except OSError:
                continue  # removed meanwhile
    return tuple(found)


def pax_xattrs(records: Mapping[str, str]) -> Xattrs:
    """The carried extended attributes in a tar member's PAX records (Python's tarfile
    gives binary values as text with surrogate escapes; encoding gives the bytes back)."""
    found = [
        (key[len(XATTR_PAX_PREFIX) :], value.encode("utf-8", "surrogateescape"))
        for key, value in records.items()
        if key.startswith(XATTR_PAX_PREFIX) and carries_xattr(key[len(XATTR_PAX_PREFIX) :])
    ]
    return tuple(sorted(found))


@attrs.define
class LayerError(InputError):
    """A layer cannot be written as asked: a bad path, a clash, or a source that changed."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"layer entry {self.path!r}: {self.problem}"


@attrs.frozen(kw_only=True)
class LayerEntry:
    """One entry of a layer. ``path`` is relative to the root, without a trailing slash.

    ``whiteout`` deletes ``path`` from the layers below; ``opaque`` (``path`` a directory, ``""``
    for the root) hides everything below it in those layers. A ``file`` takes its bytes from
    ``source``: a host path, or the bytes themselves. When ``digest`` (blake3 hex) is given the
    bytes are checked against it while they are written, so a file edited since it was planned
    cannot end up in a layer cached under the old content's key.
    """

    path: str
    kind: EntryKind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    linkname: str = ""
    source: str | bytes | None = attrs.field(default=None, eq=False, repr=False)
    digest: str | None = attrs.field(default=None, eq=False, repr=False)
    #: Extended attributes, sorted by name (see :func:`carries_xattr`).
    xattrs: Xattrs = ()

    @property
    def tar_name(self) -> str:
        """The member name in the tar (directories end with ``/``)."""
        if self.kind == "whiteout":
            head, tail = posixpath.split(self.path)
            return posixpath.join(head, WHITEOUT_PREFIX + tail)
        if self.kind == "opaque":
            return posixpath.join(self.path, OPAQUE_MARKER)
        return self.path + "/" if self.kind == "dir" else self.path


def check_layer_path(path: str) -> str:
    """Refuse a path that is absolute, climbs with ``..``, or is not clean; return it."""
    if (
        not path
        or path.startswith("/")
        or "\x00" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise LayerError(path, "is not a clean relative path inside the image")
    return path


def default_parent(path: str) -> LayerEntry:
    """A directory made because an entry below it needs a parent: 0755, owned by root."""
    return LayerEntry(path=path, kind="dir", mode=0o755)


def sort_key(name: str) -> tuple[tuple[int, bytes], ...]:
    """Order tar names: by path component, a directory before what it holds, whiteouts first."""
    parts = name.rstrip("/").split("/")
    key = [(1, part.encode("utf-8", "surrogateescape")) for part in parts]
    if parts[-1].startswith(WHITEOUT_PREFIX):
        key[-1] = (0, key[-1][1])
    return tuple(key)


def arrange(
    entries: Iterable[LayerEntry], parent: Callable[[str], LayerEntry] = default_parent
) -> list[LayerEntry]:
    """Check, de-duplicate, complete with parents, and sort the entries of one layer.

    Two entries for one path are accepted only if they are equal (a directory named twice);
    anything else is a :class:`LayerError`. Missing parent directories come from ``parent``.
    """
    by_name: dict[str, LayerEntry] = {}
    for entry in entries:
        if entry.kind == "opaque" and entry.path == "":
            name = OPAQUE_MARKER
        else:
            check_layer_path(entry.path)
            name = entry.tar_name
        old = by_name.get(name)
        if old is not None and old != entry:
            raise LayerError(entry.path, "is written twice with different contents")
        by_name[name] = entry
    for name in list(by_name):
        head = posixpath.dirname(name.rstrip("/"))
        while head and head + "/" not in by_name:
            made = parent(head)
            if made.kind != "dir" or made.path != head:
                raise LayerError(head, "parent factory must make that directory")
            by_name[head + "/"] = made
            head = posixpath.dirname(head)
        file_name = name.rstrip("/")
        if name.endswith("/") and file_name in by_name:
            raise LayerError(file_name, "is both a directory and a non-directory")
    return _links_after_targets([by_name[name] for name in sorted(by_name, key=sort_key)])


def _links_after_targets(entries: list[LayerEntry]) -> list[LayerEntry]:
    """``entries`` with each hard link after the file it names, when that file sorts after
    it (an archive's ``a`` linked to its ``b``): a reader makes the link from a file already
    written (``docker load`` fails otherwise). The order is still fixed by the entries."""
    at = {entry.path: i for i, entry in enumerate(entries)}
    late = [e for i, e in enumerate(entries) if e.kind == "hardlink" and at.get(e.linkname, -1) > i]
    if not late:
        return entries
    waiting: dict[str, list[LayerEntry]] = {}
    for entry in late:
        waiting.setdefault(entry.linkname, []).append(entry)
    moved = {id(entry) for entry in late}
    out: list[LayerEntry] = []
    for entry in entries:
        if id(entry) not in moved:
            out.append(entry)
            out.extend(waiting.pop(entry.path, ()))
    return out


# -- tar headers -----------------------------------------------------------------------------


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("utf-8", "surrogateescape") + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _ustar(
    name: bytes,
    *,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes = b"",
) -> bytes:
    # Fields in order: name 100, mode/uid/gid 8 each, size/mtime 12 each | checksum 8 |
    # type 1, linkname 100, magic+version 8, uname/gname 32 each (empty), devmajor/minor 8
    # each, prefix 155 and padding 12 (empty).
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    # The checksum field counts as 8 spaces; the padding NULs count nothing.
    checksum = sum(name) + sum(numbers) + typeflag[0] + sum(linkname) + _USTAR_TAIL_SUM
    return b"".join(
        (
            name.ljust(100, b"\0"),
            numbers,
            b"%06o\0 " % checksum,
            typeflag,
            linkname.ljust(100, b"\0"),
            _USTAR_TAIL,
        )
    )


_USTAR_TAIL: Final = b"ustar\x0000" + bytes(64) + b"0000000\x000000000\x00" + bytes(167)
_USTAR_TAIL_SUM: Final = sum(_USTAR_TAIL) + 8 * 32


def _fits(text: bytes, width: int) -> bool:
    return len(text) <= width and text.isascii()


def tar_header(entry: LayerEntry, mtime: int) -> bytes:
    """The header block(s) of one entry: ustar, preceded by a PAX header only when needed."""
    name = entry.tar_name.encode("utf-8", "surrogateescape")
    linkname = entry.linkname.encode("utf-8", "surrogateescape")
    size = entry.size if entry.kind == "file" else 0
    mode = 0 if entry.kind in ("whiteout", "opaque") else entry.mode & 0o7777
    records: list[bytes] = []
    if not _fits(name, 100):
        records.append(_pax_record("path", name))
        name = name[:100].decode("ascii", "replace").encode("ascii", "replace")
    if not _fits(linkname, 100):
        records.append(_pax_record("linkpath", linkname))
        linkname = linkname[:100].decode("ascii", "replace").encode("ascii", "replace")
    if size > 0o77777777777:
        records.append(_pax_record("size", str(size).encode()))
    uid, gid = entry.uid, entry.gid
    if records and not encodes_utf8(entry.tar_name + entry.linkname):
        # A name that is not UTF-8 goes in the PAX record as its bytes, which POSIX says a
        # reader must be told (Python, GNU tar and Go then keep the bytes as they are).
        records.append(_pax_record("hdrcharset", b"BINARY"))
    if uid > 0o7777777:
        records.append(_pax_record("uid", str(uid).encode()))
        uid = 0
    if gid > 0o7777777:
        records.append(_pax_record("gid", str(gid).encode()))
        gid = 0
    for xattr, value in entry.xattrs:
        records.append(_pax_record(XATTR_PAX_PREFIX + xattr, value))
    out = b""
    if records:
        payload = b"".join(sorted(records, key=lambda r: bytes(r).split(b" ", 1)[1]))
        out = _ustar(
            b"PaxHeader",
            mode=0o644,
            uid=0,
            gid=0,
            size=len(payload),
            mtime=mtime,
            typeflag=b"x",
        )
        out += payload + bytes(-len(payload) % _BLOCK)
    return out + _ustar(
        name,
        mode=mode,
        uid=uid,
        gid=gid,
        size=min(size, 0o77777777777),
        mtime=mtime,
        typeflag=_TYPEFLAGS[entry.kind],
        linkname=linkname,
    )


# -- compression -----------------------------------------------------------------------------


#: A piece is stored, not deflated, when every one of these samples of it (spread across it)
#: deflates to at least this share of its size: already-compressed data (archives, images,
#: wheels, jars) costs deflate as much CPU as text and gains nothing.
_SAMPLES: Final = 4
_SAMPLE_BYTES: Final = 2048
_STORE_SHARE: Final = 0.95
_STORED_MAX: Final = 0xFFFF  # bytes in one stored deflate block


def incompressible(piece: bytes | bytearray | memoryview) -> bool:
    """Whether deflating ``piece`` is not worth its CPU, judged from a few small samples
    (a compressible one ends the test: text pays for one sample). Bytes decide it alone, so
    the layer stays the same on every machine."""
    size = len(piece)
    if size < _SAMPLES * _SAMPLE_BYTES:
        return False
    step = size // _SAMPLES
    bound = _STORE_SHARE * _SAMPLE_BYTES
    with memoryview(piece) as view:
        for at in range(0, _SAMPLES * step, step):
            if len(isal_zlib.compress(view[at : at + _SAMPLE_BYTES], 1)) < bound:
                return False
    return True


def stored_blocks(piece: bytes | bytearray | memoryview, head: bytes = b"") -> bytearray:
    """``head``, then ``piece`` as non-final stored deflate blocks (RFC 1951 3.2.4), which
    start and end on a byte boundary: each is a zero header byte, LEN, its complement, then
    LEN bytes."""
    out = bytearray(head)
    with memoryview(piece) as view:
        for at in range(0, len(view), _STORED_MAX):
            block = view[at : at + _STORED_MAX]
            out += struct.pack("<BHH", 0, len(block), len(block) ^ 0xFFFF)
            out += block
    return out


class _Gzip:
    """RFC 1952 gzip: our fixed 10-byte header, ISA-L raw deflate, CRC-32 and length.

    A piece that does not compress (:func:`incompressible`) goes in as stored blocks, after a
    full flush of the deflater when it holds data (which byte-aligns its output and drops its
    history, so that no later match reaches back across the stored bytes)."""

    def __init__(self, level: int) -> None:
        self._deflate = isal_zlib.compressobj(
            level, isal_zlib.DEFLATED, -15, isal_zlib.DEF_MEM_LEVEL, isal_zlib.Z_DEFAULT_STRATEGY
        )
        self._crc = 0
        self._length = 0
        self._deflating = False

    def start(self) -> bytes:
        return _GZIP_HEADER

    def compress(self, chunk: bytes | bytearray | memoryview) -> bytes | bytearray:
        self._crc = isal_zlib.crc32(chunk, self._crc)
        self._length += len(chunk)
        if incompressible(chunk):
            flushed = self._deflate.flush(isal_zlib.Z_FULL_FLUSH) if self._deflating else b""
            self._deflating = False
            return stored_blocks(chunk, flushed)
        self._deflating = True
        return self._deflate.compress(chunk)

    def finish(self) -> bytes:
        tail = struct.pack("<II", self._crc & 0xFFFFFFFF, self._length & 0xFFFFFFFF)
        return self._deflate.flush(isal_zlib.Z_FINISH) + tail


class _Zstd:
    def __init__(self, level: int) -> None:
        import zstandard

        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=0, write_checksum=True, write_content_size=False
        )
        self._zstd = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def start(self) -> bytes:
        return b""

    def compress(self, chunk: bytes | bytearray | memoryview) -> bytes:
        return self._zstd.compress(chunk)

    def finish(self) -> bytes:
        return self._zstd.flush()


class _Identity:
    def start(self) -> bytes:
        return b""

    def compress(self, chunk: bytes | bytearray | memoryview) -> bytes:
        return bytes(chunk)

    def finish(self) -> bytes:
        return b""


def _compressor(compression: Compression, level: int | None) -> _Gzip | _Zstd | _Identity:
    if compression == "gzip":
        return _Gzip(GZIP_LEVEL if level is None else level)
    if compression == "zstd":
        return _Zstd(ZSTD_LEVEL if level is None else level)
    return _Identity()


class LayerStream:
    """A tar stream cut into fixed pieces: hashed (diff_id) as it is written, and compressed,
    hashed again (digest) and written to ``out`` by a second thread, so that reading files and
    compressing them use two cores (``threaded=False``: all on the calling thread, for a
    process that already has a core of its own per layer). File bytes are read straight into
    the pieces (:meth:`write_from`): one read per file feeds the tar, its check digest, the
    diff_id and the compressor, with no copy in between. The compressor sees the same pieces in
    the same order either way, so the bytes do not depend on the threads."""

    def __init__(
        self,
        out: IO[bytes],
        compression: Compression = "gzip",
        level: int | None = None,
        *,
        threaded: bool = True,
    ) -> None:
        self._out = out
        self._threaded = threaded
        self._compression = compression
        self._codec = _compressor(compression, level)
        self._diff = hashlib.sha256()
        self._blob = hashlib.sha256()
        self._piece = bytearray(CHUNK)
        self._view = memoryview(self._piece)
        self._over = bytearray(1)
        self._fill = 0
        self._worker: _Compressing | None = None
        self.uncompressed = 0
        self.compressed = 0
        self._emit(self._codec.start())

    def _emit(self, data: bytes | bytearray) -> None:
        if data:
            self._blob.update(data)
            self._out.write(data)
            self.compressed += len(data)

    def _compress(self, piece: bytes | bytearray | memoryview) -> None:
        self._emit(self._codec.compress(piece))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes of the tar stream."""
        fill = self._fill
        end = fill + len(data)
        if end < CHUNK:  # the usual case: a header, or padding
            self._piece[fill:end] = data
            self._fill = end
            return
        view = memoryview(data)
        while view:
            take = min(len(view), CHUNK - self._fill)
            self._view[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == CHUNK:
                self._ship()

    def write_from(self, fd: int, size: int, hasher: blake3.blake3 | None = None) -> int:
        """Append up to ``size`` bytes read from ``fd``, read straight into the stream's
        pieces (and into ``hasher``); return how many bytes there were (``size + 1`` when
        the file holds more than ``size``)."""
        done = 0
        while done < size:
            fill = self._fill
            take = min(size - done, CHUNK - fill)
            if take == size - done:
                # The last read asks for one byte more, which only a file that grew fills.
                count = os.readv(fd, [self._view[fill : fill + take], self._over])
                if count > take:
                    return done + count
            else:
                count = os.readv(fd, [self._view[fill : fill + take]])
            if not count:
                break
            if hasher is not None:
                hasher.update(self._view[fill : fill + count])
            self._fill += count
            done += count
            if self._fill == CHUNK:
                self._ship()
        return done

    def _ship(self) -> None:
        """Hand a full piece to the compressing thread and start a new one."""
        self._diff.update(self._piece)
        self.uncompressed += CHUNK
        if not self._threaded:
            self._compress(self._piece)
            self._fill = 0
            return
        if self._worker is None:
            self._worker = _Compressing(self._compress)
        self._view.release()
        self._piece = self._worker.hand_over(self._piece)
        self._view = memoryview(self._piece)
        self._fill = 0

    def abort(self) -> None:
        """Stop the compressing thread after a failure (what was written is discarded)."""
        if self._worker is not None:
            self._worker.close(check=False)
            self._worker = None

    def finish(self) -> LayerBlob:
        """Flush everything; return the descriptor of what was written."""
        last = self._view[: self._fill]
        self._diff.update(last)
        self.uncompressed += self._fill
        if self._worker is not None:
            self._worker.close()  # every full piece is compressed, in order
        if self._fill:
            self._compress(last)
        last.release()
        self._emit(self._codec.finish())
        return LayerBlob(
            digest="sha256:" + self._blob.hexdigest(),
            size=self.compressed,
            diff_id="sha256:" + self._diff.hexdigest(),
            media_type=LAYER_MEDIA_TYPES[self._compression],
            uncompressed_size=self.uncompressed,
        )


class _Compressing:
    """A thread that compresses full pieces in order; pieces come back to be filled again,
    and at most :data:`_PIECES_IN_FLIGHT` are ever out (memory stays bounded)."""

    def __init__(self, compress: Callable[[bytearray], None]) -> None:
        self._compress = compress
        self._todo: queue.Queue[bytearray | None] = queue.Queue()
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(_PIECES_IN_FLIGHT - 1):
            self._free.put(bytearray(CHUNK))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layer-compress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._todo.get()) is not None:
            if self._error is None:
                try:
                    self._compress(piece)
                except BaseException as error:  # re-raised in the writing thread
                    self._error = error
            self._free.put(piece)

    def hand_over(self, piece: bytearray) -> bytearray:
        """Queue a full piece; return an empty one (waiting while too many are in flight)."""
        self._raise()
        self._todo.put(piece)
        free = self._free.get()
        self._raise()
        return free

    def close(self, *, check: bool = True) -> None:
        """Wait until every queued piece is compressed."""
        self._todo.put(None)
        self._thread.join()
        if check:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


#: Pieces of the tar stream allocated per layer being written (1 MiB each).
_PIECES_IN_FLIGHT: Final = 8


class LayerCancelled(Exception):
    """Writing a layer stopped because ``stop`` was set (another layer of the build failed)."""


def write_tar(
    entries: Sequence[LayerEntry],
    stream: LayerStream,
    *,
    mtime: int,
    stop: threading.Event | None = None,
) -> None:
    """Write ``entries`` (already arranged) as a tar into ``stream``, then the end blocks;
    :class:`LayerCancelled` once ``stop`` is set."""
    try:
        for entry in entries:
            if stop is not None and stop.is_set():
                raise LayerCancelled(entry.path)
            stream.write(tar_header(entry, mtime))
            if entry.kind == "file" and entry.size:
                _write_content(entry, stream)
        stream.write(bytes(2 * _BLOCK))
    except BaseException:
        stream.abort()
        raise


def _write_content(entry: LayerEntry, stream: LayerStream) -> None:
    source = entry.source
    hasher = blake3.blake3() if entry.digest is not None else None
    written = 0
    if isinstance(source, bytes):
        written = len(source)
        if hasher is not None:
            hasher.update(source)
        stream.write(source)
    elif isinstance(source, str):
        try:
            fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as error:
            raise LayerError(entry.path, f"cannot read {source}: {error.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LayerError(entry.path, f"{source} is no longer a regular file")
            written = stream.write_from(fd, entry.size, hasher)
        finally:
            os.close(fd)
    else:
        raise LayerError(entry.path, "a file entry needs a source")
    if written != entry.size:
        raise LayerError(entry.path, f"changed size while the layer was written ({source!r})")
    if hasher is not None and hasher.hexdigest() != entry.digest:
        raise LayerError(entry.path, f"changed content since it was planned ({source!r})")
    stream.write(_ZEROS[: -entry.size % _BLOCK])

"""Reading layers safely, and the filesystem a stack of layers makes.

Layers from base images are untrusted input. Each is read once, as a stream (nothing is ever
extracted to the host), and refused if an entry could reach outside the image root or confuse
whoever unpacks it: absolute or ``..`` paths, a path below a symlink, relative symlinks that
climb above the root, hard links out of the root or to nothing, device nodes and other special
files, sparse files, and duplicate paths; or if it holds what extraction could not apply (names
too long for the kernel, owners past 2**32-2, times past ``time_t``, extended attributes the
kernel refuses by size) or what would make reading it costly (an extension header over
:data:`EXTENSION_MAX`, more than :data:`ENTRIES_MAX` entries, more than :data:`XATTRS_MAX` of
extended attributes). What survives is kept as a small index (path, type, mode, owner,
size, link, the extended attributes a layer carries) per diff_id, from which
:class:`Filesystem` answers "what is at this path" for the steps that need it (COPY into
existing directories, ``--chown`` names, ``COPY --from``, which keeps file capabilities).
"""

from __future__ import annotations

import base64
import itertools
import json
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, ClassVar, Final, Literal, NamedTuple, Self, cast

import attrs

from imagedsl.backends.oci.layer import (
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    XATTR_PAX_PREFIX,
    LayerEntry,
    Xattrs,
    pax_xattrs,
)
from imagedsl.errors import InputError
from imagedsl.oci.blobs import VerifyingReader
from imagedsl.oci.layerstream import EXTENSION_CHAIN_MAX, EXTENSION_MAX
from imagedsl.store import StoreArea, atomic_file

if TYPE_CHECKING:
    from pathlib import Path

    from imagedsl.store import Store

FsKind = Literal["file", "dir", "symlink", "hardlink"]
#: 2: entries carry their extended attributes (indexes of version 1 are made again).
INDEX_VERSION: Final = 2
#: Files whose text later steps need (user and group names for --chown, WORKDIR, USER).
KEPT_FILES: Final = frozenset({"etc/passwd", "etc/group"})
_KEPT_MAX: Final = 1 << 20
_MAX_SYMLINK_HOPS: Final = 40

# -- what a base layer may hold (docs/security.md, "Hostile base images") --------------------

# EXTENSION_MAX and EXTENSION_CHAIN_MAX (imagedsl.oci.layerstream): tarfile reads an extension
# header whole, and a chain of them recursively, holding every payload until the member.
#: Bytes of global PAX headers (``g``) in a whole layer: tarfile copies what they say into every
#: later member (real ones are a line: ``git archive`` writes its commit there).
GLOBAL_HEADERS_MAX: Final = 64 << 10
#: Entries one layer may hold. The scan keeps about 200 bytes per entry; the largest common
#: images hold under 200,000 files in all (Debian with Node.js: 34,000).
ENTRIES_MAX: Final = 1_000_000
#: Bytes of carried extended attributes (names and values) all entries of a layer may hold:
#: file capabilities are 20 bytes, on a handful of files. A global header could otherwise give
#: a 64 KiB value to each of a million entries.
XATTRS_MAX: Final = 16 << 20
#: The kernel's bounds: a name component (NAME_MAX), a path with its NUL (PATH_MAX), an
#: extended attribute's name (XATTR_NAME_MAX) and value (XATTR_SIZE_MAX), an owner (uid_t;
#: 2**32-1 is chown's "leave as is").
NAME_MAX: Final = 255
PATH_MAX: Final = 4096
_XATTR_NAME_MAX: Final = 255
_XATTR_SIZE_MAX: Final = 1 << 16
_ID_MAX: Final = 2**32 - 2
#: Times extraction can set: a 64-bit ``time_t``, that of every host RUN steps run on.
#: Refused by the scan rather than clamped at extraction: no tool writes such a time, the scan
#: is where a layer is judged (before COPY --from or a RUN uses it), and a clamped time would
#: make the snapshot differ from the layer without a word.
_TIME_MIN: Final = -(2**63)
_TIME_MAX: Final = 2**63 - 1


@attrs.define
class UnsafeLayerError(InputError):
    """A base image layer holds an entry that could escape or confuse the image root, that
    extraction could not apply, or past the bounds on what reading a layer may cost."""

    layer: str
    path: str
    problem: str

    def __str__(self) -> str:
        path = self.path
        if len(path) > _SHOWN_PATH_MAX:  # a 4 KB name would drown the line
            path = f"{path[:60]}...{path[-40:]}"
        layer = f"layer {self.layer}" if self.layer else "a layer"  # a reader told no name
        return f"refusing {layer}: entry {path!r} {self.problem}"


_SHOWN_PATH_MAX: Final = 120


@attrs.define
class PathResolutionError(InputError):
    """A path inside an image cannot be resolved (a symlink loop, a file used as a directory)."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"/{self.path}: {self.problem}"


class FsEntry(NamedTuple):
    """What a path is in an image (hard links keep their target in ``linkname``).

    A named tuple, not an attrs class: a base's index makes one per file of the image (10,000
    for a Debian base with Python) on every build that reads it, and a tuple is made in a
    third of the time. Construct it with keywords."""

    kind: FsKind
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    linkname: str = ""
    xattrs: Xattrs = ()


#: Entries written to an index's JSON at a time.
_JSON_BATCH: Final = 4096


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogateescape"
    )


def _xattrs_json(xattrs: Xattrs) -> dict[str, str]:
    return {name: base64.b64encode(value).decode() for name, value in xattrs}


def _xattrs_of_json(found: dict[str, str]) -> Xattrs:
    return tuple(sorted((name, base64.b64decode(value)) for name, value in found.items()))


@attrs.frozen(kw_only=True)
class LayerIndex:
    """The entries of one layer, its whiteouts, and the few small files steps read."""

    diff_id: str
    entries: Mapping[str, FsEntry] = attrs.field(eq=False, repr=False)
    whiteouts: tuple[str, ...] = ()
    opaques: tuple[str, ...] = ()
    files: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)

    def to_json(self) -> bytes:
        """The on-disk form (kept per diff_id in the store)."""
        return b"".join(self.json_pieces())

    def json_pieces(self) -> Iterator[bytes]:
        """:meth:`to_json` in pieces, the entries a few thousand at a time: made whole, the
        rows of a million entries took 200 MB at once."""
        head = {"v": INDEX_VERSION, "diff_id": self.diff_id}
        tail = {
            "whiteouts": list(self.whiteouts),
            "opaques": list(self.opaques),
            "files": dict(self.files),
        }
        yield _json(head)[:-1] + b',"entries":['
        items = iter(self.entries.items())
        first = True
        while batch := [
            [path, e.kind, e.mode, e.uid, e.gid, e.size, e.linkname]
            + ([_xattrs_json(e.xattrs)] if e.xattrs else [])
            for path, e in itertools.islice(items, _JSON_BATCH)
        ]:
            yield (b"" if first else b",") + _json(batch)[1:-1]
            first = False
        yield b"]," + _json(tail)[1:]

    @classmethod
    def from_json(cls, data: bytes) -> LayerIndex:
        """Parse the on-disk form; ``ValueError`` if it is not one."""
        payload = json.loads(data.decode("utf-8", "surrogateescape"))
        if not isinstance(payload, dict) or payload.get("v") != INDEX_VERSION:
            raise ValueError("not a layer index")
        entries = {
            row[0]: FsEntry(
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                _xattrs_of_json(row[7]) if len(row) > 7 else (),
            )
            for row in payload["entries"]
        }
        return cls(
            diff_id=payload["diff_id"],
            entries=entries,
            whiteouts=tuple(payload["whiteouts"]),
            opaques=tuple(payload["opaques"]),
            files=dict(payload["files"]),
        )

    @classmethod
    def of_entries(
        cls, diff_id: str, entries: Iterable[LayerEntry], files: Mapping[str, str] | None = None
    ) -> LayerIndex:
        """The index of a layer we wrote ourselves."""
        found: dict[str, FsEntry] = {}
        whiteouts: list[str] = []
        opaques: list[str] = []
        for entry in entries:
            if entry.kind == "whiteout":
                whiteouts.append(entry.path)
            elif entry.kind == "opaque":
                opaques.append(entry.path)
            else:
                found[entry.path] = FsEntry(
                    kind=entry.kind,
                    mode=entry.mode,
                    uid=entry.uid,
                    gid=entry.gid,
                    size=entry.size,
                    linkname=entry.linkname,
                    xattrs=entry.xattrs,
                )
        return cls(
            diff_id=diff_id,
            entries=found,
            whiteouts=tuple(whiteouts),
            opaques=tuple(opaques),
            files=dict(files or {}),
        )


def index_path(store: Store, diff_id: str) -> Path:
    """Where the index of a layer is kept in the store."""
    hexdigest = diff_id.partition(":")[2]
    return store.area(StoreArea.OCI_INDEX) / hexdigest[:2] / f"{hexdigest}.json"


def load_index(store: Store, diff_id: str) -> LayerIndex | None:
    """A kept layer index, or None (also when damaged: it is then made again)."""
    try:
        index = LayerIndex.from_json(index_path(store, diff_id).read_bytes())
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return index if index.diff_id == diff_id else None


def save_index(store: Store, index: LayerIndex) -> None:
    """Keep a layer index (atomically)."""
    with atomic_file(index_path(store, index.diff_id)) as handle:
        for piece in index.json_pieces():
            handle.write(piece)


# -- decompression -------------------------------------------------------------------------


def drain(reader: IO[bytes] | VerifyingReader) -> None:
    """Read a stream to its end (so digests are checked on all of it)."""
    while reader.read(1 << 20):
        pass


# -- reading layer tars, never trusting a header ---------------------------------------------

#: Reads that find the layer ended which a well-formed tar can need (the end-of-archive check).
_EMPTY_READS: Final = 3


class _LayerEnded(Exception):
    """The layer's bytes ran out while tarfile still wanted some."""


class _Guarded:
    """What stream-mode ``tarfile`` reads a layer through: once the layer has ended, reading
    on is an error.

    To pass over a member it was not asked to read, ``tarfile`` reads and drops as many blocks
    as the member's header claims, and does not stop where the data ends: a header claiming
    64 GiB over 1 KB of data kept it reading empty blocks for half a minute, a PAX size of
    10**18 forever. Here it stops as soon as the bytes do.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._empty = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if not data and n != 0:
            self._empty += 1
            if self._empty > _EMPTY_READS:
                raise _LayerEnded
        return data


_EXTENSION_TYPES: Final = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
     tarfile.GNUTYPE_LONGLINK}
)  # fmt: skip
_SPARSE_PAX_PREFIX: Final = "GNU.sparse."


class _HeaderBudget:
    """What the headers of one layer have used of the bounds so far."""

    __slots__ = ("chain", "global_bytes", "layer")

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.chain = 0
        self.global_bytes = 0


class _BoundedInfo(tarfile.TarInfo):
    """``tarfile``'s header parsing, each header checked before ``tarfile`` reads what it
    announces: an extension header's payload (read whole, whatever size it claims: 200 MiB of
    one repeated byte, 204 KB of gzip, cost 865 MB), a GNU sparse map (read block by block,
    kept whole). Sparse members are refused: extraction would write every byte of their holes,
    and images never hold them."""

    budget: ClassVar[_HeaderBudget]

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        budget = cls.budget
        if info.type not in _EXTENSION_TYPES:
            budget.chain = 0
            if info.type == tarfile.GNUTYPE_SPARSE:
                raise UnsafeLayerError(budget.layer, info.name, "is a sparse file")
            return info
        if info.size > EXTENSION_MAX:
            raise UnsafeLayerError(
                budget.layer,
                info.name,
                f"is an extension header of {info.size} bytes, more than the"
                f" {EXTENSION_MAX} a layer may use",
            )
        budget.chain += 1
        if budget.chain > EXTENSION_CHAIN_MAX:
            raise UnsafeLayerError(
                budget.layer,
                info.name,
                f"is one of more than {EXTENSION_CHAIN_MAX} extension headers in a row",
            )
        if info.type == tarfile.XGLTYPE:
            budget.global_bytes += info.size
            if budget.global_bytes > GLOBAL_HEADERS_MAX:
                raise UnsafeLayerError(
                    budget.layer,
                    info.name,
                    f"brings the layer's global headers past the {GLOBAL_HEADERS_MAX} bytes"
                    " a layer may use",
                )
        return info

    def _proc_gnusparse_10(
        self, member: tarfile.TarInfo, pax_headers: Mapping[str, str], archive: object
    ) -> None:
        """PAX sparse 1.0 keeps its map at the start of the member's data, as many numbers as
        the header says: refused before it is read (``tarfile``'s own method, overridden)."""
        del archive
        name = pax_headers.get("GNU.sparse.name") or pax_headers.get("path") or member.name
        raise UnsafeLayerError(self.budget.layer, name, "is a sparse file")


def _bounded_info(layer: str) -> type[tarfile.TarInfo]:
    """A :class:`_BoundedInfo` keeping the budget of one layer's headers."""
    return type("_LayerInfo", (_BoundedInfo,), {"budget": _HeaderBudget(layer)})


class _Forgetful(list[tarfile.TarInfo]):
    """Stream-mode ``tarfile`` keeps every member it read (440 bytes each: 440 MB for a
    million empty files); nothing here looks back, so it keeps none."""

    def append(self, member: tarfile.TarInfo) -> None:
        del member


class LayerTar:
    """The members of a layer tar, read as a stream; a member whose header claims more bytes
    than the rest of the layer holds is refused as soon as the layer ends
    (:class:`UnsafeLayerError`), and so are a whiteout of ``""``, ``.`` or ``..``, an extension
    header past the bounds (:data:`EXTENSION_MAX`), and a sparse member."""

    def __init__(self, stream: IO[bytes], layer: str) -> None:
        self.layer = layer
        guarded = cast("IO[bytes]", _Guarded(stream))
        self.archive = tarfile.open(  # noqa: SIM115 - closed by close()
            fileobj=guarded, mode="r|", tarinfo=_bounded_info(layer)
        )
        self.archive.members = _Forgetful()  # type: ignore[attr-defined]
        self._last: tarfile.TarInfo | None = None

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        while True:
            try:
                member = self.archive.next()
            except _LayerEnded:
                raise self._overrun() from None
            if member is None:
                return
            if member.sparse is not None or any(
                key.startswith(_SPARSE_PAX_PREFIX) for key in member.pax_headers
            ):
                raise UnsafeLayerError(self.layer, member.name, "is a sparse file")
            self._last = member
            yield member

    def extractfile(self, member: tarfile.TarInfo) -> _MemberReader:
        """The content of a regular file member (read it before the next member)."""
        handle = self.archive.extractfile(member)
        assert handle is not None
        return _MemberReader(handle, self.layer, member)

    def _overrun(self) -> UnsafeLayerError:
        last = self._last
        if last is None:
            return UnsafeLayerError(self.layer, "", "ends inside its first header")
        return UnsafeLayerError(
            self.layer,
            last.name,
            f"claims {last.size} bytes, more than the rest of the layer holds",
        )

    def close(self) -> None:
        """Done with the archive (the stream stays open)."""
        self.archive.close()

    def __enter__(self) -> LayerTar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _MemberReader:
    """A member's content; data that ends before the member's size is an unsafe layer."""

    def __init__(self, handle: IO[bytes], layer: str, member: tarfile.TarInfo) -> None:
        self._handle = handle
        self._layer = layer
        self._member = member

    def read(self, n: int = -1) -> bytes:
        try:
            return self._handle.read(n)
        except (tarfile.ReadError, _LayerEnded):
            raise UnsafeLayerError(
                self._layer,
                self._member.name,
                f"claims {self._member.size} bytes, more than the rest of the layer holds",
            ) from None


def whiteout_target(layer: str, raw: str, base: str) -> str:
    """The name a whiteout entry ``base`` (``.wh.NAME``) deletes; refuses ``""``, ``.``, ``..``
    (they would delete the directory itself or its parent)."""
    target = base[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", ".."):
        raise UnsafeLayerError(layer, raw, f"is a whiteout of {target!r}, which names no entry")
    return target


# -- scanning untrusted layers ---------------------------------------------------------------


def _clean_member_name(layer: str, raw: str) -> str:
    name = raw
    if name.startswith("/"):
        raise UnsafeLayerError(layer, raw, "has an absolute path")
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayerError(layer, raw, "climbs out of the root with '..'")
    if "\x00" in name:
        raise UnsafeLayerError(layer, raw, "has a NUL in its name")
    return "/".join(parts)


class _LayerView:
    """The filesystem below plus this layer's entries so far (for checks while scanning)."""

    def __init__(self, lower: Filesystem | None) -> None:
        self.lower = lower
        self.entries: dict[str, FsEntry] = {}
        self.deleted: set[str] = set()
        self.opaque: set[str] = set()

    def get(self, path: str) -> FsEntry | None:
        found = self.entries.get(path)
        if found is not None or self.lower is None:
            return found
        if path in self.deleted or any(
            path == d or path.startswith(d + "/") for d in self.opaque if d != path
        ):
            return None
        head = path
        while head:
            if head in self.deleted:
                return None
            head = posixpath.dirname(head)
        return self.lower.get(path)


def scan_layer(
    stream: IO[bytes], *, layer: str, diff_id: str, lower: Filesystem | None
) -> LayerIndex:
    """Read an untrusted layer tar; refuse it if unsafe (see the module docstring)."""
    view = _LayerView(lower)
    # Whiteout and opaque names, to refuse them twice; other names are the keys of view.entries.
    markers: set[str] = set()
    whiteouts: list[str] = []
    opaques: list[str] = []
    files: dict[str, str] = {}
    xattr_bytes = 0
    try:
        archive = LayerTar(stream, layer)
    except tarfile.TarError as error:
        raise UnsafeLayerError(layer, "", f"is not a tar archive: {error}") from None
    except _LayerEnded:
        raise UnsafeLayerError(layer, "", "is not a tar archive: it ends at once") from None
    with archive:
        try:
            for count, member in enumerate(archive, 1):
                if count > ENTRIES_MAX:
                    raise UnsafeLayerError(
                        layer, member.name, f"is past the {ENTRIES_MAX:,} entries a layer may hold"
                    )
                name = _clean_member_name(layer, member.name)
                if not name:
                    if not member.isdir():
                        raise UnsafeLayerError(layer, member.name, "replaces the root")
                    continue
                if name in view.entries or name in markers:
                    raise UnsafeLayerError(layer, member.name, "appears twice in the layer")
                check_extractable(layer, member, name)
                _check_parents(layer, member.name, name, view)
                head, base = posixpath.split(name)
                if base.startswith(WHITEOUT_PREFIX):
                    markers.add(name)
                    if base == OPAQUE_MARKER:
                        opaques.append(head)
                        view.opaque.add(head)
                    else:
                        target = posixpath.join(head, whiteout_target(layer, member.name, base))
                        whiteouts.append(target)
                        view.deleted.add(target)
                    continue
                entry = _entry_of(layer, member, name, view)
                if entry.xattrs:
                    xattr_bytes += sum(len(key) + len(value) for key, value in entry.xattrs)
                    if xattr_bytes > XATTRS_MAX:
                        raise UnsafeLayerError(
                            layer,
                            member.name,
                            f"brings the layer's extended attributes past the {XATTRS_MAX}"
                            " bytes a layer may hold",
                        )
                view.entries[name] = entry
                if name in KEPT_FILES and member.isreg() and member.size <= _KEPT_MAX:
                    handle = archive.extractfile(member)
                    files[name] = handle.read().decode("utf-8", "replace")
        except tarfile.TarError as error:
            raise UnsafeLayerError(layer, "", f"is a damaged tar archive: {error}") from None
    return LayerIndex(
        diff_id=diff_id,
        entries=view.entries,
        whiteouts=tuple(whiteouts),
        opaques=tuple(opaques),
        files=files,
    )


def check_extractable(layer: str, member: tarfile.TarInfo, name: str) -> None:
    """Refuse a member (``name``: its cleaned path) extraction could not apply, rather than
    fail there: a name component over NAME_MAX bytes, a path (``/`` and ``name``) or link
    target that does not fit in PATH_MAX with its NUL, an owner outside 0..2**32-2, an mtime
    outside ``time_t``. Called by the scan and again by extraction, which checks on its own."""
    raw = member.name
    if len(name) > NAME_MAX // 4 or not name.isascii():  # else short enough as it is
        encoded = name.encode("utf-8", "surrogateescape")
        if len(encoded) + 2 > PATH_MAX:
            raise UnsafeLayerError(
                layer,
                raw,
                f"has a path of {len(encoded) + 1} bytes, more than the kernel's {PATH_MAX - 1}",
            )
        longest = max(encoded.split(b"/"), key=len)
        if len(longest) > NAME_MAX:
            raise UnsafeLayerError(
                layer, raw, f"has a name of {len(longest)} bytes, more than the kernel's {NAME_MAX}"
            )
    target = member.linkname
    if len(target) >= PATH_MAX // 4 and len(target.encode("utf-8", "surrogateescape")) >= PATH_MAX:
        raise UnsafeLayerError(
            layer, raw, f"links to a target longer than the kernel's {PATH_MAX - 1} bytes"
        )
    uid, gid = member.uid, member.gid
    if not (0 <= uid <= _ID_MAX and 0 <= gid <= _ID_MAX):
        raise UnsafeLayerError(
            layer, raw, f"has owner {uid}:{gid}, past the ids a file can have (0 to {_ID_MAX})"
        )
    if not _TIME_MIN <= member.mtime <= _TIME_MAX:  # NaN too
        raise UnsafeLayerError(
            layer, raw, f"has mtime {member.mtime}, past the times a file can have"
        )


def _check_parents(layer: str, raw: str, name: str, view: _LayerView) -> None:
    head = posixpath.dirname(name)
    while head:
        found = view.get(head)
        if found is not None and found.kind != "dir":
            what = "a symlink" if found.kind == "symlink" else "not a directory"
            raise UnsafeLayerError(layer, raw, f"lies below /{head}, which is {what}")
        head = posixpath.dirname(head)


def _entry_of(layer: str, member: tarfile.TarInfo, name: str, view: _LayerView) -> FsEntry:
    mode, uid, gid = _MODES[member.mode & 0o7777], member.uid, member.gid
    owner: dict[str, Any] = {"mode": mode, "uid": uid, "gid": gid}
    xattrs = _xattrs_of(layer, member) if member.pax_headers else ()
    if member.isdir():
        return FsEntry(kind="dir", xattrs=xattrs, **owner)
    if member.isreg():
        return FsEntry(kind="file", size=member.size, xattrs=xattrs, **owner)
    if member.issym():
        target = member.linkname
        if not target or "\x00" in target:
            raise UnsafeLayerError(layer, member.name, "is a symlink without a target")
        if not target.startswith("/"):
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeLayerError(
                    layer, member.name, f"is a symlink to {target!r}, outside the root"
                )
        return FsEntry(kind="symlink", linkname=target, **owner)
    if member.islnk():
        if member.linkname.startswith("/"):
            raise UnsafeLayerError(
                layer, member.name, f"is a hard link to {member.linkname!r}, outside the root"
            )
        try:
            target = _clean_member_name(layer, member.linkname)
        except UnsafeLayerError:
            raise UnsafeLayerError(
                layer, member.name, f"is a hard link to {member.linkname!r}, outside the root"
            ) from None
        linked = view.get(target)
        if linked is None or linked.kind not in ("file", "hardlink"):
            raise UnsafeLayerError(
                layer, member.name, f"is a hard link to {member.linkname!r}, which is no file"
            )
        if linked.kind == "hardlink":
            target = linked.linkname
        return FsEntry(kind="hardlink", linkname=target, **owner)
    if member.ischr() or member.isblk():
        raise UnsafeLayerError(layer, member.name, "is a device node")
    raise UnsafeLayerError(layer, member.name, "is a special file (FIFO or unknown type)")


def _xattrs_of(layer: str, member: tarfile.TarInfo) -> Xattrs:
    """The carried extended attributes of a member; one whose name or value is past the
    kernel's bounds (which would refuse it with ERANGE or E2BIG) is refused."""
    xattrs = pax_xattrs(member.pax_headers)
    for key, value in xattrs:
        if len(key.encode("utf-8", "surrogateescape")) > _XATTR_NAME_MAX:
            raise UnsafeLayerError(
                layer,
                member.name,
                f"has an extended attribute whose name is longer than the kernel's {_XATTR_NAME_MAX} bytes",
            )
        if len(value) > _XATTR_SIZE_MAX:
            raise UnsafeLayerError(
                layer,
                member.name,
                f"has extended attribute {XATTR_PAX_PREFIX}{key} of {len(value)} bytes, more"
                f" than the kernel's {_XATTR_SIZE_MAX}",
            )
    return xattrs


#: One int object per mode, shared by every entry (an int past 256 is 32 bytes each).
_MODES: Final = tuple(range(0o10000))


# -- the filesystem of a stack of layers -----------------------------------------------------


class Filesystem:
    """Paths of an image, as its layers leave them (relative, without a leading slash)."""

    def __init__(self) -> None:
        self.entries: dict[str, FsEntry] = {}
        #: Which layer (position in the stack) each path's entry comes from.
        self.origin: dict[str, int] = {}
        self.files: dict[str, str] = {}
        self.layers: list[LayerIndex] = []

    def get(self, path: str) -> FsEntry | None:
        """The entry at ``path`` (symlinks not followed), or None."""
        return self.entries.get(path)

    def apply(self, index: LayerIndex) -> None:
        """Put a layer on top."""
        position = len(self.layers)
        self.layers.append(index)
        doomed = [*index.whiteouts]
        if index.opaques:
            prefixes = tuple(o + "/" if o else "" for o in index.opaques)
            doomed.extend(p for p in self.entries if p.startswith(prefixes))
        for path in index.whiteouts:
            prefix = path + "/"
            doomed.extend(p for p in self.entries if p.startswith(prefix))
        for path in doomed:
            self.entries.pop(path, None)
            self.origin.pop(path, None)
            self.files.pop(path, None)
        for path, entry in index.entries.items():
            old = self.entries.get(path)
            if old is not None and old.kind == "dir" and entry.kind != "dir":
                prefix = path + "/"
                for below in [p for p in self.entries if p.startswith(prefix)]:
                    del self.entries[below]
                    self.origin.pop(below, None)
            self.entries[path] = entry
            self.origin[path] = position
        for path in index.entries:
            if path in self.files and path not in index.files:
                del self.files[path]
        self.files.update(index.files)

    def resolve(self, path: str, *, follow_last: bool = True) -> str:
        """Follow symlinks in ``path`` as the kernel would inside the root (``..`` stops at /)."""
        pending = [p for p in path.split("/") if p not in ("", ".")]
        pending.reverse()
        done: list[str] = []
        hops = 0
        while pending:
            part = pending.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join([*done, part])
            entry = self.entries.get(candidate)
            if entry is not None and entry.kind == "symlink" and (pending or follow_last):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise PathResolutionError(path, "has too many levels of symbolic links")
                target = entry.linkname
                if target.startswith("/"):
                    done = []
                pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if pending and entry is not None and entry.kind != "dir":
                raise PathResolutionError(candidate, "is not a directory")
            done.append(part)
        return "/".join(done)

    def below(self, path: str) -> Iterator[tuple[str, FsEntry]]:
        """Every entry strictly below directory ``path`` ("" is the root), as (path, entry)."""
        prefix = path + "/" if path else ""
        for candidate, entry in self.entries.items():
            if candidate.startswith(prefix) and candidate != path:
                yield candidate, entry

    def chain_id(self) -> str:
        """An identity of the stack: the diff_ids in order."""
        return "|".join(index.diff_id for index in self.layers)


def lookup_id(files: Mapping[str, str], table: str, name: str) -> int | None:
    """The id of user or group ``name`` in ``etc/passwd`` or ``etc/group`` text, or None."""
    text = files.get(table)
    if text is None:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return None


def read_members(stream: IO[bytes], wanted: Mapping[str, Path], layer: str) -> set[str]:
    """Copy the regular files named in ``wanted`` out of a layer tar into host files.

    The destinations are files the caller named (never paths from the tar), so nothing in
    the layer can choose where bytes land. Returns the names that were found.
    """
    found: set[str] = set()
    with LayerTar(stream, layer) as archive:
        for member in archive:
            name = _clean_member_name(layer, member.name)
            dest = wanted.get(name)
            if dest is None or not member.isreg():
                continue
            handle = archive.extractfile(member)
            with dest.open("wb") as out:
                while True:
                    data = handle.read(1 << 20)
                    if not data:
                        break
                    out.write(data)
            found.add(name)
    return found


def json_ready(value: Any) -> Any:
    """Mappings to plain dicts (for json.dumps of descriptors)."""
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    return value

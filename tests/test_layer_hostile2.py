"""Layer tars that cost more to read than they weigh, or hold what extraction cannot apply:
extension headers read whole into memory, sparse files, a million entries, names, owners,
times and extended attributes past the kernel's bounds. Each is refused with the layer and
the entry named (``UnsafeLayerError``, exit 2), by the scan, by extraction for a RUN, and by
``imagedsl inspect``'s readers, and reading one stays within a bounded memory."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from imagedsl.backends.oci.filesystem import (
    ENTRIES_MAX,
    GLOBAL_HEADERS_MAX,
    XATTRS_MAX,
    UnsafeLayerError,
    scan_layer,
)
from imagedsl.backends.oci.run.rootfs import extract_layer
from imagedsl.cli import _os_error
from imagedsl.inspect import _tar as inspect_tar
from imagedsl.oci.layerstream import EXTENSION_CHAIN_MAX, EXTENSION_MAX
from tests.support import REPO_ROOT
from tests.support import oci as oci_support
from tests.support.cli import imagedsl
from tests.support.hostile import HostileServer, gzip_image, registry_handler, run_measured
from tests.support.oci import member, tar_bytes
from tests.support.skips import require_root

LAYER = "sha256:test"
MIB = 1 << 20


# -- making hostile tars -------------------------------------------------------------------------


def header(name: str, kind: bytes, size: int) -> bytes:
    """One 512-byte header block of any type claiming ``size`` bytes."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def padded(data: bytes) -> bytes:
    """``data`` padded to whole blocks."""
    return data + b"\0" * (-len(data) % 512)


def pax_record(key: str, value: bytes) -> bytes:
    """One PAX record, ``LENGTH KEY=VALUE\\n``, its length counting itself."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def extension(kind: bytes, payload: bytes, name: str = "PaxHeaders/big") -> bytes:
    """An extension header (PAX ``x``/``g``, GNU ``L``/``K``) and its payload."""
    return header(name, kind, len(payload)) + padded(payload)


def members_only(tar: bytes) -> bytes:
    """A tar without its end-of-archive blocks (to put more after it); its last byte of data
    must not be NUL."""
    return padded(tar.rstrip(b"\0"))


def with_pax(name: str, records: dict[str, str], data: bytes = b"x") -> bytes:
    """A regular file whose PAX header holds ``records`` (tarfile writes them)."""
    info, _ = member(name, data=data)
    info.pax_headers = records
    return tar_bytes([(info, data)])


def scan(layer: bytes | io.BytesIO) -> None:
    """Scan a layer with nothing below it."""
    stream = io.BytesIO(layer) if isinstance(layer, bytes) else layer
    scan_layer(stream, layer=LAYER, diff_id=LAYER, lower=None)


def extract(layer: bytes, dest: Path) -> None:
    """Extract a layer into a fresh directory ``dest``."""
    dest.mkdir()
    extract_layer(io.BytesIO(layer), dest, layer=LAYER)


class CountingReader(io.BytesIO):
    """Bytes that count how many of them were read."""

    taken = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.taken += len(data)
        return data


FILE = tar_bytes([member("etc/f", data=b"x")])
BIG = 2 * MIB

EXTENSIONS = [
    pytest.param(tarfile.XHDTYPE, pax_record("comment", b"C" * BIG), id="pax"),
    pytest.param(tarfile.XGLTYPE, pax_record("comment", b"C" * BIG), id="pax-global"),
    pytest.param(tarfile.GNUTYPE_LONGNAME, b"n/" * (BIG // 2) + b"\0", id="gnu-long-name"),
    pytest.param(tarfile.GNUTYPE_LONGLINK, b"l/" * (BIG // 2) + b"\0", id="gnu-long-link"),
]


# -- F1: extension headers are bounded before they are read ----------------------------------------


@pytest.mark.parametrize(("kind", "payload"), EXTENSIONS)
def test_an_extension_header_over_the_bound_is_refused_before_it_is_read(
    kind: bytes, payload: bytes
) -> None:
    """The scan refuses a 2 MiB extension header having read well under 1 MiB of the layer
    (tarfile read such a payload whole: 200 MiB cost 865 MB)."""
    stream = CountingReader(extension(kind, payload) + FILE)
    with pytest.raises(UnsafeLayerError) as caught:
        scan(stream)
    assert caught.value.layer == LAYER
    assert caught.value.path == "PaxHeaders/big"
    assert f"extension header of {len(payload)} bytes" in caught.value.problem
    assert stream.taken < EXTENSION_MAX


@pytest.mark.parametrize(("kind", "payload"), EXTENSIONS[:1] + EXTENSIONS[2:3])
def test_extraction_refuses_an_extension_header_over_the_bound(
    kind: bytes, payload: bytes, tmp_path: Path
) -> None:
    """Extraction for a RUN reads layers through the same bounded reader."""
    with pytest.raises(UnsafeLayerError) as caught:
        extract(extension(kind, payload) + FILE, tmp_path / "fs")
    assert caught.value.path == "PaxHeaders/big"
    assert "extension header" in caught.value.problem
    assert list((tmp_path / "fs").iterdir()) == []


def test_a_chain_of_extension_headers_is_refused() -> None:
    """Headers in a row add up until their member (tarfile reads the chain recursively)."""
    chain = b"".join(
        extension(tarfile.XHDTYPE, pax_record(f"k{i}", b"v" * 1000), name=f"PaxHeaders/{i}")
        for i in range(EXTENSION_CHAIN_MAX + 1)
    )
    with pytest.raises(UnsafeLayerError) as caught:
        scan(chain + FILE)
    assert caught.value.path == f"PaxHeaders/{EXTENSION_CHAIN_MAX}"
    assert "extension headers in a row" in caught.value.problem


def test_global_headers_past_their_bound_are_refused_and_real_headers_read() -> None:
    """Global headers are copied into every later member: together they are bounded. What
    tools write is still read: ``git archive``'s global comment, a PAX path of 3,000 bytes, a
    GNU long name and long link."""
    deep = "/".join(["d" * 99] * 30) + "/f"
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("x" * 200)
        info.type = tarfile.SYMTYPE
        info.linkname = "/" + "y" * 300
        archive.addfile(info)
    real = (
        extension(tarfile.XGLTYPE, pax_record("comment", b"0" * 40), name="pax_global_header")
        + members_only(tar_bytes([member(deep, data=b"deep")]))
        + members_only(gnu.getvalue())
    )
    record = pax_record("comment", b"g" * (GLOBAL_HEADERS_MAX // 2 + 1000))
    layer = (
        real
        + extension(tarfile.XGLTYPE, record, name="g1")
        + members_only(tar_bytes([member("a", data=b"x")]))
        + extension(tarfile.XGLTYPE, record, name="g2")
        + FILE
    )
    index = scan_layer(io.BytesIO(real + b"\0" * 1024), layer=LAYER, diff_id=LAYER, lower=None)
    assert deep in index.entries
    assert index.entries["x" * 200].linkname == "/" + "y" * 300
    with pytest.raises(UnsafeLayerError) as caught:
        scan(layer)
    assert caught.value.path == "g2"
    assert "global headers" in caught.value.problem


def _chunks(data: bytes, taken: list[int]) -> Iterator[bytes]:
    for start in range(0, len(data), 65536):
        taken.append(start)
        yield data[start : start + 65536]


def _inspect_read(reader: str, data: bytes, taken: list[int], tmp_path: Path) -> None:
    """Read the tar ``data`` with one of inspect's readers (``taken``: the chunks handed)."""
    if reader == "list_chunks":
        inspect_tar.list_chunks(
            _chunks(data, taken), data_limit=MIB, unread=frozenset(), layer=LAYER
        )
    elif reader == "TarReader":
        entries = inspect_tar.TarReader.of_chunks(_chunks(data, taken), layer=LAYER)
        list(entries.entries(lambda _path, _size: True, data_limit=MIB))
    else:
        (tmp_path / "layer.tar").write_bytes(data)
        with (tmp_path / "layer.tar").open("rb") as handle:
            inspect_tar.list_at(
                handle.fileno(), 0, len(data), data_limit=MIB, unread=frozenset(), layer=LAYER
            )


@pytest.mark.parametrize(("kind", "payload"), EXTENSIONS)
@pytest.mark.parametrize("reader", ["list_chunks", "list_at", "TarReader"])
def test_inspect_readers_refuse_an_extension_header_over_the_bound(
    reader: str, kind: bytes, payload: bytes, tmp_path: Path
) -> None:
    """``imagedsl inspect``'s three readers refuse it too, before reading it."""
    data = extension(kind, payload) + FILE
    taken: list[int] = []
    with pytest.raises(UnsafeLayerError) as caught:
        _inspect_read(reader, data, taken, tmp_path)
    assert caught.value.layer == LAYER
    assert caught.value.path == "PaxHeaders/big"
    # inspect keeps its own copy of the bound (it does not load the backends): the scan's
    assert caught.value.problem == (
        f"is an extension header of {len(payload)} bytes, more than the {EXTENSION_MAX} a"
        " layer may use"
    )
    assert len(taken) * 65536 < EXTENSION_MAX


@pytest.mark.parametrize("reader", ["list_chunks", "list_at", "TarReader"])
def test_inspect_readers_refuse_a_chain_of_extension_headers(reader: str, tmp_path: Path) -> None:
    """The records of a chain add up in the readers' pending records: bounded as the scan."""
    data = (
        b"".join(
            extension(tarfile.XHDTYPE, pax_record(f"k{i}", b"v" * 100), name=f"PaxHeaders/{i}")
            for i in range(EXTENSION_CHAIN_MAX + 1)
        )
        + FILE
    )
    with pytest.raises(UnsafeLayerError) as caught:
        _inspect_read(reader, data, [], tmp_path)
    assert caught.value.path == f"PaxHeaders/{EXTENSION_CHAIN_MAX}"


def _gzip(pieces: Iterable[bytes]) -> tuple[bytes, str]:
    """The gzip of the pieces, and the sha256 of what was compressed (its diff_id), without
    holding the uncompressed bytes."""
    compress = zlib.compressobj(6, zlib.DEFLATED, 31)
    digest = hashlib.sha256()
    out = []
    for piece in pieces:
        digest.update(piece)
        out.append(compress.compress(piece))
    out.append(compress.flush())
    return b"".join(out), "sha256:" + digest.hexdigest()


def _huge_pax_layer(size: int) -> Iterator[bytes]:
    """A layer whose one file has a PAX comment of ``size`` bytes of one repeated byte."""
    prefix = b" comment="
    length = size + len(prefix) + 1
    length += len(str(length + len(str(length))))
    record_head = str(length).encode() + prefix
    yield header("PaxHeaders/pf", tarfile.XHDTYPE, length)
    yield record_head
    left = length - len(record_head) - 1
    while left:
        piece = min(left, MIB)
        yield b"C" * piece
        left -= piece
    yield b"\n" + b"\0" * (-length % 512)
    yield tar_bytes([member("pf", data=b"x")])


_READ_FROM_REGISTRY = """
import imagedsl as dsl
from tests.support import oci as oci_support
from imagedsl.backends.oci.filesystem import UnsafeLayerError
from imagedsl.inspect import inspect_image
from imagedsl.store import Store
try:
    if {inspect!r}:
        inspect_image({reference!r}, store=Store({store!r}))
    else:
        oci_support.build({{"a": dsl.image({reference!r}).cmd("x")}}, Store({store!r}))
except UnsafeLayerError as error:
    _report(error=type(error).__name__, layer=error.layer, path=error.path, problem=error.problem)
else:
    _report(error=None)
"""


@pytest.mark.parametrize(
    "inspect", [pytest.param(False, id="build"), pytest.param(True, id="inspect")]
)
def test_a_huge_pax_record_from_a_registry_is_refused_with_bounded_memory(
    inspect: bool, tmp_path: Path
) -> None:
    """128 MiB of PAX comment (130 KB of gzip) in a base served by a registry written here:
    the build and ``inspect`` refuse it and stay far below 200 MB (before: about 600 MB)."""
    busybox = _gzip([tar_bytes(oci_support.busybox_members())])
    hostile = _gzip(_huge_pax_layer(128 * MIB))
    documents, blobs = gzip_image([busybox, hostile])
    with HostileServer(registry_handler(documents, blobs)) as server:
        code = _READ_FROM_REGISTRY.format(
            inspect=inspect, reference=f"{server.host}/hostile:1", store=str(tmp_path / "s")
        )
        found = run_measured(code)
    assert found["error"] == "UnsafeLayerError"
    assert found["path"] == "PaxHeaders/pf"
    assert "extension header of" in found["problem"]
    assert found["layer"] == "sha256:" + hashlib.sha256(hostile[0]).hexdigest()
    assert found["peak_rss_kib"] < 200 * 1024


# -- F2: sparse members ----------------------------------------------------------------------------


def _gnu_sparse() -> bytes:
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 5
    return info.tobuf(format=tarfile.GNU_FORMAT) + padded(b"hello") + b"\0" * 1024


def _pax_sparse_10() -> bytes:
    info = tarfile.TarInfo("GNUSparseFile.0/sparse")
    data = padded(b"1\n999995\n5\n") + b"hello"
    info.size = len(data)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "sparse",
        "GNU.sparse.realsize": "1000000",
    }
    return tar_bytes([(info, data)])


SPARSE = [
    pytest.param(_gnu_sparse(), id="gnu-S"),
    pytest.param(
        with_pax(
            "sparse",
            {"GNU.sparse.map": f"{64 * MIB - 5},5", "GNU.sparse.size": str(64 * MIB)},
            b"hello",
        ),
        id="pax-0.1",
    ),
    pytest.param(
        with_pax(
            "sparse",
            {
                "GNU.sparse.size": str(64 * MIB),
                "GNU.sparse.numblocks": "1",
                "GNU.sparse.offset": str(64 * MIB - 5),
                "GNU.sparse.numbytes": "5",
            },
            b"hello",
        ),
        id="pax-0.0",
    ),
    pytest.param(_pax_sparse_10(), id="pax-1.0"),
    pytest.param(
        with_pax("sparse", {"GNU.sparse.realsize": str(64 * MIB)}, b"hello"), id="pax-realsize"
    ),
]


@pytest.mark.parametrize("layer", SPARSE)
def test_sparse_members_are_refused_by_the_scan(layer: bytes) -> None:
    """Images never hold sparse files; a sparse member named in any of its forms is refused."""
    with pytest.raises(UnsafeLayerError) as caught:
        scan(layer)
    assert caught.value.path == "sparse"
    assert caught.value.problem == "is a sparse file"


@pytest.mark.parametrize("layer", SPARSE)
def test_sparse_members_are_refused_by_extraction_which_writes_nothing(
    layer: bytes, tmp_path: Path
) -> None:
    """Extraction wrote every byte of a sparse file's holes (200 bytes of layer wrote 2 GiB):
    it refuses the member before writing it."""
    with pytest.raises(UnsafeLayerError) as caught:
        extract(layer, tmp_path / "fs")
    assert caught.value.problem == "is a sparse file"
    assert list((tmp_path / "fs").iterdir()) == []


# -- F7: values extraction cannot apply ------------------------------------------------------------


def _owned(uid: int, gid: int) -> bytes:
    info, data = member("etc/f", data=b"x")
    info.uid, info.gid = uid, gid
    return tar_bytes([(info, data)])


OWNERS = [
    pytest.param(2**40, 0, id="uid-2**40"),
    pytest.param(0, 2**48 - 1, id="gid-2**48-1"),
    pytest.param(2**32 - 1, 0, id="uid-minus-one-as-unsigned"),
    pytest.param(-1, 0, id="negative-uid"),
]


@pytest.mark.parametrize(("uid", "gid"), OWNERS)
def test_owners_past_uid_t_are_refused(uid: int, gid: int, tmp_path: Path) -> None:
    """An owner a file cannot have is refused by the scan and by extraction (it was an
    OverflowError traceback from ``os.chown``)."""
    with pytest.raises(UnsafeLayerError) as scanned:
        scan(_owned(uid, gid))
    with pytest.raises(UnsafeLayerError) as extracted:
        extract(_owned(uid, gid), tmp_path / "fs")
    for caught in (scanned, extracted):
        assert caught.value.path == "etc/f"
        assert f"has owner {uid}:{gid}" in caught.value.problem


MTIMES = [
    pytest.param("-99999999999999999999.5", id="far-past"),
    pytest.param(str(2**63), id="2**63"),
    pytest.param("nan", id="nan"),
    pytest.param("inf", id="inf"),
]


@pytest.mark.parametrize("mtime", MTIMES)
def test_mtimes_past_time_t_are_refused(mtime: str, tmp_path: Path) -> None:
    """An mtime ``os.utime`` cannot set is refused by the scan and by extraction (it was an
    OverflowError traceback)."""
    layer = with_pax("etc/f", {"mtime": mtime})
    with pytest.raises(UnsafeLayerError) as scanned:
        scan(layer)
    with pytest.raises(UnsafeLayerError) as extracted:
        extract(layer, tmp_path / "fs")
    for caught in (scanned, extracted):
        assert caught.value.path == "etc/f"
        assert "has mtime" in caught.value.problem


def test_an_xattr_the_kernel_refuses_is_the_layers_fault(tmp_path: Path) -> None:
    """A malformed ``security.capability`` passes the scan (its format is the kernel's to
    judge) and extraction names the entry (it was an OSError on an fd, then a TypeError in
    the CLI's handler). What is within the kernel's bounds is extracted as it is: the
    largest owner, a time before 1970, a ``user.*`` attribute."""
    require_root("extraction sets owners and security.capability")
    info, data = member("etc/f", data=b"x")
    info.uid = info.gid = 2**32 - 2
    info.pax_headers = {"mtime": "-86400", "SCHILY.xattr.user.note": "kept"}
    good = tar_bytes([(info, data)])
    scan(good)
    extract(good, tmp_path / "good")
    found = (tmp_path / "good" / "etc" / "f").stat()
    assert (found.st_uid, found.st_gid, found.st_mtime) == (2**32 - 2, 2**32 - 2, -86400)
    assert os.getxattr(tmp_path / "good" / "etc" / "f", "user.note") == b"kept"
    layer = with_pax("xf", {"SCHILY.xattr.security.capability": "garbage"})
    scan(layer)
    with pytest.raises(UnsafeLayerError) as caught:
        extract(layer, tmp_path / "fs")
    assert caught.value.path == "xf"
    assert "security.capability" in caught.value.problem
    assert "the kernel refuses" in caught.value.problem


XATTRS_PAST_THE_KERNEL = [
    pytest.param({"SCHILY.xattr.user.big": "A" * 70_000}, "of 70000 bytes", id="value-70000"),
    pytest.param({"SCHILY.xattr.user." + "n" * 300: "v"}, "name is longer", id="name-305"),
]


@pytest.mark.parametrize(("records", "problem"), XATTRS_PAST_THE_KERNEL)
def test_xattrs_past_the_kernels_bounds_are_refused_by_the_scan(
    records: dict[str, str], problem: str
) -> None:
    """A value over 64 KiB or a name over 255 bytes could never be set (E2BIG, ERANGE)."""
    with pytest.raises(UnsafeLayerError) as caught:
        scan(with_pax("xf", records))
    assert caught.value.path == "xf"
    assert problem in caught.value.problem


def test_os_errors_on_a_file_descriptor_are_one_line(tmp_path: Path) -> None:
    """The CLI's handler names a descriptor where the kernel gives no path (it raised a
    TypeError on the int)."""
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="out of range") as caught:
            os.setxattr(fd, "user." + "n" * 300, b"v")
    finally:
        os.close(fd)
    assert caught.value.errno == errno.ERANGE
    assert _os_error(caught.value) == f"file descriptor {fd}: {os.strerror(errno.ERANGE)}"


# -- F13: names the kernel cannot create -----------------------------------------------------------


def _path_of(length: int) -> str:
    """A path of ``length`` bytes made of 200-byte components."""
    parts = []
    left = length
    while left > 201:
        parts.append("d" * 200)
        left -= 201
    parts.append("f" * left)
    return "/".join(parts)


NAMES = [
    pytest.param("d/" + "x" * 256, "has a name of 256 bytes", id="component-256"),
    pytest.param("d/" + "\u00e9" * 128, "has a name of 256 bytes", id="component-128-e-acute"),
    pytest.param(_path_of(4095), "has a path of 4096 bytes", id="path-4095"),
]


@pytest.mark.parametrize(("name", "problem"), NAMES)
def test_names_the_kernel_cannot_create_are_refused(
    name: str, problem: str, tmp_path: Path
) -> None:
    """A component over 255 bytes or a path over 4,094 (with its ``/`` and NUL, PATH_MAX) is
    refused by the scan and by extraction (it was an exit-1 "File name too long")."""
    layer = tar_bytes([member(name, data=b"x")])
    with pytest.raises(UnsafeLayerError) as scanned:
        scan(layer)
    with pytest.raises(UnsafeLayerError) as extracted:
        extract(layer, tmp_path / "fs")
    for caught in (scanned, extracted):
        assert caught.value.path == name
        assert problem in caught.value.problem


def test_names_at_the_kernels_bounds_are_accepted() -> None:
    """A 255-byte component, a 4,094-byte path and a 4,095-byte symlink target are fine."""
    target = "/" + _path_of(4094)
    layer = tar_bytes(
        [
            member("d/" + "x" * 255, data=b"x"),
            member(_path_of(4094), data=b"x"),
            member("link", kind=tarfile.SYMTYPE, linkname=target),
        ]
    )
    index = scan_layer(io.BytesIO(layer), layer=LAYER, diff_id=LAYER, lower=None)
    assert index.entries["link"].linkname == target
    with pytest.raises(UnsafeLayerError) as caught:
        scan(tar_bytes([member("link", kind=tarfile.SYMTYPE, linkname=target + "x")]))
    assert "target longer than" in caught.value.problem


def test_a_base_with_a_long_name_fails_the_build_with_exit_2_on_one_short_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI: exit 2, one line naming the layer, the path shortened."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # this checkout, from any directory
    layout = tmp_path / "base"
    long_path = _path_of(4200)
    hostile = tar_bytes([member(long_path, data=b"deep")])
    oci_support.write_layout(layout, [tar_bytes(oci_support.busybox_members()), hostile])
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "f").write_text("x")
    (tmp_path / "build.py").write_text(
        "import imagedsl as dsl\n"
        f"app = dsl.image('oci:{layout}:1').copy(dsl.context('ctx'), '/app')\n"
    )
    result = imagedsl(
        "build",
        "build.py:app",
        "--backend",
        "oci",
        "--output",
        f"oci:{tmp_path / 'out'}:t",
        cwd=tmp_path,
        store=tmp_path / "s",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    digest = hashlib.sha256(gzip.compress(hostile, mtime=0)).hexdigest()
    assert f"refusing layer sha256:{digest}" in lines[0]
    assert "has a path of 4201 bytes" in lines[0]
    assert len(lines[0]) < 400


# -- F10: entries and extended attributes per layer ------------------------------------------------


def _global_xattr_layer(entries: int) -> bytes:
    out = io.BytesIO()
    headers = {"SCHILY.xattr.user.x": "A" * 60_000}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers=headers) as tar:
        for i in range(entries):
            tar.addfile(tarfile.TarInfo(f"f{i:06d}"), io.BytesIO(b""))
    return out.getvalue()


def test_xattrs_a_global_header_gives_every_entry_are_bounded() -> None:
    """A 60 KB attribute in a global header is every entry's: 30 KB of gzip cost 290 MB for
    5,000 entries. The layer's attributes are bounded in all."""
    with pytest.raises(UnsafeLayerError) as caught:
        scan(_global_xattr_layer(400))
    assert caught.value.path == f"f{XATTRS_MAX // 60_000:06d}"
    assert "extended attributes past" in caught.value.problem


_MANY_ENTRIES = """
import io, tarfile
from imagedsl.backends.oci.filesystem import ENTRIES_MAX, UnsafeLayerError, scan_layer

class EmptyFiles(io.RawIOBase):
    '''A tar of `count` empty files f0000000..., made as it is read.'''

    def __init__(self, count):
        template = bytearray(tarfile.TarInfo("f0000000").tobuf(format=tarfile.USTAR_FORMAT))
        template[148:156] = b" " * 8
        self.template = bytes(template)
        self.base = sum(template) - sum(template[:8])
        self.count, self.made, self.buffer = count, 0, b""

    def readable(self):
        return True

    def readinto(self, out):
        while len(self.buffer) < len(out) and self.made <= self.count:
            batch = []
            for i in range(self.made, min(self.made + 4096, self.count)):
                name = b"f%07d" % i
                batch.append(
                    name + self.template[8:148] + b"%06o\\0 " % (self.base + sum(name))
                    + self.template[156:]
                )
            if self.made + 4096 >= self.count:
                batch.append(b"\\0" * 1024)
                self.made = self.count + 1
            else:
                self.made += 4096
            self.buffer += b"".join(batch)
        n = min(len(out), len(self.buffer))
        out[:n] = self.buffer[:n]
        self.buffer = self.buffer[n:]
        return n

try:
    scan_layer(io.BufferedReader(EmptyFiles(ENTRIES_MAX + 1)), layer="sha256:many",
               diff_id="sha256:many", lower=None)
except UnsafeLayerError as error:
    _report(path=error.path, problem=error.problem)
else:
    _report(path=None)
"""


@pytest.mark.slow
def test_a_layer_past_the_entry_bound_is_refused_within_bounded_memory() -> None:
    """A million empty files (6 MB of gzip) cost 660 MB to scan; the scan now keeps about
    200 bytes an entry and refuses the entry past :data:`ENTRIES_MAX`."""
    found = run_measured(_MANY_ENTRIES)
    assert found["path"] == f"f{ENTRIES_MAX:07d}"
    assert f"past the {ENTRIES_MAX:,} entries" in found["problem"]
    assert found["peak_rss_kib"] < 300 * 1024

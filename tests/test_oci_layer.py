"""Layer tars and their compression: the DESIGN §4 rules, byte for byte."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import subprocess
import tarfile
import threading
import zlib
from typing import TYPE_CHECKING

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from imagedsl.backends.oci.filesystem import LayerIndex
from imagedsl.backends.oci.layer import (
    CHUNK,
    LayerCancelled,
    LayerEntry,
    LayerError,
    LayerStream,
    arrange,
    carries_xattr,
    incompressible,
    pax_xattrs,
    read_xattrs,
    sort_key,
    stored_blocks,
    write_tar,
)
from tests.support.skips import unavailable

if TYPE_CHECKING:
    from pathlib import Path


def _layer(entries: list[LayerEntry], compression: str = "gzip", mtime: int = 0) -> bytes:
    out = io.BytesIO()
    stream = LayerStream(out, compression)  # type: ignore[arg-type]
    write_tar(arrange(entries), stream, mtime=mtime)
    stream.finish()
    return out.getvalue()


def _members(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as archive:
        return archive.getmembers()


SAMPLE = [
    LayerEntry(path="app/b.txt", kind="file", size=3, source=b"bbb"),
    LayerEntry(path="app/a/deep/x", kind="file", size=1, source=b"x", mode=0o4755, uid=7, gid=8),
    LayerEntry(path="app/link", kind="symlink", linkname="b.txt", mode=0o777),
    LayerEntry(path="app/hard", kind="hardlink", linkname="app/b.txt"),
    LayerEntry(path="app/old", kind="whiteout"),
    LayerEntry(path="app/a", kind="opaque"),
]


def test_entries_sorted_parents_present_whiteouts_first() -> None:
    """Entries are sorted by component, parents come first, whiteouts lead their directory."""
    names = [m.name for m in _members(_layer(SAMPLE))]
    assert names == [
        "app",
        "app/.wh.old",
        "app/a",
        "app/a/.wh..wh..opq",
        "app/a/deep",
        "app/a/deep/x",
        "app/b.txt",
        "app/hard",
        "app/link",
    ]


def test_headers_fixed_mtime_owner_and_modes() -> None:
    """Every entry has the fixed mtime, numeric owners only, and exactly the asked mode."""
    members = {m.name: m for m in _members(_layer(SAMPLE, mtime=1_700_000_000))}
    assert {m.mtime for m in members.values()} == {1_700_000_000}
    assert {(m.uname, m.gname) for m in members.values()} == {("", "")}
    assert members["app/a/deep/x"].mode == 0o4755
    assert (members["app/a/deep/x"].uid, members["app/a/deep/x"].gid) == (7, 8)
    assert members["app"].mode == 0o755
    assert members["app"].uid == 0
    assert members["app/link"].issym()
    assert members["app/link"].linkname == "b.txt"
    assert members["app/hard"].islnk()
    assert members["app/hard"].linkname == "app/b.txt"


def test_long_and_unicode_names_use_pax() -> None:
    """Names ustar cannot hold go in a PAX record; short ASCII names never do."""
    long_name = "d/" + "n" * 120 + "é.txt"
    blob = _layer([LayerEntry(path=long_name, kind="file", size=1, source=b"1")])
    assert [m.name for m in _members(blob)] == ["d", long_name]
    raw = gzip.decompress(blob)
    assert raw.count(b"PaxHeader") == 1
    short = gzip.decompress(_layer([LayerEntry(path="a", kind="file", size=1, source=b"1")]))
    assert b"PaxHeader" not in short


CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")  # cap_net_bind_service+ep


def test_xattrs_travel_as_schily_pax_records(tmp_path: Path) -> None:
    """Extended attributes are ``SCHILY.xattr.NAME`` PAX records with the exact bytes
    (binary values too), which Python's tarfile and GNU tar both read back."""
    entry = LayerEntry(
        path="bin/tool",
        kind="file",
        size=1,
        source=b"x",
        mode=0o755,
        xattrs=(("security.capability", CAPABILITY), ("user.note", "é".encode())),
    )
    blob = _layer([entry])
    member = _members(blob)[-1]
    assert member.name == "bin/tool"
    assert (
        member.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
        == CAPABILITY
    )
    assert member.pax_headers["SCHILY.xattr.user.note"] == "é"
    assert pax_xattrs(member.pax_headers) == entry.xattrs
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    listing = subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "-tvvzf", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "x: 20 security.capability" in listing.stdout


def test_only_carried_xattrs_are_read(tmp_path: Path) -> None:
    """A layer carries file capabilities, ACLs and ``user.*`` (not overlayfs's or a security
    module's attributes); they are read sorted, from a path or a descriptor."""
    assert carries_xattr("security.capability")
    assert carries_xattr("user.mime_type")
    assert carries_xattr("system.posix_acl_access")
    assert not carries_xattr("trusted.overlay.opaque")
    assert not carries_xattr("user.overlay.redirect")
    assert not carries_xattr("security.selinux")
    file = tmp_path / "f"
    file.write_text("x")
    try:
        os.setxattr(file, "user.b", b"2")
        os.setxattr(file, "user.a", b"1")
    except OSError as error:
        unavailable(f"no user xattrs on {tmp_path}", str(error))
    assert read_xattrs(file) == (("user.a", b"1"), ("user.b", b"2"))
    fd = os.open(file, os.O_RDONLY)
    try:
        assert read_xattrs(fd) == (("user.a", b"1"), ("user.b", b"2"))
    finally:
        os.close(fd)


def test_layer_index_keeps_xattrs() -> None:
    """The layer index (what COPY --from reads) keeps each entry's extended attributes."""
    entries = [
        LayerEntry(path="bin", kind="dir", mode=0o755, xattrs=(("user.d", b"\x00\xff"),)),
        LayerEntry(
            path="bin/tool", kind="file", size=1, xattrs=(("security.capability", CAPABILITY),)
        ),
        LayerEntry(path="bin/plain", kind="file", size=1),
    ]
    index = LayerIndex.of_entries("sha256:" + "0" * 64, entries)
    again = LayerIndex.from_json(index.to_json())
    assert again.entries["bin/tool"].xattrs == (("security.capability", CAPABILITY),)
    assert again.entries["bin"].xattrs == (("user.d", b"\x00\xff"),)
    assert again.entries["bin/plain"].xattrs == ()


def test_duplicates_refused_unless_equal() -> None:
    """A path written twice with different contents is an error; an equal directory is not."""
    same = [LayerEntry(path="d", kind="dir"), LayerEntry(path="d", kind="dir")]
    assert [e.path for e in arrange(same)] == ["d"]
    with pytest.raises(LayerError) as caught:
        arrange([LayerEntry(path="d", kind="dir"), LayerEntry(path="d", kind="dir", mode=0o700)])
    assert caught.value.path == "d"


def test_a_hard_link_comes_after_the_file_it_names() -> None:
    """An archive's ``x/a`` linked to its ``x/b`` (ADD of ``tar cf t.tar b a`` after ``ln b
    a``): sorted by name the link came first, and ``docker load`` (and the next RUN's reading
    of the layer) refused it. The link now follows its file; other entries keep their order,
    whatever order they came in."""
    entries = [
        LayerEntry(path="x/a", kind="hardlink", linkname="x/b"),
        LayerEntry(path="x/b", kind="file", source=b"data\n", size=5),
        LayerEntry(path="x/c", kind="file", source=b"", size=0),
        LayerEntry(path="w", kind="hardlink", linkname="x/c"),
    ]
    expected = ["x", "x/b", "x/a", "x/c", "w"]
    assert [e.path for e in arrange(entries)] == expected
    assert [e.path for e in arrange(entries[::-1])] == expected
    buffer = io.BytesIO()
    stream = LayerStream(buffer, "none", threaded=False)
    write_tar(arrange(entries), stream, mtime=0)
    stream.finish()
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as archive:
        names = [(m.name, m.linkname) for m in archive]
    assert names[1:3] == [("x/b", ""), ("x/a", "x/b")]


@pytest.mark.parametrize("path", ["/abs", "a/../b", "./a", "a//b", ""])
def test_unclean_paths_refused(path: str) -> None:
    """Absolute, ``..``, ``.`` and empty components never reach a layer."""
    with pytest.raises(LayerError):
        arrange([LayerEntry(path=path, kind="file", source=b"")])


def test_source_changed_since_planned_is_refused(tmp_path: Path) -> None:
    """A file whose bytes no longer match the planned digest cannot enter a cached layer."""
    file = tmp_path / "f"
    file.write_bytes(b"new!")
    entry = LayerEntry(path="f", kind="file", size=4, source=str(file), digest="0" * 64)
    with pytest.raises(LayerError, match="changed content"):
        _layer([entry])
    grown = LayerEntry(path="f", kind="file", size=3, source=str(file))
    with pytest.raises(LayerError, match="changed size"):
        _layer([grown])


def test_gzip_has_fixed_header_and_is_valid(tmp_path: Path) -> None:
    """Our gzip header has no mtime or name, and gzip(1) accepts the stream."""
    blob = _layer(SAMPLE)
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(blob)
    subprocess.run(["gzip", "-t", str(path)], check=True)


def test_digests_describe_the_bytes() -> None:
    """The digest hashes the blob, the diff_id hashes the tar inside it."""
    out = io.BytesIO()
    stream = LayerStream(out, "gzip")
    write_tar(arrange(SAMPLE), stream, mtime=0)
    blob = stream.finish()
    data = out.getvalue()
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    assert blob.size == len(data)
    assert blob.uncompressed_size == len(gzip.decompress(data))


def test_zstd_round_trips_to_the_same_tar() -> None:
    """zstd and gzip layers of one tree share a diff_id."""
    tar = gzip.decompress(_layer(SAMPLE))
    zstd = _layer(SAMPLE, "zstd")
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zstd) == tar


def _big_entries() -> list[LayerEntry]:
    data = b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() for i in range(200_000))
    return [
        LayerEntry(path="big", kind="file", size=len(data), source=data),
        LayerEntry(path="small", kind="file", size=5, source=b"small"),
    ]


# The pinned compressors' output for a fixed 12.8 MB input spanning several 1 MiB chunks: if a
# dependency update changes these, layer digests change for every user (see docs/oci-backend.md).
GOLDEN = {
    "gzip": "sha256:4fd75ab144060ee469f28d280c12d338bdca77c887218e82cc5ef51ed4ab7076",
    "zstd": "sha256:653d401211bdbd48b2bc46a96938ee9b34c0dc231c0768d135789f4fe7c6f2e8",
}


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_bytes_are_pinned(compression: str) -> None:
    """A fixed tree compresses to the same bytes on every machine with our pinned compressors."""
    blob = _layer(_big_entries(), compression)
    assert len(gzip.decompress(_layer(_big_entries()))) > 3 * CHUNK
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == GOLDEN[compression]


def _mixed_entries() -> list[LayerEntry]:
    """Text, then 3 MiB of random bytes (already-compressed data looks so), then text."""
    text = b"".join(b"line %d of a source file\n" % i for i in range(120_000))
    noise = random.Random(20261203).randbytes(3 * CHUNK)
    return [
        LayerEntry(path="a.txt", kind="file", size=len(text), source=text),
        LayerEntry(path="b.bin", kind="file", size=len(noise), source=noise),
        LayerEntry(path="c.txt", kind="file", size=len(text), source=text),
    ]


def test_incompressible_pieces_are_stored_and_the_stream_stays_valid(tmp_path: Path) -> None:
    """Pieces of random bytes go in as stored deflate blocks (5 bytes per 64 KiB more, where
    deflate would spend CPU for nothing), between deflated text: gzip(1), Python's gzip and the
    zstd layer of the same entries all agree on the tar inside."""
    entries = _mixed_entries()
    blob = _layer(entries)
    path = tmp_path / "mixed.tar.gz"
    path.write_bytes(blob)
    subprocess.run(["gzip", "-t", str(path)], check=True)
    tar = gzip.decompress(blob)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(_layer(entries, "zstd")) == tar
    text_only = len(_layer([entries[0], entries[2]]))
    noise = entries[1].size
    assert noise < len(blob) - text_only < noise * 1.01
    # Pieces inside the noise are stored verbatim: their bytes appear in the blob as they are
    # (but where a 64 KiB block's 5-byte header cuts a window).
    source = entries[1].source
    assert isinstance(source, bytes)
    windows = range(CHUNK, 2 * CHUNK, 1 << 16)
    assert sum(source[at : at + 1024] in blob for at in windows) >= len(windows) - 2


def test_the_store_decision_reads_only_bytes() -> None:
    """Random bytes are stored, text and zeros are deflated, and a piece that is random but
    for one compressible sample is deflated too (the safe side)."""
    noise = random.Random(1).randbytes(CHUNK)
    assert incompressible(noise)
    assert not incompressible(bytes(CHUNK))
    assert not incompressible(b"abc " * (CHUNK // 4))
    assert not incompressible(bytes(4096) + noise[4096:])
    assert not incompressible(noise[:1000])  # too small to judge: deflated
    assert stored_blocks(b"")[:0] == b""
    assert zlib.decompress(stored_blocks(noise) + b"\x03\x00", -15) == noise


names = st.text(alphabet="abc/.é_", min_size=1, max_size=12).filter(
    lambda p: all(part not in ("", ".", "..") for part in p.split("/"))
)


@settings(max_examples=60, deadline=None)
@given(st.lists(names, min_size=1, max_size=12, unique=True))
def test_order_never_depends_on_input_order(paths: list[str]) -> None:
    """The same entries in any order make the same bytes, each parent before its children."""
    dirs = {p.rsplit("/", 1)[0] for p in paths if "/" in p}
    files = [p for p in paths if p not in dirs and not any(d.startswith(p + "/") for d in paths)]
    entries = [LayerEntry(path=p, kind="file", size=1, source=b"x") for p in files]
    if not entries:
        return
    forward = _layer(entries)
    assert _layer(list(reversed(entries))) == forward
    seen: set[str] = set()
    for member in _members(forward):
        parent = member.name.rsplit("/", 1)[0] if "/" in member.name else ""
        assert not parent or parent in seen
        seen.add(member.name)
    keys = [sort_key(m.name + ("/" if m.isdir() else "")) for m in _members(forward)]
    assert keys == sorted(keys)


@pytest.mark.parametrize("size", [2, CHUNK - 1536, CHUNK - 512, CHUNK + 7, 3 * CHUNK - 1536])
def test_growth_and_shrinking_are_found_at_any_piece_boundary(tmp_path: Path, size: int) -> None:
    """The last read of a file asks for one byte more: a file longer than its entry says is
    refused wherever its end falls in the stream's pieces, and one of the right size is not."""
    file = tmp_path / "f"
    file.write_bytes(b"x" * size)
    head = LayerEntry(path="a", kind="file", size=511, source=b"h" * 511)
    for claimed, problem in ((size, None), (size - 1, "changed size"), (size + 1, "changed size")):
        entry = LayerEntry(path="f", kind="file", size=claimed, source=str(file))
        stream = LayerStream(io.BytesIO(), "gzip")
        if problem is None:
            write_tar([head, entry], stream, mtime=0)
            assert stream.finish().uncompressed_size == 1024 + 512 + size + (-size % 512) + 1024
        else:
            with pytest.raises(LayerError, match=problem):
                write_tar([head, entry], stream, mtime=0)


def test_a_stopped_layer_raises_at_its_next_entry() -> None:
    """``stop`` (set when another layer of the build failed) ends writing at the next entry."""
    stop = threading.Event()
    stop.set()
    with pytest.raises(LayerCancelled):
        write_tar(SAMPLE, LayerStream(io.BytesIO()), mtime=0, stop=stop)

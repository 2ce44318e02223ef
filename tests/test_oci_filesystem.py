"""The OCI builder's filesystem model: layers scanned into indexes, stacked with whiteouts and
opaque directories, paths resolved through symlinks as the kernel does inside a root."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from imagedsl.backends.oci.filesystem import (
    INDEX_VERSION,
    Filesystem,
    FsEntry,
    LayerIndex,
    PathResolutionError,
    UnsafeLayerError,
    drain,
    index_path,
    json_ready,
    load_index,
    lookup_id,
    read_members,
    save_index,
    scan_layer,
)
from imagedsl.backends.oci.layer import LayerEntry
from imagedsl.oci.layerstream import decompressed
from imagedsl.store import Store
from tests.support.oci import Member, member, tar_bytes

DIR = tarfile.DIRTYPE
SYM = tarfile.SYMTYPE


def scanned(members: list[Member], lower: Filesystem | None = None, name: str = "l") -> LayerIndex:
    """The index of a layer made of ``members``."""
    stream = io.BytesIO(tar_bytes(members))
    return scan_layer(stream, layer=name, diff_id=f"sha256:{name}", lower=lower)


def stack(*layers: list[Member]) -> Filesystem:
    """The filesystem the layers make, each scanned against the ones below it."""
    fs = Filesystem()
    for i, members in enumerate(layers):
        fs.apply(scanned(members, fs if fs.layers else None, name=f"l{i}"))
    return fs


def d(name: str, mode: int = 0o755) -> Member:
    return member(name, kind=DIR, mode=mode)


def f(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    return member(name, data=data, mode=mode)


def link(name: str, target: str) -> Member:
    return member(name, kind=SYM, mode=0o777, linkname=target)


def pax_named(name: str) -> bytes:
    """A tar whose one file's path comes from a PAX header (which may hold any character)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("placeholder")
        info.size = 1
        info.pax_headers = {"path": name}
        archive.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()


# -- scanning ------------------------------------------------------------------------------


def test_scan_keeps_entries_whiteouts_opaques_and_small_files() -> None:
    """One pass: entries with mode, owner, size and link; whiteouts and opaque markers apart;
    /etc/passwd and /etc/group text kept for --chown names."""
    index = scanned(
        [
            d("./etc/"),
            member("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n", uid=7),
            f("etc/group", b"root:x:0:\n"),
            f("etc/hosts", b"127.0.0.1 localhost\n"),
            f("etc/.wh.shadow", b""),
            d("opt/"),
            f("opt/.wh..wh..opq", b""),
            link("bin", "usr/bin"),
            member("etc/hard", kind=tarfile.LNKTYPE, linkname="etc/passwd"),
        ]
    )
    assert index.entries["etc/passwd"] == FsEntry(kind="file", mode=0o644, uid=7, gid=7, size=26)
    assert index.entries["bin"] == FsEntry(kind="symlink", mode=0o777, linkname="usr/bin")
    assert index.entries["etc/hard"].kind == "hardlink"
    assert index.entries["etc/hard"].linkname == "etc/passwd"
    assert "etc/.wh.shadow" not in index.entries
    assert index.whiteouts == ("etc/shadow",)
    assert index.opaques == ("opt",)
    assert index.files == {"etc/passwd": "root:x:0:0::/root:/bin/sh\n", "etc/group": "root:x:0:\n"}


def test_kept_files_up_to_one_mib_decoded_leniently() -> None:
    """/etc/passwd is kept up to 1 MiB (bytes that are not UTF-8 replaced); a bigger one is
    not kept at all."""
    exact = b"\xff" + b"a" * ((1 << 20) - 1)
    index = scanned([d("etc/"), f("etc/passwd", exact), f("etc/group", b"b" * ((1 << 20) + 1))])
    assert index.files["etc/passwd"] == "\ufffd" + "a" * ((1 << 20) - 1)
    assert "etc/group" not in index.files


def test_hard_link_to_a_hard_link_points_at_the_file() -> None:
    """A hard link to a hard link keeps the original file as its target."""
    index = scanned(
        [
            f("a"),
            member("b", kind=tarfile.LNKTYPE, linkname="a"),
            member("c", kind=tarfile.LNKTYPE, linkname="b"),
        ]
    )
    assert index.entries["c"].linkname == "a"


def test_hard_link_may_reach_a_file_of_a_lower_layer() -> None:
    """A hard link's target may come from below, unless a whiteout of this layer removed it."""
    below = stack([f("a"), f("b")])
    index = scanned([member("x", kind=tarfile.LNKTYPE, linkname="a")], below)
    assert index.entries["x"].linkname == "a"
    with pytest.raises(UnsafeLayerError) as caught:
        scanned([f(".wh.b", b""), member("y", kind=tarfile.LNKTYPE, linkname="b")], below)
    assert caught.value.path == "y"
    assert caught.value.problem == "is a hard link to 'b', which is no file"


@pytest.mark.parametrize(
    ("members", "path", "problem"),
    [
        pytest.param([f("/abs")], "/abs", "has an absolute path", id="absolute"),
        pytest.param(
            [f("a/../../x")], "a/../../x", "climbs out of the root with '..'", id="dotdot"
        ),
        pytest.param([f("a"), f("./a")], "./a", "appears twice in the layer", id="twice"),
        pytest.param([f(".")], ".", "replaces the root", id="root"),
        pytest.param(
            [link("l", "../../etc")], "l", "is a symlink to '../../etc', outside the root", id="up"
        ),
        pytest.param([link("l", "")], "l", "is a symlink without a target", id="empty-link"),
        pytest.param(
            [link("d", "/etc"), f("d/x")], "d/x", "lies below /d, which is a symlink", id="below"
        ),
        pytest.param([f("d"), f("d/x")], "d/x", "lies below /d, which is not a directory", id="f"),
        pytest.param(
            [member("h", kind=tarfile.LNKTYPE, linkname="/etc/passwd")],
            "h",
            "is a hard link to '/etc/passwd', outside the root",
            id="hard-abs",
        ),
        pytest.param(
            [member("h", kind=tarfile.LNKTYPE, linkname="../x")],
            "h",
            "is a hard link to '../x', outside the root",
            id="hard-up",
        ),
        pytest.param(
            [d("dir/"), member("h", kind=tarfile.LNKTYPE, linkname="dir")],
            "h",
            "is a hard link to 'dir', which is no file",
            id="hard-dir",
        ),
        pytest.param([member("c", kind=tarfile.CHRTYPE)], "c", "is a device node", id="chr"),
        pytest.param([member("b", kind=tarfile.BLKTYPE)], "b", "is a device node", id="blk"),
        pytest.param(
            [member("p", kind=tarfile.FIFOTYPE)],
            "p",
            "is a special file (FIFO or unknown type)",
            id="fifo",
        ),
    ],
)
def test_unsafe_entries_are_refused_by_name_and_problem(
    members: list[Member], path: str, problem: str
) -> None:
    """Each unsafe entry is refused, naming the layer, the entry and what is wrong."""
    with pytest.raises(UnsafeLayerError) as caught:
        scanned(members, name="bad")
    assert caught.value.layer == "bad"
    assert caught.value.path == path
    assert caught.value.problem == problem


def test_a_nul_in_a_name_is_refused() -> None:
    """A PAX path with a NUL (which C tools would cut short) is refused, naming it."""
    with pytest.raises(UnsafeLayerError) as caught:
        scan_layer(io.BytesIO(pax_named("etc/a\x00b")), layer="nul", diff_id="sha256:n", lower=None)
    assert caught.value.layer == "nul"
    assert caught.value.path == "etc/a\x00b"
    assert caught.value.problem == "has a NUL in its name"


def test_names_are_cleaned_but_otherwise_kept_as_written() -> None:
    """Leading ./, trailing and doubled slashes go; anything else (trailing spaces or X's,
    dots inside names) is part of the name."""
    index = scanned(
        [d("./"), d("./a//b/"), f("a//b/file "), f("a/b/nameX"), f("a/b/..x"), d("XX/")]
    )
    assert sorted(index.entries) == ["XX", "a/b", "a/b/..x", "a/b/file ", "a/b/nameX"]


def test_a_symlink_to_the_parent_of_the_root_is_refused() -> None:
    """``l -> ..`` at the root points above it."""
    with pytest.raises(UnsafeLayerError) as caught:
        scanned([link("l", "..")])
    assert caught.value.problem == "is a symlink to '..', outside the root"


def test_a_relative_symlink_that_stays_inside_is_fine() -> None:
    """``a/b -> ../c`` stays inside the root; ``a/b -> ../../c`` would not."""
    index = scanned([d("a/"), link("a/b", "../c"), link("a/abs", "/anywhere")])
    assert index.entries["a/b"].linkname == "../c"
    assert index.entries["a/abs"].linkname == "/anywhere"


def test_this_layers_entry_decides_over_the_lower_one() -> None:
    """A directory below turned into a symlink by this layer: a later entry under it is
    refused, since it now lies below a symlink."""
    below = stack([d("d/"), f("d/old")])
    with pytest.raises(UnsafeLayerError) as caught:
        scanned([f(".wh.d", b""), link("d", "/etc"), f("d/x")], below)
    assert caught.value.problem == "lies below /d, which is a symlink"
    with pytest.raises(UnsafeLayerError):
        scanned([link("e", "/etc"), f("e/x")], below)


def test_an_opaque_directory_hides_only_its_own_subtree() -> None:
    """While a layer makes one directory opaque, lower paths elsewhere stay visible (a hard
    link may point at them)."""
    below = stack([d("opq/"), f("opq/old"), d("keep/"), f("keep/file")])
    index = scanned(
        [
            d("opq/"),
            f("opq/.wh..wh..opq", b""),
            member("h", kind=tarfile.LNKTYPE, linkname="keep/file"),
        ],
        below,
    )
    assert index.entries["h"].linkname == "keep/file"
    with pytest.raises(UnsafeLayerError):
        scanned(
            [
                d("opq/"),
                f("opq/.wh..wh..opq", b""),
                member("h", kind=tarfile.LNKTYPE, linkname="opq/old"),
            ],
            below,
        )


def test_not_a_tar_is_refused() -> None:
    """Bytes that are not a tar archive are refused as such."""
    with pytest.raises(UnsafeLayerError) as caught:
        scan_layer(io.BytesIO(b"\x01" * 1024), layer="junk", diff_id="sha256:j", lower=None)
    assert caught.value.layer == "junk"
    assert caught.value.path == ""
    assert caught.value.problem.startswith(("is not a tar archive", "is a damaged tar archive"))


def test_a_truncated_tar_is_refused_as_damaged() -> None:
    """A tar cut off inside a member is a damaged archive, named as such."""
    tar = tar_bytes([f("a", b"x" * 4096), f("b", b"y" * 4096)])
    with pytest.raises(UnsafeLayerError) as caught:
        scan_layer(io.BytesIO(tar[:2048]), layer="cut", diff_id="sha256:c", lower=None)
    assert (caught.value.layer, caught.value.path) == ("cut", "")
    assert caught.value.problem.startswith("is a damaged tar archive: ")


def test_scan_sees_a_lower_path_through_this_layers_whiteouts() -> None:
    """While scanning, a path below a directory this layer deleted or made opaque is new: a
    file there does not clash with what the lower layers had."""
    below = stack([d("gone/"), link("gone/l", "/x"), d("opq/"), link("opq/l", "/x")])
    index = scanned(
        [f(".wh.gone", b""), d("gone/"), d("gone/l/"), d("opq/"), f("opq/.wh..wh..opq", b"")],
        below,
    )
    assert index.entries["gone/l"].kind == "dir"
    fresh = scanned([d("opq/"), f("opq/.wh..wh..opq", b""), d("opq/l/"), f("opq/l/x")], below)
    assert fresh.entries["opq/l/x"].kind == "file"
    # Parents need not be in the layer: what the lower layers had there is gone all the same.
    assert (
        "opq/l/x" in scanned([d("opq/"), f("opq/.wh..wh..opq", b""), f("opq/l/x")], below).entries
    )
    assert "gone/l/x" in scanned([f(".wh.gone", b""), f("gone/l/x")], below).entries
    with pytest.raises(UnsafeLayerError) as caught:
        scanned([f("opq/l/x")], below)
    assert caught.value.problem == "lies below /opq/l, which is a symlink"


# -- stacking ------------------------------------------------------------------------------


def test_whiteout_removes_the_path_and_everything_below_it() -> None:
    """A whited-out directory takes its whole subtree with it; siblings stay."""
    fs = stack([d("a/"), d("a/b/"), f("a/b/c"), f("a/bc"), f("ab")], [f("a/.wh.b", b"")])
    assert sorted(fs.entries) == ["a", "a/bc", "ab"]


def test_whiteout_of_a_missing_path_is_harmless_and_origin_follows_removals() -> None:
    """Whiting out a path that is not there changes nothing; removed paths leave ``origin``
    too, whether a whiteout or a file over a directory removed them."""
    fs = stack([d("a/"), f("a/x"), d("p/"), f("p/y"), f("keep")])
    fs.apply(scanned([f(".wh.nothing", b""), f("a/.wh.x", b""), f("p")], fs, name="top"))
    assert sorted(fs.entries) == ["a", "keep", "p"]
    assert fs.origin == {"a": 0, "keep": 0, "p": 1}


def test_opaque_directory_hides_what_was_below_but_keeps_itself_and_new_entries() -> None:
    """An opaque directory keeps its own entry and this layer's children only; a sibling
    whose name starts the same is untouched."""
    fs = stack(
        [d("o/"), f("o/old"), d("o/sub/"), f("o/sub/x"), f("other")],
        [d("o/"), f("o/.wh..wh..opq", b""), f("o/new")],
    )
    assert sorted(fs.entries) == ["o", "o/new", "other"]
    assert fs.origin["o/new"] == 1
    assert fs.origin["other"] == 0


def test_root_opaque_hides_every_lower_entry() -> None:
    """An opaque marker at the root leaves only the new layer's entries."""
    fs = stack([f("a"), d("b/"), f("b/c")], [f(".wh..wh..opq", b""), f("z")])
    assert sorted(fs.entries) == ["z"]


def test_a_file_replacing_a_directory_drops_its_subtree() -> None:
    """A non-directory written over a directory replaces it and everything below it."""
    fs = stack([d("p/"), f("p/a"), d("p/q/"), f("p/q/b"), f("pz")], [f("p")])
    assert sorted(fs.entries) == ["p", "pz"]
    assert fs.entries["p"].kind == "file"
    assert fs.origin["p"] == 1


def test_directory_over_directory_keeps_the_children() -> None:
    """A directory entry on top of a directory only changes its metadata."""
    fs = stack([d("p/"), f("p/a")], [d("p/", mode=0o700)])
    assert fs.entries["p"].mode == 0o700
    assert "p/a" in fs.entries


def test_kept_files_follow_the_top_layer() -> None:
    """/etc/passwd text comes from the layer that last wrote it; a whiteout or a replacement
    without text forgets it."""
    passwd = b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    fs = stack([d("etc/"), f("etc/passwd", passwd), f("etc/group", b"g:x:5:\n")])
    assert fs.files["etc/passwd"] == passwd.decode()
    fs.apply(scanned([d("etc/"), f("etc/.wh.group", b"")], fs, name="rm"))
    assert "etc/group" not in fs.files
    fs.apply(scanned([d("etc/"), link("etc/passwd", "/dev/null")], fs, name="ln"))
    assert "etc/passwd" not in fs.files
    assert fs.chain_id() == "sha256:l0|sha256:rm|sha256:ln"


def test_chain_id_names_the_layers_in_order() -> None:
    """The stack's identity is its diff_ids, bottom first."""
    assert Filesystem().chain_id() == ""
    assert stack([f("a")], [f("b")]).chain_id() == "sha256:l0|sha256:l1"


def test_below_lists_a_subtree_only() -> None:
    """``below`` gives entries strictly under a directory; "" is the whole tree."""
    fs = stack([d("a/"), f("a/x"), d("a/y/"), f("a/y/z"), f("ab"), f("b")])
    assert sorted(p for p, _ in fs.below("a")) == ["a/x", "a/y", "a/y/z"]
    assert sorted(p for p, _ in fs.below("")) == ["a", "a/x", "a/y", "a/y/z", "ab", "b"]
    assert list(fs.below("b")) == []


# -- resolving paths -----------------------------------------------------------------------


@pytest.fixture(name="linked")
def fixture_linked() -> Filesystem:
    """usr/bin with a few symlinks: relative, absolute, chained, to a file, and a loop."""
    return stack(
        [
            d("usr/"),
            d("usr/bin/"),
            f("usr/bin/tool"),
            d("usr/lib/"),
            link("bin", "usr/bin"),
            link("lib", "/usr/lib"),
            link("usr/bin/up", "../lib"),
            link("chain", "bin"),
            link("tool", "usr/bin/tool"),
            link("loop1", "loop2"),
            link("loop2", "loop1"),
            link("dotty", "./usr/./bin/"),
            link("usr/bin/abs", "/usr/lib"),
        ]
    )


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        pytest.param("/usr/bin/tool", "usr/bin/tool", id="plain"),
        pytest.param("bin/tool", "usr/bin/tool", id="relative-link"),
        pytest.param("/lib/x", "usr/lib/x", id="absolute-link"),
        pytest.param("bin/up/y", "usr/lib/y", id="dotdot-in-link"),
        pytest.param("chain/tool", "usr/bin/tool", id="chained"),
        pytest.param("/../../usr/./bin//tool", "usr/bin/tool", id="dotdot-stops-at-root"),
        pytest.param("usr/bin/../lib", "usr/lib", id="dotdot"),
        pytest.param("tool", "usr/bin/tool", id="last-followed"),
        pytest.param("dotty/tool", "usr/bin/tool", id="dots-in-link"),
        pytest.param("usr/bin/abs/x", "usr/lib/x", id="absolute-link-deeper"),
        pytest.param("missing/deeper", "missing/deeper", id="missing"),
        pytest.param("", "", id="root"),
    ],
)
def test_resolve_follows_symlinks_inside_the_root(
    linked: Filesystem, path: str, resolved: str
) -> None:
    """Symlinks are followed as the kernel would in a chroot."""
    assert linked.resolve(path) == resolved


def test_resolve_can_leave_the_last_component_alone(linked: Filesystem) -> None:
    """``follow_last=False`` resolves the parents only (for COPY onto a symlink's name)."""
    assert linked.resolve("tool", follow_last=False) == "tool"
    assert linked.resolve("bin/up", follow_last=False) == "usr/bin/up"
    assert linked.resolve("bin/up") == "usr/lib"


def test_resolve_refuses_a_symlink_loop(linked: Filesystem) -> None:
    """A symlink loop is an error naming the path, not a hang."""
    with pytest.raises(PathResolutionError) as caught:
        linked.resolve("loop1/x")
    assert caught.value.path == "loop1/x"
    assert caught.value.problem == "has too many levels of symbolic links"


def test_resolve_allows_forty_hops_and_no_more() -> None:
    """Up to 40 symlinks are followed (as Linux does); the 41st is a loop."""
    links = [link(f"l{i}", f"l{i + 1}") for i in range(41)]
    fs = stack([*links, d("l41/")])
    assert fs.resolve("l1/x") == "l41/x"
    with pytest.raises(PathResolutionError):
        fs.resolve("l0/x")


def test_resolve_refuses_a_file_used_as_a_directory(linked: Filesystem) -> None:
    """A path through a regular file is an error naming that file."""
    with pytest.raises(PathResolutionError) as caught:
        linked.resolve("usr/bin/tool/x")
    assert caught.value.path == "usr/bin/tool"
    assert caught.value.problem == "is not a directory"
    assert linked.resolve("usr/bin/tool") == "usr/bin/tool"


# -- indexes in the store, ids, members ----------------------------------------------------


def test_layer_index_round_trips_and_is_kept_per_diff_id(tmp_path: Path) -> None:
    """An index written to the store reads back equal, entries and files included."""
    index = scanned(
        [d("etc/"), f("etc/passwd", b"root:x:0:0::/:/bin/sh\n"), f(".wh.old", b""), link("l", "x")]
    )
    again = LayerIndex.from_json(index.to_json())
    assert again == index
    assert dict(again.entries) == dict(index.entries)
    assert dict(again.files) == dict(index.files)
    store = Store(tmp_path / "store")
    save_index(store, index)
    assert index_path(store, "sha256:abcdef").parent.name == "ab"
    loaded = load_index(store, index.diff_id)
    assert loaded is not None
    assert dict(loaded.entries) == dict(index.entries)
    assert load_index(store, "sha256:other") is None


def test_layer_index_on_disk_form_is_compact_utf8_and_keeps_every_field() -> None:
    """The on-disk form is compact JSON in UTF-8 (names that are not valid UTF-8 kept as
    they were), and reading it back keeps owners, whiteouts and opaque directories."""
    odd = b"caf\xe9".decode("utf-8", "surrogateescape")
    index = LayerIndex(
        diff_id="sha256:x",
        entries={
            "é": FsEntry(kind="file", mode=0o600, uid=1, gid=2, size=3),
            odd: FsEntry(kind="dir", mode=0o755, uid=4, gid=5),
        },
        whiteouts=("w",),
        opaques=("o",),
        files={"etc/group": "g:x:1:"},
    )
    data = index.to_json()
    assert data.startswith(
        b'{"v":%d,"diff_id":"sha256:x","entries":[["\xc3\xa9","file",384,1,2,3,""]' % INDEX_VERSION
    )
    assert b"caf\xe9" in data
    again = LayerIndex.from_json(data)
    assert dict(again.entries) == dict(index.entries)
    assert (again.whiteouts, again.opaques) == (("w",), ("o",))


def test_damaged_or_foreign_index_reads_as_missing(tmp_path: Path) -> None:
    """A damaged index, one of another version, or one for another diff_id is made again."""
    store = Store(tmp_path / "store")
    index = scanned([f("a")], name="ab")
    path = index_path(store, index.diff_id)
    path.parent.mkdir(parents=True)
    for text in (b"{", b"[]", b'{"v": 99}', index.to_json().replace(b"sha256:ab", b"sha256:xy")):
        path.write_bytes(text)
        assert load_index(store, index.diff_id) is None
    with pytest.raises(ValueError, match=r"^not a layer index$"):
        LayerIndex.from_json(b'{"v": 0}')


def test_index_of_our_own_entries() -> None:
    """A layer we wrote is indexed from its entries: whiteouts and opaques apart."""
    index = LayerIndex.of_entries(
        "sha256:own",
        [
            LayerEntry(path="a", kind="dir", mode=0o755),
            LayerEntry(path="a/f", kind="file", mode=0o600, uid=1, gid=2, size=3),
            LayerEntry(path="a/gone", kind="whiteout"),
            LayerEntry(path="o", kind="opaque"),
            LayerEntry(path="l", kind="symlink", mode=0o777, linkname="a/f"),
        ],
        {"etc/passwd": "x"},
    )
    assert sorted(index.entries) == ["a", "a/f", "l"]
    assert index.entries["a/f"] == FsEntry(kind="file", mode=0o600, uid=1, gid=2, size=3)
    assert index.entries["l"].linkname == "a/f"
    assert index.whiteouts == ("a/gone",)
    assert index.opaques == ("o",)
    assert index.files == {"etc/passwd": "x"}
    assert LayerIndex.of_entries("sha256:e", []).files == {}


@pytest.mark.parametrize(
    ("table", "name", "found"),
    [
        pytest.param("etc/passwd", "app", 1000, id="user"),
        pytest.param("etc/passwd", "root", 0, id="root"),
        pytest.param("etc/group", "staff", 50, id="group"),
        pytest.param("etc/passwd", "nobody", None, id="unknown"),
        pytest.param("etc/passwd", "broken", None, id="non-numeric"),
        pytest.param("etc/passwd", "short", None, id="too-few-fields"),
        pytest.param("etc/group", "three", 42, id="three-fields"),
        pytest.param("etc/shadow", "app", None, id="no-table"),
    ],
)
def test_lookup_id_reads_passwd_and_group(table: str, name: str, found: int | None) -> None:
    """Names map to the third field of their line, when it is a number."""
    files = {
        "etc/passwd": "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
        "broken:x:abc:1::/:/bin/sh\nshort:x\n",
        "etc/group": "root:x:0:\nstaff:x:50:\nthree:x:42\n",
    }
    assert lookup_id(files, table, name) == found


def test_read_members_copies_only_named_regular_files(tmp_path: Path) -> None:
    """Only the regular files asked for are written, to the caller's own paths; large files
    arrive whole."""
    big = bytes(range(256)) * 8193
    tar = tar_bytes([d("etc/"), f("etc/a", b"A"), f("./etc/big", big), link("etc/l", "a")])
    wanted = {"etc/a": tmp_path / "a", "etc/big": tmp_path / "big", "etc/l": tmp_path / "l"}
    found = read_members(io.BytesIO(tar), wanted, "layer")
    assert found == {"etc/a", "etc/big"}
    assert (tmp_path / "a").read_bytes() == b"A"
    assert (tmp_path / "big").read_bytes() == big
    assert not (tmp_path / "l").exists()


def test_read_members_refuses_unsafe_names_naming_the_layer(tmp_path: Path) -> None:
    """Reading members re-checks names: an unsafe one is refused, naming the layer."""
    tar = tar_bytes([f("../escape", b"x")])
    with pytest.raises(UnsafeLayerError) as caught:
        read_members(io.BytesIO(tar), {"escape": tmp_path / "e"}, "sha256:bad")
    assert caught.value.layer == "sha256:bad"
    assert not (tmp_path / "e").exists()


def test_multi_frame_zstd_layers_are_read_to_the_end() -> None:
    """A zstd blob of several frames (as parallel compressors write) reads as one tar."""
    tar = tar_bytes([d("a/"), f("a/x", b"first" * 500), f("a/y", b"second" * 500)])
    half = len(tar) // 2
    compressor = zstandard.ZstdCompressor()
    blob = compressor.compress(tar[:half]) + compressor.compress(tar[half:])
    reader = decompressed(io.BytesIO(blob))
    chunks = []
    while chunk := reader.read(4096):  # as tarfile reads: in blocks, until b""
        chunks.append(chunk)
    assert b"".join(chunks) == tar


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_decompressed_reads_any_layer_compression(compression: str) -> None:
    """Plain, gzip and zstd layer blobs read back as the same tar, in any read sizes."""
    tar = tar_bytes([d("a/"), f("a/x", b"hello" * 1000)])
    blob = {
        "none": tar,
        "gzip": gzip.compress(tar),
        "zstd": zstandard.ZstdCompressor().compress(tar),
    }[compression]
    reader = decompressed(io.BytesIO(blob))
    first = reader.read(3)
    assert first + reader.read() == tar
    small = decompressed(io.BytesIO(blob))
    pieces = [small.read(2), small.read(1), small.read(-1)]
    assert b"".join(pieces) == tar
    drained = io.BytesIO(blob)
    drain(drained)
    assert drained.tell() == len(blob)


def test_decompressed_plain_reader_fills_buffers() -> None:
    """The plain reader answers ``readinto`` and says it is readable (tarfile needs both)."""
    reader = decompressed(io.BytesIO(b"0123456789"))
    buffer = bytearray(6)
    assert reader.readable()
    assert reader.readinto(buffer) == 6  # type: ignore[attr-defined]
    assert bytes(buffer) == b"012345"
    assert reader.read(100) == b"6789"
    assert reader.read() == b""
    again = decompressed(io.BytesIO(b"0123456789"))
    assert again.read(0) == b""
    assert again.read() == b"0123456789"
    assert again.read() == b""
    assert again.read(5) == b""


def test_json_ready_turns_mappings_into_dicts() -> None:
    """Nested mappings become plain dicts; other values are kept as they are."""
    from types import MappingProxyType

    value = MappingProxyType({"a": MappingProxyType({"b": [1]}), "c": "d"})
    assert json_ready(value) == {"a": {"b": [1]}, "c": "d"}
    assert type(json_ready(value)["a"]) is dict
    assert json_ready([1]) == [1]

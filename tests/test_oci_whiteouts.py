"""Whiteouts in base layers: a deleted directory stays deleted, an opaque directory hides
what was below it, whether a ``COPY --from`` or a RUN reads the base."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl.backends.oci.copy_entries import StepInputError
from imagedsl.backends.oci.run.runc import missing_requirements
from imagedsl.store import Store
from tests.support import oci
from tests.support.oci import member, read_image, tar_bytes
from tests.support.skips import NO_ROOT, NO_TOOL, unavailable

DIR = tarfile.DIRTYPE


def _dir(name: str) -> oci.Member:
    return member(name, kind=DIR, mode=0o755)


#: Lowest layer: a tree under /data with a directory to delete and one to make opaque.
LOWER = [
    _dir("data/"),
    _dir("data/keep/"),
    member("data/keep/a.txt", data=b"a"),
    _dir("data/gone/"),
    member("data/gone/b.txt", data=b"b"),
    _dir("data/gone/sub/"),
    member("data/gone/sub/c.txt", data=b"c"),
    _dir("data/opq/"),
    member("data/opq/old.txt", data=b"old"),
    _dir("data/opq/sub/"),
    member("data/opq/sub/old2.txt", data=b"old2"),
    _dir("data/again/"),
    member("data/again/stale.txt", data=b"stale"),
]
#: Middle layer: /data/gone and /data/again whited out, /data/opq made opaque with a new file.
MIDDLE = [
    _dir("data/"),
    member("data/.wh.again", data=b""),
    member("data/.wh.gone", data=b""),
    _dir("data/opq/"),
    member("data/opq/.wh..wh..opq", data=b""),
    member("data/opq/new.txt", data=b"new"),
]
#: Top layer: /data/again made anew (its old children must not come back).
UPPER = [
    _dir("data/"),
    _dir("data/again/"),
    member("data/again/fresh.txt", data=b"fresh"),
]
#: What /data holds in the image those three layers make.
EXPECTED = {
    "data",
    "data/again",
    "data/again/fresh.txt",
    "data/keep",
    "data/keep/a.txt",
    "data/opq",
    "data/opq/new.txt",
}


@pytest.fixture(name="whiteout_base")
def fixture_whiteout_base(tmp_path: Path) -> str:
    """``oci:DIR:1``: busybox, then the three layers above."""
    layout = tmp_path / "base"
    layers = [tar_bytes([*oci.busybox_members(), *LOWER]), tar_bytes(MIDDLE), tar_bytes(UPPER)]
    oci.write_layout(layout, layers)
    return f"oci:{layout}:1"


def test_copy_from_a_base_with_whiteouts_brings_only_what_is_visible(
    whiteout_base: str, tmp_path: Path
) -> None:
    """COPY --from a stage on that base copies the visible tree: no whited-out directory,
    none of its children, nothing from below an opaque directory or a re-made one."""
    base = dsl.image(whiteout_base)
    app = dsl.scratch().copy(base.path("/data"), "/data")
    out = tmp_path / "out"
    oci.build({"base": base, "app": app}, Store(tmp_path / "store"), output=f"oci:{out}")
    _, manifest, _ = read_image(out)
    members = {m.name.rstrip("/") for m in oci.layer_members(out, manifest["layers"][-1])}
    assert members == EXPECTED
    assert not any(".wh." in name for name in members)


def test_copy_from_a_whited_out_path_is_an_error(whiteout_base: str, tmp_path: Path) -> None:
    """The deleted directory is not there to copy: an error, not its old contents."""
    base = dsl.image(whiteout_base)
    app = dsl.scratch().copy(base.path("/data/gone"), "/gone")
    with pytest.raises(StepInputError) as caught:
        oci.build({"base": base, "app": app}, Store(tmp_path / "store"))
    assert caught.value.step.startswith("COPY --from=")
    assert caught.value.problem == "/data/gone does not exist in the source stage"


def test_run_on_a_base_with_whiteouts_sees_only_what_is_visible(
    whiteout_base: str, tmp_path: Path
) -> None:
    """A RUN over that base sees the same visible tree (the layers are stacked as a runtime
    would stack them), and its own layer writes no whiteout for what it did not touch."""
    missing = missing_requirements()
    if "root" in missing:
        unavailable(NO_ROOT, "RUN steps need root")
    if missing:
        unavailable(NO_TOOL, "runc (RUN steps need it)")
    stage = dsl.image(whiteout_base).run("find /data | sort > /listing")
    out = tmp_path / "out"
    oci.build({"img": stage}, Store(tmp_path / "store"), output=f"oci:{out}")
    _, manifest, _ = read_image(out)
    top = manifest["layers"][-1]
    listing = oci.layer_file(out, top, "listing").decode().split()
    assert listing == sorted("/" + name for name in EXPECTED)
    assert {m.name for m in oci.layer_members(out, top)} == {"listing"}

"""Layer tars that lie in their headers: sizes past the end of the data, whiteouts of ``.``
and ``..``. Reading them fails at once with the entry named, whether the layer comes from a
layout, from a registry written here, or is extracted for a RUN."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl.backends.oci.filesystem import UnsafeLayerError, scan_layer
from imagedsl.backends.oci.run.rootfs import extract_layer
from imagedsl.errors import InputError
from imagedsl.store import Store
from tests.support import oci as oci_support
from tests.support.hostile import HostileServer, gzip_image, registry_handler, run_measured
from tests.support.oci import member, tar_bytes

GIB = 1 << 30


def claiming(name: str, size: int, data: bytes) -> bytes:
    """A tar whose one member's header claims ``size`` bytes but only ``data`` follows."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT) + data


class CountingReader(io.BytesIO):
    """Bytes that count how often they are read."""

    reads = 0

    def read(self, n: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(n)


LIARS = [
    pytest.param(claiming("etc/big", 64 * GIB, b"x" * 1024), 64 * GIB, id="64-GiB-over-1-KB"),
    pytest.param(claiming("etc/big", 10**18, b"x" * 1024), 10**18, id="pax-size-10e18"),
    pytest.param(
        member("etc/", kind=tarfile.DIRTYPE)[0].tobuf(format=tarfile.PAX_FORMAT)
        + claiming("etc/big", 5 * GIB, b""),
        5 * GIB,
        id="after-a-good-member",
    ),
]


@pytest.mark.parametrize(("layer", "claimed"), LIARS)
def test_a_member_larger_than_the_rest_of_the_layer_fails_at_once(
    layer: bytes, claimed: int
) -> None:
    """The scan refuses the member as soon as the layer's bytes end: a handful of reads, not
    one per claimed block (a PAX size of 10**18 would otherwise never end)."""
    stream = CountingReader(layer)
    with pytest.raises(UnsafeLayerError) as caught:
        scan_layer(stream, layer="sha256:test", diff_id="sha256:test", lower=None)
    assert caught.value.path == "etc/big"
    assert f"claims {claimed} bytes" in caught.value.problem
    assert stream.reads < 50


@pytest.mark.parametrize(("layer", "claimed"), LIARS[:2])
def test_extraction_refuses_the_lying_member_too(
    layer: bytes, claimed: int, tmp_path: Path
) -> None:
    """Extraction for a RUN checks on its own (a snapshot is never made from such a layer)."""
    dest = tmp_path / "fs"
    dest.mkdir()
    stream = CountingReader(layer)
    with pytest.raises(UnsafeLayerError) as caught:
        extract_layer(stream, dest, layer="sha256:test")
    assert caught.value.path == "etc/big"
    assert f"claims {claimed} bytes" in caught.value.problem
    assert stream.reads < 50


WHITEOUTS = [
    pytest.param("etc/.wh.", "''", id="empty"),
    pytest.param("etc/.wh..", "'.'", id="dot"),
    pytest.param("etc/.wh...", "'..'", id="dotdot"),
    pytest.param(".wh...", "'..'", id="dotdot-at-root"),
]


@pytest.mark.parametrize(("name", "shown"), WHITEOUTS)
def test_whiteouts_of_dot_and_dotdot_are_refused_by_the_scan(name: str, shown: str) -> None:
    """A whiteout must name an entry: ``.wh.``, ``.wh..`` and ``.wh...`` are refused."""
    layer = tar_bytes([member("etc/", kind=tarfile.DIRTYPE), member(name, data=b"")])
    with pytest.raises(UnsafeLayerError) as caught:
        scan_layer(io.BytesIO(layer), layer="sha256:test", diff_id="sha256:test", lower=None)
    assert caught.value.path == name
    assert f"whiteout of {shown}" in caught.value.problem


@pytest.mark.parametrize(("name", "shown"), WHITEOUTS)
def test_whiteouts_of_dot_and_dotdot_are_refused_by_extraction(
    name: str, shown: str, tmp_path: Path
) -> None:
    """Extraction refuses them as well, and removes nothing (it used to reach rmtree('..'))."""
    outside = tmp_path / "kept"
    outside.write_text("still here")
    dest = tmp_path / "snapshot"
    dest.mkdir()
    (dest / "etc").mkdir()
    (dest / "etc" / "keep").write_text("also here")
    layer = tar_bytes([member("etc/", kind=tarfile.DIRTYPE), member(name, data=b"")])
    with pytest.raises(UnsafeLayerError) as caught:
        extract_layer(io.BytesIO(layer), dest, layer="sha256:test")
    assert f"whiteout of {shown}" in caught.value.problem
    assert outside.read_text() == "still here"
    assert (dest / "etc" / "keep").read_text() == "also here"


@pytest.mark.parametrize("compress", [pytest.param(True, id="gzip"), pytest.param(False, id="tar")])
def test_a_base_with_a_lying_layer_is_refused_by_a_build(compress: bool, tmp_path: Path) -> None:
    """Building on such a base fails with the entry named, gzip-compressed or not."""
    layout = tmp_path / "base"
    hostile = claiming("etc/big", 64 * GIB, b"x" * 1024)
    oci_support.write_layout(
        layout, [tar_bytes(oci_support.busybox_members()), hostile], compress=compress
    )
    with pytest.raises(UnsafeLayerError) as caught:
        oci_support.build({"a": dsl.image(f"oci:{layout}:1").cmd("x")}, Store(tmp_path / "s"))
    assert caught.value.path == "etc/big"
    assert "more than the rest of the layer holds" in caught.value.problem


def _image(layers: list[bytes]) -> tuple[dict[str, tuple[str, bytes]], dict[str, bytes]]:
    """Manifest (tag ``1``) and blobs of an image of gzip ``layers``, for a registry."""
    return gzip_image(
        [
            (gzip.compress(tar, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest())
            for tar in layers
        ]
    )


_BUILD_FROM_REGISTRY = """
import imagedsl as dsl
from tests.support import oci as oci_support
from imagedsl.backends.oci.filesystem import UnsafeLayerError
from imagedsl.store import Store
try:
    oci_support.build({{"a": dsl.image({reference!r}).cmd("x")}}, Store({store!r}))
except UnsafeLayerError as error:
    _report(error=type(error).__name__, path=error.path, problem=error.problem)
else:
    _report(error=None)
"""

LAYER_MAKERS: list[Callable[[], bytes]] = [
    lambda: claiming("etc/big", 10**18, b"x" * 1024),
    lambda: tar_bytes([member("etc/", kind=tarfile.DIRTYPE), member("etc/.wh...", data=b"")]),
]


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        pytest.param(LAYER_MAKERS[0], "claims 1000000000000000000 bytes", id="pax-size"),
        pytest.param(LAYER_MAKERS[1], "whiteout of '..'", id="whiteout-dotdot"),
    ],
)
def test_hostile_layers_from_a_registry_are_refused_with_bounded_memory(
    make: Callable[[], bytes], problem: str, tmp_path: Path
) -> None:
    """A registry written here serves a base whose second layer is hostile: the build pulls
    it, refuses it with the entry named, and stays far below 200 MB."""
    documents, blobs = _image([tar_bytes(oci_support.busybox_members()), make()])
    with HostileServer(registry_handler(documents, blobs)) as server:
        code = _BUILD_FROM_REGISTRY.format(
            reference=f"{server.host}/hostile:1", store=str(tmp_path / "s")
        )
        found = run_measured(code)
    assert found["error"] == "UnsafeLayerError"
    assert problem in found["problem"]
    assert found["peak_rss_kib"] < 200 * 1024


# -- archives in a build context (ADD unpacks them) ----------------------------------------------


@pytest.mark.parametrize(
    ("archive", "problem"),
    [
        pytest.param(tar_bytes([member("../escape", data=b"x")]), "'..'", id="dotdot"),
        pytest.param(claiming("big", 64 * GIB, b"x" * 1024), "damaged archive", id="64-GiB-claim"),
        pytest.param(
            gzip.compress(claiming("big", 64 * GIB, b"x" * 1024)),
            "damaged archive",
            id="gzip-claim",
        ),
        pytest.param(
            gzip.compress(tar_bytes([member("a", data=os.urandom(8000))]))[:-600],
            "damaged archive",
            id="cut-gzip",
        ),
    ],
)
def test_hostile_archives_in_the_context_are_refused(
    archive: bytes, problem: str, tmp_path: Path
) -> None:
    """ADD of a context archive whose members climb out, or claim more than it holds, or
    whose compression is cut, is the step's input error, with nothing written outside."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "vendor.tar.gz").write_bytes(archive)
    base = oci_support.make_busybox_layout(tmp_path / "base")
    stage = dsl.image(base).add(dsl.context(ctx).file("vendor.tar.gz"), "/opt/")
    with pytest.raises(InputError) as caught:
        oci_support.build({"a": stage}, Store(tmp_path / "s"), output=f"oci:{tmp_path / 'out'}")
    assert problem in str(caught.value)
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "out").exists()

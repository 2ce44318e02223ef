"""Hostile base images, corrupt blobs, and builds killed mid-write."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl.backends.oci.filesystem import UnsafeLayerError
from imagedsl.oci.blobs import BlobDigestError
from imagedsl.store import Store, StoreArea, StoreWarning
from tests.support import REPO_ROOT, oci
from tests.support.oci import layer_file, member, read_image, tar_bytes

OK_DIR = member("etc/", kind=tarfile.DIRTYPE, mode=0o755)
HOSTILE = [
    pytest.param([member("../escape.txt", data=b"x")], "../escape.txt", "'..'", id="dotdot"),
    pytest.param(
        [member("a/../../escape.txt", data=b"x")], "a/../../escape.txt", "'..'", id="inner-dotdot"
    ),
    pytest.param([member("/etc/abs.txt", data=b"x")], "/etc/abs.txt", "absolute", id="absolute"),
    pytest.param(
        [member("etc/evil", kind=tarfile.SYMTYPE, linkname="../../../../tmp/x")],
        "etc/evil",
        "outside the root",
        id="symlink-escape",
    ),
    pytest.param(
        [
            member("etc/", kind=tarfile.DIRTYPE, mode=0o755),
            member("etc/link", kind=tarfile.SYMTYPE, linkname="/tmp"),
            member("etc/link/planted", data=b"x"),
        ],
        "etc/link/planted",
        "symlink",
        id="below-symlink",
    ),
    pytest.param(
        [member("etc/hard", kind=tarfile.LNKTYPE, linkname="../../etc/passwd")],
        "etc/hard",
        "outside the root",
        id="hardlink-dotdot",
    ),
    pytest.param(
        [member("etc/hard", kind=tarfile.LNKTYPE, linkname="/etc/shadow")],
        "etc/hard",
        "outside the root",
        id="hardlink-absolute",
    ),
    pytest.param(
        [member("etc/hard", kind=tarfile.LNKTYPE, linkname="etc/nothing")],
        "etc/hard",
        "no file",
        id="hardlink-dangling",
    ),
    pytest.param(
        [member("dev/null", kind=tarfile.CHRTYPE, mode=0o666)], "dev/null", "device", id="chardev"
    ),
    pytest.param(
        [member("dev/sda", kind=tarfile.BLKTYPE, mode=0o660)], "dev/sda", "device", id="blockdev"
    ),
    pytest.param(
        [OK_DIR, member("etc/x", data=b"1"), member("etc/x", data=b"2")],
        "etc/x",
        "twice",
        id="duplicate",
    ),
]


@pytest.mark.parametrize(("members", "path", "problem"), HOSTILE)
def test_hostile_base_layers_are_refused(
    members: list[oci.Member], path: str, problem: str, tmp_path: Path
) -> None:
    """A base layer that could escape the root is refused, naming the entry; nothing is written
    outside the store (nothing is ever extracted)."""
    layout = tmp_path / "base"
    oci.write_layout(layout, [tar_bytes(oci.busybox_members()), tar_bytes(members)])
    watched = tmp_path / "watched"
    watched.mkdir()
    before = sorted(p.name for p in Path("/tmp").iterdir())
    store = Store(tmp_path / "store")
    stages = {"a": dsl.image(f"oci:{layout}:1").cmd("x")}
    with pytest.raises(UnsafeLayerError) as caught:
        oci.build(stages, store, output=f"oci:{tmp_path / 'out'}")
    assert caught.value.path == path
    assert problem in caught.value.problem
    assert not (tmp_path / "escape.txt").exists()
    assert not Path("/tmp/x").exists() or "x" in before
    assert not (tmp_path / "out").exists()
    assert list(watched.iterdir()) == []
    index_dir = store.area(StoreArea.OCI_INDEX)
    known = {p.stem for p in index_dir.rglob("*.json")} if index_dir.exists() else set()
    hostile_diff = hashlib.sha256(tar_bytes(members)).hexdigest()
    assert hostile_diff not in known


def test_safe_layers_with_whiteouts_and_links_are_accepted(tmp_path: Path) -> None:
    """Absolute symlinks (inside the root), in-root hard links and whiteouts are ordinary."""
    upper = [
        member("bin/", kind=tarfile.DIRTYPE, mode=0o755),
        member("bin/.wh.true", data=b""),
        member("bin/bb", kind=tarfile.LNKTYPE, linkname="bin/busybox"),
        member("bin/abs", kind=tarfile.SYMTYPE, linkname="/bin/busybox"),
    ]
    layout = tmp_path / "base"
    oci.write_layout(layout, [tar_bytes(oci.busybox_members()), tar_bytes(upper)])
    store = Store(tmp_path / "store")
    builder = dsl.image(f"oci:{layout}:1")
    app = dsl.scratch().copy(builder.path("/bin"), "/bin")
    oci.build({"builder": builder, "app": app}, store, output=f"oci:{tmp_path / 'out'}")
    _, manifest, _ = read_image(tmp_path / "out")
    members = {m.name: m for m in oci.layer_members(tmp_path / "out", manifest["layers"][0])}
    assert "bin/true" not in members  # deleted by the whiteout
    assert members["bin/bb"].islnk()
    assert members["bin/bb"].linkname == "bin/busybox"
    assert members["bin/abs"].linkname == "/bin/busybox"


def test_corrupt_base_blob_is_detected(tmp_path: Path) -> None:
    """A base layer whose bytes do not match its digest is refused when read."""
    layout = tmp_path / "base"
    oci.write_layout(layout, [tar_bytes(oci.busybox_members())])
    _, manifest, _ = read_image(layout)
    blob = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    store = Store(tmp_path / "store")
    with pytest.raises(BlobDigestError) as caught:
        oci.build({"a": dsl.image(f"oci:{layout}:1").cmd("x")}, store)
    assert caught.value.expected == manifest["layers"][0]["digest"]
    assert not store.blob_path(caught.value.expected).exists()


def test_wrong_diff_id_is_detected(tmp_path: Path) -> None:
    """A layer whose tar does not hash to the config's diff_id is refused."""
    layout = tmp_path / "base"
    oci.write_layout(layout, [tar_bytes(oci.busybox_members())])
    _, manifest, config = read_image(layout)
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    data = json.dumps(config).encode()
    new = oci.sha256(data)
    (layout / "blobs" / "sha256" / new[7:]).write_bytes(data)
    manifest["config"] = {**manifest["config"], "digest": new, "size": len(data)}
    mdata = json.dumps(manifest).encode()
    mdigest = oci.sha256(mdata)
    (layout / "blobs" / "sha256" / mdigest[7:]).write_bytes(mdata)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=mdigest, size=len(mdata))
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(BlobDigestError) as caught:
        oci.build({"a": dsl.image(f"oci:{layout}:1").cmd("x")}, Store(tmp_path / "s"))
    assert caught.value.expected == "sha256:" + "0" * 64  # the diff_id the config claims
    assert caught.value.actual == oci.sha256(tar_bytes(oci.busybox_members()))


def test_corrupt_store_blob_is_detected_when_read(tmp_path: Path) -> None:
    """A store blob damaged after it was written is caught before a later build uses it: a
    warning, the blob is dropped and brought in again from the base, and the image is right."""
    layout = tmp_path / "base"
    base = oci.make_busybox_layout(layout)
    store = Store(tmp_path / "store")
    builder = dsl.image(base)
    oci.build({"b": builder}, store)
    _, manifest, _ = read_image(layout)
    stored = store.blob_path(manifest["layers"][0]["digest"])
    stored.chmod(0o644)
    data = bytearray(stored.read_bytes())
    data[-20] ^= 0x01
    stored.write_bytes(bytes(data))
    app = dsl.scratch().copy(builder.path("/bin/busybox"), "/busybox")
    out = tmp_path / "out"
    with pytest.warns(StoreWarning, match="is damaged") as warned:
        oci.build({"b": builder, "app": app}, store, target="app", output=f"oci:{out}:app")
    assert manifest["layers"][0]["digest"] in str(warned[0].message)
    assert str(store.root) in str(warned[0].message)
    assert oci.sha256(stored.read_bytes()) == manifest["layers"][0]["digest"]  # made again
    _, built, _ = read_image(out, "app")
    assert layer_file(out, built["layers"][0], "busybox") == layer_file(
        layout, manifest["layers"][0], "bin/busybox"
    )


_KILL_SCRIPT = """
import imagedsl as dsl
from tests.support import oci
from imagedsl.oci.blobs import BlobDigestError
from imagedsl.store import Store
src = dsl.context({ctx!r})
app = dsl.image({base!r}).copy(src, "/data").cmd("/bin/sh")
oci.build({{"app": app}}, Store({store!r}), output={output!r})
"""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed to its digest meanwhile
        return 0


def _verify_store(store: Path) -> None:
    blobs = Store(store).area(StoreArea.BLOBS)
    for blob in blobs.iterdir() if blobs.exists() else []:
        if blob.name.startswith("."):
            continue  # an unfinished temporary file, never under a digest's name
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def _verify_layout(layout: Path) -> str | None:
    index_file = layout / "index.json"
    if not index_file.exists():
        return None
    digest, manifest, _ = read_image(layout)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = layout / "blobs" / "sha256" / descriptor["digest"][7:]
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == descriptor["digest"][7:]
    return digest


@pytest.mark.slow
def test_kill_9_mid_write_leaves_store_and_output_consistent(tmp_path: Path) -> None:
    """SIGKILL while layer bytes are being written: every blob under a digest's name is whole,
    the output is absent or complete, and the next build finishes with the same image."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for i in range(64):
        (ctx / f"f{i}.bin").write_bytes(os.urandom(1 << 20))
    base = oci.make_busybox_layout(tmp_path / "base")
    store, output = tmp_path / "store", tmp_path / "out"
    script = _KILL_SCRIPT.format(
        ctx=str(ctx), base=base, store=str(store), output=f"oci:{output}:v1"
    )
    blobs = Store(store).area(StoreArea.BLOBS)
    killed_mid_write = False
    for _attempt in range(3):
        process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if any(_size(p) > (1 << 20) for p in blobs.glob(".incoming.*")):
                os.kill(process.pid, signal.SIGKILL)
                killed_mid_write = True
                break
            time.sleep(0.002)
        process.wait()
        if killed_mid_write:
            break
    assert killed_mid_write, "the build finished before it could be killed mid-write"
    _verify_store(store)
    assert _verify_layout(output) is None
    finished = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO_ROOT)
    assert finished.returncode == 0
    _verify_store(store)
    digest = _verify_layout(output)
    clean = oci.build(
        {"app": dsl.image(base).copy(dsl.context(ctx), "/data").cmd("/bin/sh")},
        Store(tmp_path / "clean"),
    )[0]
    assert digest == clean.image.manifest_digest


def test_leftovers_of_killed_builds_are_swept(tmp_path: Path) -> None:
    """Old temporary files in the store are removed by the next build; fresh ones are kept."""
    store = Store(tmp_path / "store")
    blobs = store.area(StoreArea.BLOBS)
    blobs.mkdir(parents=True)
    old, fresh = blobs / ".incoming.old.tmp", blobs / ".incoming.fresh.tmp"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    base = oci.make_busybox_layout(tmp_path / "base")
    oci.build({"a": dsl.image(base).cmd("x")}, store)
    assert not old.exists()
    assert fresh.exists()


_CONCURRENT_SCRIPT = """
import sys
import imagedsl as dsl
from tests.support import oci
from imagedsl.oci.blobs import BlobDigestError
from imagedsl.store import Store
src = dsl.context({ctx!r})
app = dsl.image({base!r}).copy(src, "/data", layers="auto").cmd("/bin/sh")
built, _ = oci.build({{"app": app}}, Store({store!r}), output=sys.argv[1])
print(built.image.manifest_digest)
"""


def test_concurrent_builds_share_one_store(tmp_path: Path) -> None:
    """Builds running at once in one store both finish, with the same image, and every blob
    in the store is whole."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for i in range(30):
        (ctx / f"f{i}.txt").write_text(f"file {i}\n" * 20_000)
    base = oci.make_busybox_layout(tmp_path / "base")
    store = tmp_path / "store"
    script = _CONCURRENT_SCRIPT.format(ctx=str(ctx), base=base, store=str(store))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"oci:{tmp_path / f'out{i}'}:v1"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    digests = {process.communicate(timeout=120)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(digests) == 1
    _verify_store(store)
    for i in range(3):
        assert _verify_layout(tmp_path / f"out{i}") in digests

"""Our images checked by tools nobody here wrote: skopeo, umoci, runc, and Docker itself."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import imagedsl as dsl
from imagedsl.backends.oci.backend import OCIBackend
from imagedsl.bases import BaseNotFoundError
from imagedsl.store import Store
from tests.support import oci
from tests.support.oci import build, read_image, rootfs_listing, run, tool
from tests.support.skips import require_root, require_tool

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.docker import DockerEngine, RegistryServer


@pytest.fixture(name="base", scope="module")
def fixture_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``oci:DIR:1``: the busybox base as an OCI layout."""
    return oci.make_busybox_layout(tmp_path_factory.mktemp("base"))


@pytest.fixture(name="ctx")
def fixture_ctx(tmp_path: Path) -> Path:
    """A context with a script, nested files, an executable and a symlink."""
    root = tmp_path / "ctx"
    (root / "app" / "lib" / "deep").mkdir(parents=True)
    (root / "app" / "hello.sh").write_text('#!/bin/sh\necho "hello from $GREETING"\n')
    (root / "app" / "hello.sh").chmod(0o755)
    (root / "app" / "lib" / "data.txt").write_text("data\n" * 1000)
    (root / "app" / "lib" / "deep" / "bytes.bin").write_bytes(os.urandom(100_000))
    (root / "app" / "lib" / "private").write_text("secret-ish\n")
    (root / "app" / "lib" / "private").chmod(0o600)
    (root / "app" / "latest").symlink_to("lib/data.txt")
    return root


def _app(base: str, ctx: Path) -> dict[str, dsl.Stage]:
    src = dsl.context(ctx)
    app = (
        dsl.image(base)
        .env(GREETING="imagedsl")
        .copy(src.dir("app"), "/app", chown="app", layers="auto")
        .copy(src.file("app/hello.sh"), "/usr/local/bin/hello", chmod=0o750)
        .entrypoint(["/app/hello.sh"])
    )
    return {"app": app}


def _expected_app(ctx: Path) -> dict[str, tuple[str, int, int, int, str]]:
    """What the build asked for under /app: context files, normalised modes, owned by app."""
    expected: dict[str, tuple[str, int, int, int, str]] = {}
    for path in sorted((ctx / "app").rglob("*")):
        rel = "app/" + str(path.relative_to(ctx / "app"))
        if path.is_symlink():
            expected[rel] = ("symlink", 0o777, 1000, 1000, os.readlink(path))
        elif path.is_dir():
            expected[rel] = ("dir", 0o755, 1000, 1000, "")
        else:
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            expected[rel] = ("file", mode, 1000, 1000, digest)
    expected["app"] = ("dir", 0o755, 1000, 1000, "")
    return expected


def _expected_base() -> dict[str, tuple[str, int, int, int, str]]:
    """The busybox base as written by the test helper."""
    expected: dict[str, tuple[str, int, int, int, str]] = {}
    for info, data in oci.busybox_members():
        name = info.name.rstrip("/")
        if info.isdir():
            expected[name] = ("dir", info.mode, info.uid, info.gid, "")
        elif info.issym():
            expected[name] = ("symlink", 0o777, info.uid, info.gid, info.linkname)
        else:
            digest = hashlib.sha256(data or b"").hexdigest()
            expected[name] = ("file", info.mode, info.uid, info.gid, digest)
    return expected


def test_skopeo_inspects_every_output(base: str, ctx: Path, tmp_path: Path) -> None:
    """skopeo reads the layout and both archives, and sees our digest and layers."""
    require_tool("skopeo")
    store = Store(tmp_path / "store")
    built, _ = build(_app(base, ctx), store, output=f"oci:{tmp_path / 'layout'}:v1")
    build(_app(base, ctx), store, output=f"oci-archive:{tmp_path / 'a.tar'}:v1")
    layers = [layer.digest for layer in built.image.layers]
    for reference in (f"oci:{tmp_path / 'layout'}:v1", f"oci-archive:{tmp_path / 'a.tar'}:v1"):
        inspected = json.loads(run("skopeo", "inspect", reference))
        assert inspected["Digest"] == built.image.manifest_digest
        assert inspected["Layers"] == layers
        assert "GREETING=imagedsl" in inspected["Env"]
    as_docker = json.loads(run("skopeo", "inspect", f"docker-archive:{tmp_path / 'a.tar'}"))
    assert len(as_docker["Layers"]) == len(layers)
    raw = json.loads(run("skopeo", "inspect", "--config", f"oci:{tmp_path / 'layout'}:v1"))
    assert raw["rootfs"]["diff_ids"] == [layer.diff_id for layer in built.image.layers]


def test_umoci_unpacks_what_was_asked_for(base: str, ctx: Path, tmp_path: Path) -> None:
    """umoci checks every diff_id while unpacking; the rootfs matches build.py file by file."""
    require_tool("umoci")
    require_root("umoci keeps owners only as root")
    store = Store(tmp_path / "store")
    build(_app(base, ctx), store, output=f"oci:{tmp_path / 'layout'}:v1")
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{tmp_path / 'layout'}:v1", str(bundle))
    listing = rootfs_listing(bundle / "rootfs")
    expected = {**_expected_base(), **_expected_app(ctx)}
    hello = hashlib.sha256((ctx / "app" / "hello.sh").read_bytes()).hexdigest()
    expected["usr/local/bin/hello"] = ("file", 0o750, 0, 0, hello)
    for parent in ("usr", "usr/local", "usr/local/bin"):
        expected[parent] = ("dir", 0o755, 0, 0, "")
    assert listing == expected
    if tool("runc") is not None:
        config_path = bundle / "config.json"
        config = json.loads(config_path.read_text())
        config["process"]["terminal"] = False
        config_path.write_text(json.dumps(config))
        container = f"imagedsl-test-{uuid.uuid4().hex[:8]}"
        result = subprocess.run(
            [tool("runc") or "runc", "run", "--bundle", str(bundle), container],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        subprocess.run([tool("runc") or "runc", "delete", "-f", container], check=False)
        assert result.stdout == "hello from imagedsl\n", result.stderr


@pytest.fixture(name="tag")
def fixture_tag(docker_engine: DockerEngine) -> Iterator[str]:
    """A unique image name in the test namespace, removed afterwards."""
    name = f"imagedsl-test/oci-{uuid.uuid4().hex[:10]}"
    yield name
    listed = docker_engine.run("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", name)
    for line in listed.stdout.split():
        docker_engine.run("image", "rm", "--force", line, check=False)


def _backend(engine: DockerEngine, **options: object) -> OCIBackend:
    return OCIBackend(engine=lambda: engine, **options)  # type: ignore[arg-type]


def test_docker_loads_and_runs_the_archive(
    docker_engine: DockerEngine, base: str, ctx: Path, tmp_path: Path, tag: str
) -> None:
    """``docker load`` takes the archive, and the image runs and prints what it should."""
    archive = tmp_path / "image.tar"
    build(
        _app(base, ctx),
        Store(tmp_path / "store"),
        output=f"docker-archive:{archive}:{tag}:1",
        backend=_backend(docker_engine),
    )
    docker_engine.run("load", "-i", str(archive))
    assert docker_engine.run("run", "--rm", f"{tag}:1").stdout == "hello from imagedsl\n"
    listed = docker_engine.run("run", "--rm", "--entrypoint", "/bin/ls", f"{tag}:1", "-ln", "/app")
    assert " 1000 " in listed.stdout


def test_docker_reads_stored_pieces_back(
    docker_engine: DockerEngine, base: str, tmp_path: Path, tag: str
) -> None:
    """A layer whose random bytes went in as stored deflate blocks, between deflated text,
    loads into the engine (its own gzip reader checks the CRC and the diff_id) and gives
    every byte back."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    noise = random.Random(20261203).randbytes(3 << 20)
    text = b"".join(b"line %d of a text file\n" % i for i in range(100_000))
    (ctx / "noise.bin").write_bytes(noise)
    (ctx / "text.txt").write_bytes(text)
    app = dsl.image(base).copy(dsl.context(ctx), "/data").entrypoint(["/bin/sh"])
    archive = tmp_path / "image.tar"
    store = Store(tmp_path / "store")
    built, _ = build({"app": app}, store, output=f"docker-archive:{archive}:{tag}:3")
    blob = store.blob_path(built.image.layers[-1].digest).read_bytes()
    assert sum(noise[at : at + 1024] in blob for at in range(1 << 20, 2 << 20, 1 << 16)) >= 14
    docker_engine.run("load", "-i", str(archive))
    sums = docker_engine.run(
        "run", "--rm", f"{tag}:3", "-c", "cd /data && sha256sum noise.bin text.txt"
    ).stdout.split()
    assert sums[0::2] == [hashlib.sha256(noise).hexdigest(), hashlib.sha256(text).hexdigest()]


def test_docker_output_and_daemon_base(
    docker_engine: DockerEngine, busybox_image: str, ctx: Path, tmp_path: Path, tag: str
) -> None:
    """``docker:TAG`` loads the image; a ``docker-daemon:`` base is taken from the engine, its
    layers reused as they are."""
    store = Store(tmp_path / "store")
    src = dsl.context(ctx)
    app = dsl.image(f"docker-daemon:{busybox_image}").copy(src.dir("app"), "/app")
    stages = {"app": app.env(GREETING="the engine").cmd(["/app/hello.sh"])}
    built, _ = build(stages, store, output=f"docker:{tag}:2", backend=_backend(docker_engine))
    assert built.result.image == f"{tag}:2"
    assert docker_engine.run("run", "--rm", f"{tag}:2").stdout == "hello from the engine\n"
    base_layers = json.loads(
        docker_engine.run(
            "image", "inspect", "--format", "{{json .RootFS.Layers}}", busybox_image
        ).stdout
    )
    assert [layer.diff_id for layer in built.image.layers[: len(base_layers)]] == base_layers
    again, _ = build(stages, store, output=f"docker:{tag}:2", backend=_backend(docker_engine))
    assert again.image.manifest_digest == built.image.manifest_digest
    assert again.stats.layers_written == 0


def test_docker_archive_base(
    docker_engine: DockerEngine, busybox_image: str, ctx: Path, tmp_path: Path, tag: str
) -> None:
    """A ``docker save`` archive is a base; its uncompressed layers are kept uncompressed."""
    saved = tmp_path / "busybox.tar"
    docker_engine.run("save", "-o", str(saved), busybox_image)
    src = dsl.context(ctx)
    app = dsl.image(f"docker-archive:{saved}:{busybox_image}").copy(src.dir("app"), "/app")
    stages = {"app": app.env(GREETING="an archive").cmd(["/app/hello.sh"])}
    built, _ = build(
        stages, Store(tmp_path / "store"), output=f"docker:{tag}:3", backend=_backend(docker_engine)
    )
    assert built.image.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar"
    assert docker_engine.run("run", "--rm", f"{tag}:3").stdout == "hello from an archive\n"


def test_podman_loads_the_archive(base: str, ctx: Path, tmp_path: Path) -> None:
    """``podman load`` takes the same archive."""
    require_tool("podman")
    archive = tmp_path / "image.tar"
    built, _ = build(_app(base, ctx), Store(tmp_path / "store"), output=f"oci-archive:{archive}:v1")
    root = Path(tempfile.mkdtemp(prefix="idsl-pm-"))  # podman wants a short runroot
    podman = ["podman", "--root", str(root / "r"), "--runroot", str(root / "s"),
              "--storage-driver", "vfs"]  # fmt: skip
    try:
        out = run(*podman, "load", "-i", str(archive))
        assert "Loaded image" in out
        listed = run(*podman, "image", "ls", "--digests", "--format", "{{.Digest}}")
        assert built.image.manifest_digest in listed.split()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_skopeo_copies_zstd_layouts(base: str, ctx: Path, tmp_path: Path) -> None:
    """A zstd image is read and copied by skopeo, which checks every blob's digest."""
    require_tool("skopeo")
    built, _ = build(
        _app(base, ctx),
        Store(tmp_path / "store"),
        output=f"oci:{tmp_path / 'z'}:z",
        backend=OCIBackend(compression="zstd"),
    )
    run("skopeo", "copy", f"oci:{tmp_path / 'z'}:z", f"oci:{tmp_path / 'copy'}:z")
    inspected = json.loads(run("skopeo", "inspect", f"oci:{tmp_path / 'copy'}:z"))
    assert inspected["Digest"] == built.image.manifest_digest
    assert read_image(tmp_path / "copy", "z")[1]["layers"][-1]["mediaType"].endswith("+zstd")


def test_registry_base(registry: RegistryServer, base: str, ctx: Path, tmp_path: Path) -> None:
    """A base pulled from a registry (checked by the registry client) keeps its layers as they
    are; the manifest names its digest; an unknown tag is a clear error."""
    require_tool("skopeo")
    remote = f"{registry.host}/imagedsl-test/oci-base"
    layout = base.removeprefix("oci:").rsplit(":", 1)[0]
    run("skopeo", "copy", "--dest-tls-verify=false", base, f"docker://{remote}:1")
    pushed = json.loads(run("skopeo", "inspect", "--tls-verify=false", f"docker://{remote}:1"))
    src = dsl.context(ctx)
    stages = {"app": dsl.image(f"{remote}:1").copy(src.dir("app"), "/app").cmd(["/app/hello.sh"])}
    store = Store(tmp_path / "store")
    built, _ = build(stages, store, output=f"oci:{tmp_path / 'out'}:v1")
    _, manifest, _ = read_image(tmp_path / "out", "v1")
    assert manifest["annotations"]["org.opencontainers.image.base.digest"] == pushed["Digest"]
    assert manifest["annotations"]["org.opencontainers.image.base.name"] == f"{remote}:1"
    base_layers = read_image(Path(layout), "1")[1]["layers"]
    assert [layer["digest"] for layer in manifest["layers"][:1]] == pushed["Layers"]
    assert manifest["layers"][0] == base_layers[0]
    again, _ = build(stages, store)
    assert again.image.manifest_digest == built.image.manifest_digest
    assert again.stats.layers_written == 0
    with pytest.raises(BaseNotFoundError) as missing:
        build({"app": dsl.image(f"{remote}:missing").cmd("x")}, store)
    assert [place for place, _ in missing.value.places][-1] == f"the registry {registry.host}"

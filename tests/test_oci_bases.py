"""Where the OCI backend finds a base: the store (by content identity), then the local engine,
then the registry; one reference (no ``docker-daemon:``) works under both backends."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from imagedsl.api import BuildSession
from imagedsl.backends.engine import DockerEngine
from imagedsl.backends.oci.backend import OCIBackend
from imagedsl.bases import BaseNotFoundError
from imagedsl.engine_api import EngineAPI, LocalImages
from imagedsl.planner import PlanStatus
from imagedsl.registry.client import RegistryClient
from imagedsl.store import Store
from tests.support.docker import RegistryServer
from tests.support.oci import layer_members, read_image
from tests.support.registry import make_image


def write_build(directory: Path, base: str) -> Path:
    """A build file FROM ``base`` that adds one context file (no RUN: no runtime needed)."""
    (directory / "ctx").mkdir(exist_ok=True)
    (directory / "ctx" / "f.txt").write_text("f\n")
    path = directory / "build.py"
    path.write_text(
        "import imagedsl as dsl\n\n"
        "src = dsl.context('ctx')\n"
        f"app = dsl.image({base!r}).copy(src.file('f.txt'), '/f.txt')\n"
    )
    return path


def no_engine() -> LocalImages:
    """Image lookups with no engine to ask."""
    return LocalImages([])


def files_of(layout: Path, tag: str) -> dict[str, bytes]:
    """Regular files of every layer of an image in a layout: path -> content (last wins)."""
    _, manifest, _ = read_image(layout, tag)
    found: dict[str, bytes] = {}
    for descriptor in manifest["layers"]:
        data = (layout / "blobs" / "sha256" / descriptor["digest"][7:]).read_bytes()
        if descriptor["mediaType"].endswith("+gzip"):
            data = gzip.decompress(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                handle = archive.extractfile(member)
                if handle is not None:
                    found[member.name] = handle.read()
    return found


def test_an_engine_image_builds_without_a_prefix(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """``dsl.image(NAME)`` of an image only the engine has builds with --backend oci, keyed
    as with docker-daemon:, and later from the store alone."""
    image_id = docker_engine.run("image", "inspect", "--format", "{{.Id}}", busybox_image)
    engine_layers = json.loads(
        docker_engine.run(
            "image", "inspect", "--format", "{{json .RootFS.Layers}}", busybox_image
        ).stdout
    )
    path = write_build(tmp_path, busybox_image)
    store = tmp_path / "store"
    session = BuildSession(path, store=store)
    planned = session.plan()
    assert planned.steps[0].node.preimage["digest"] == image_id.stdout.strip()
    out = tmp_path / "out"
    outcome = session.build(OCIBackend(), output=f"oci:{out}:t")
    assert outcome.result.digest is not None
    _, manifest, config = read_image(out, "t")
    assert config["rootfs"]["diff_ids"][: len(engine_layers)] == engine_layers
    assert "f.txt" in {m.name for m in layer_members(out, manifest["layers"][-1])}
    assert [s.status for s in session.plan().steps] == [PlanStatus.HIT, PlanStatus.HIT]

    (tmp_path / "daemon").mkdir()
    prefixed = write_build(tmp_path / "daemon", f"docker-daemon:{busybox_image}")
    other = BuildSession(prefixed, store=store).plan()
    assert other.steps[0].key == planned.steps[0].key

    again = session.build(OCIBackend(images=no_engine), output=f"oci:{tmp_path / 'again'}:t")
    assert again.result.digest == outcome.result.digest


def push(registry: RegistryServer, tmp_path: Path, name: str, content: bytes) -> tuple[str, str]:
    """Push a one-layer image holding /etc/version; return its manifest and config digests."""
    store = Store(tmp_path / f"push-{content.hex()}")
    manifest = make_image(store, [{"etc/version": content}])
    with RegistryClient() as client:
        client.push(store, manifest, f"{registry.host}/{name}")
    config = json.loads(store.blob_path(manifest.digest).read_bytes())["config"]["digest"]
    return manifest.digest, config


def test_a_registry_only_base_is_pulled_as_pinned(registry: RegistryServer, tmp_path: Path) -> None:
    """A base no engine has comes from the registry; once pinned (plan --resolve), the build
    pulls the pinned image by its manifest digest even after the tag moved upstream."""
    _, first_image = push(registry, tmp_path, "base:1", b"1")
    path = write_build(tmp_path, f"{registry.host}/base:1")
    session = BuildSession(path, store=tmp_path / "store")
    session.resolve_bases()
    planned = session.plan()
    assert planned.steps[0].node.preimage["digest"] == first_image
    push(registry, tmp_path, "base:1", b"2")  # the tag moves upstream

    fresh = BuildSession(path, store=tmp_path / "fresh-store")
    fresh.build(OCIBackend(images=no_engine), output=f"oci:{tmp_path / 'pinned'}:t")
    assert files_of(tmp_path / "pinned", "t")["etc/version"] == b"1"

    (tmp_path / "imagedsl.lock").unlink()
    unpinned = BuildSession(path, store=tmp_path / "store")
    unpinned.build(OCIBackend(images=no_engine), output=f"oci:{tmp_path / 'moved'}:t")
    assert files_of(tmp_path / "moved", "t")["etc/version"] == b"2"


def test_a_base_found_nowhere_names_every_place(
    registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error says what the store, the engine and the registry each had."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'absent.sock'}")
    _, image = push(registry, tmp_path, "base:1", b"1")
    path = write_build(tmp_path, f"{registry.host}/base:1")
    session = BuildSession(path, store=tmp_path / "store")
    session.resolve_bases()
    push(registry, tmp_path, "base:1", b"2")
    lock = json.loads((tmp_path / "imagedsl.lock").read_text())
    for platforms in lock["images"].values():
        platforms["linux/amd64"].pop("manifest")  # only the identity: pulled by tag, it differs
    (tmp_path / "imagedsl.lock").write_text(json.dumps(lock))
    with pytest.raises(BaseNotFoundError) as missing:
        BuildSession(path, store=tmp_path / "store").build(OCIBackend())
    places = dict(missing.value.places)
    assert missing.value.identity == image
    assert places["the store"] == f"no image {image}"
    assert "no engine answered" in places["the local engine"]
    assert places[f"the registry {registry.host}"].startswith(f"{registry.host}/base:1 is sha256:")
    assert missing.value.exit_code == 2


def test_engine_lookups_use_the_engines_api(
    docker_engine: DockerEngine, busybox_image: str
) -> None:
    """The engine the tests use answers image lookups over its socket with the image ID."""
    found = LocalImages(EngineAPI.candidates()).image(busybox_image)
    assert found is not None
    expected = docker_engine.run("image", "inspect", "--format", "{{.Id}}", busybox_image)
    assert found.id == expected.stdout.strip()
    assert found.runs_on("linux/amd64")


def test_an_engine_image_from_a_registry_comes_from_it(
    registry: RegistryServer,
    docker_engine: DockerEngine,
    busybox_image: str,
    tmp_path: Path,
) -> None:
    """An image the engine pushed to the name's registry is pulled from there (its layers as
    the registry holds them); with the registry gone, it is exported from the engine."""
    name = f"{registry.host}/pushed-busybox:1"
    docker_engine.run("tag", busybox_image, name)
    try:
        docker_engine.run("push", name)
        pushed = json.loads(
            docker_engine.run("image", "inspect", "--format", "{{json .RepoDigests}}", name).stdout
        )
        path = write_build(tmp_path, name)
        session = BuildSession(path, store=tmp_path / "store")
        session.build(OCIBackend(), output=f"oci:{tmp_path / 'pulled'}:t")
        _, manifest, _ = read_image(tmp_path / "pulled", "t")
        assert manifest["layers"][0]["mediaType"].endswith("+gzip")  # as docker push wrote it
        assert manifest["annotations"]["org.opencontainers.image.base.digest"] in {
            text.partition("@")[2] for text in pushed
        }

        registry.stop()
        exported = BuildSession(path, store=tmp_path / "other-store")
        exported.build(OCIBackend(), output=f"oci:{tmp_path / 'exported'}:t")
        _, manifest, _ = read_image(tmp_path / "exported", "t")
        assert manifest["layers"][0]["mediaType"].endswith(".tar")  # docker save's layers
    finally:
        docker_engine.run("image", "rm", "--force", name, check=False)

"""The remote cache: records and layers as an OCI artifact in a real registry, shared by stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

import imagedsl as dsl
from imagedsl.backends.oci.backend import OCIBackend, layer_cache_path
from imagedsl.dsl import Stage
from imagedsl.oci.mediatypes import OCI_EMPTY
from imagedsl.planner import PlanStatus, plan
from imagedsl.registry.auth import DockerConfig
from imagedsl.registry.client import RegistryClient
from imagedsl.registry.transport import RetryPolicy
from imagedsl.remote_cache import (
    CACHE_ARTIFACT_TYPE,
    RECORDS_MEDIA_TYPE,
    CacheBundle,
    RemoteCacheError,
    collect,
    export_cache,
    fetch_cache,
    import_layers,
    import_records,
    parse_cache_reference,
)
from imagedsl.store import Store, StoreArea
from tests.support import docker, oci
from tests.support.cli import imagedsl
from tests.support.oci import build

FAST_RETRY = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05)
BUILD_FILE = """\
import imagedsl as dsl

src = dsl.context(".")
base = dsl.image({base!r}).workdir("/app")
deps = base.copy(src.file("requirements.txt"), "/app/")
app = deps.copy(src.dir("app"), "/app/app", layers="auto").cmd("/app/app/run.sh")
tool = dsl.scratch().copy(app.path("/app/app/run.sh"), "/run.sh").copy(src.dir("data"), "/data")
"""


@pytest.fixture(name="base", scope="module")
def fixture_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``oci:DIR:1``: the busybox base as an OCI layout."""
    return oci.make_busybox_layout(tmp_path_factory.mktemp("base"))


@pytest.fixture(name="project")
def fixture_project(tmp_path: Path, base: str) -> Path:
    """A build file with a layered COPY, a COPY --from and a WORKDIR, and its context."""
    root = tmp_path / "project"
    (root / "app" / "pkg").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "requirements.txt").write_text("attrs==23.1\n")
    (root / "app" / "run.sh").write_text("#!/bin/sh\necho hello from the cache\n")
    (root / "app" / "run.sh").chmod(0o755)
    (root / "app" / "pkg" / "util.py").write_text("X = 1\n" * 5000)
    (root / "app" / "package.json").write_text('{"name": "demo"}\n')
    (root / "data" / "blob.bin").write_bytes(os.urandom(200_000))
    (root / "build.py").write_text(BUILD_FILE.format(base=base))
    return root


@pytest.fixture(name="stages")
def fixture_stages(project: Path, base: str) -> dict[str, Stage]:
    """The project's stages, made in Python."""
    return stages_of(project, base)


@pytest.fixture(name="client")
def fixture_client() -> Iterator[RegistryClient]:
    """A client with no Docker config and quick retries."""
    with RegistryClient(docker_config=DockerConfig(), retry=FAST_RETRY, timeout=10) as client:
        yield client


def stages_of(project: Path, base: str) -> dict[str, Stage]:
    """The stages of BUILD_FILE, made here (the library's tests plan without the lock file)."""
    src = dsl.context(project)
    image = dsl.image(base).workdir("/app")
    deps = image.copy(src.file("requirements.txt"), "/app/")
    app = deps.copy(src.dir("app"), "/app/app", layers="auto").cmd("/app/app/run.sh")
    tool = dsl.scratch().copy(app.path("/app/app/run.sh"), "/run.sh")
    return {"base": image, "deps": deps, "app": app, "tool": tool.copy(src.dir("data"), "/data")}


def built_with_cache_to(
    stages: Mapping[str, Stage],
    store: Store,
    client: RegistryClient,
    ref: str,
    target: str = "tool",
) -> tuple[str, CacheBundle]:
    """Build ``target`` into ``store`` and export its cache to ``ref``: (manifest, bundle)."""
    outcome, _ = build(stages, store, target=target)
    bundle = collect(store, plan(stages, target, store=store, project="test"), outcome.layer_cache)
    export_cache(client, store, bundle, ref)
    return outcome.image.manifest_digest, bundle


def layer_steps(planned: Any) -> list[Any]:
    """The steps of a plan that a store decides (not config-only, not FROM scratch)."""
    return [s for s in planned.steps if s.status is not PlanStatus.CONFIG and s.kind != "scratch"]


def test_an_empty_store_reuses_every_layer_of_another(
    registry: docker.RegistryServer,
    stages: dict[str, Stage],
    client: RegistryClient,
    tmp_path: Path,
) -> None:
    """Store B, empty, plans every step as a hit from A's cache and builds the same image
    without writing or compressing a single layer."""
    ref = f"{registry.host}/cache:1"
    digest, bundle = built_with_cache_to(stages, Store(tmp_path / "a"), client, ref)
    assert bundle.blobs, "the target has layers of its own"
    store = Store(tmp_path / "b")
    before = plan(stages, "tool", store=store, project="test")
    assert all(s.status is not PlanStatus.HIT for s in layer_steps(before))

    cache = fetch_cache(client, ref, store)
    imported = import_records(store, cache.bundle)
    after = plan(stages, "tool", store=store, project="test")
    assert [s.status for s in layer_steps(after)] == [PlanStatus.HIT] * len(layer_steps(after))
    hits = {s.key for s in after.steps if s.status is PlanStatus.HIT}
    assert {s.key for s in layer_steps(after)} <= imported.new
    fetched = import_layers(client, cache, store, hits)
    assert fetched.blobs_fetched == len(bundle.blobs)

    outcome, _ = build(stages, store, target="tool")
    assert outcome.image.manifest_digest == digest
    assert outcome.stats.layers_written == 0
    assert outcome.stats.bytes_compressed == 0
    assert outcome.stats.layers_reused == len(bundle.layers)


def test_only_the_layers_of_hits_are_fetched(
    registry: docker.RegistryServer,
    project: Path,
    stages: dict[str, Stage],
    client: RegistryClient,
    tmp_path: Path,
) -> None:
    """After an edit, the layers below it come from the cache; those above it are not fetched."""
    ref = f"{registry.host}/cache:edit"
    _, bundle = built_with_cache_to(stages, Store(tmp_path / "a"), client, ref, target="app")
    (project / "app" / "run.sh").write_text("#!/bin/sh\necho edited\n")
    store = Store(tmp_path / "b")
    cache = fetch_cache(client, ref, store)
    import_records(store, cache.bundle)
    planned = plan(stages, "app", store=store, project="test")
    statuses = {s.instruction: s.status for s in layer_steps(planned)}
    assert statuses["COPY requirements.txt /app/"] is PlanStatus.HIT
    assert [s.status for s in layer_steps(planned)].count(PlanStatus.MISS) == 1
    hits = {s.key for s in planned.steps if s.status is PlanStatus.HIT}
    import_layers(client, cache, store, hits)
    remote = {c.key: c.layer for c in bundle.layers if c.layer is not None}
    wanted = {remote[key].digest for key in hits if key in remote}
    present = {layer.digest for layer in remote.values() if store.blob_path(layer.digest).exists()}
    assert present == wanted
    assert len(wanted) == len(remote) - 1  # the edited part's old layer stayed in the registry
    outcome, _ = build(stages, store, target="app")
    assert outcome.stats.layers_written == 1


def test_the_artifact_is_deterministic_and_typed(
    registry: docker.RegistryServer,
    stages: dict[str, Stage],
    client: RegistryClient,
    tmp_path: Path,
) -> None:
    """The same build exports the same manifest: an artifact with an empty config, the records
    bundle first, then the layers; the bundle holds no times."""
    store = Store(tmp_path / "a")
    built_with_cache_to(stages, store, client, f"{registry.host}/cache:one")
    time.sleep(0.01)  # records made later must not change the bundle
    built_with_cache_to(stages, store, client, f"{registry.host}/cache:two")
    one = client.get_manifest(f"{registry.host}/cache:one")
    two = client.get_manifest(f"{registry.host}/cache:two")
    assert one.digest == two.digest
    document = json.loads(one.raw)
    assert document["artifactType"] == CACHE_ARTIFACT_TYPE
    assert document["config"]["mediaType"] == OCI_EMPTY
    assert document["config"]["size"] == 2
    assert document["layers"][0]["mediaType"] == RECORDS_MEDIA_TYPE
    digests = [layer["digest"] for layer in document["layers"][1:]]
    assert digests == sorted(digests)
    fresh = Store(tmp_path / "fresh")
    fetch_cache(client, f"{registry.host}/cache:one", fresh)
    assert b"created" not in fresh.blob_path(one.layers[0].digest).read_bytes()


def tampered(bundle: CacheBundle, **preimage: Any) -> CacheBundle:
    """The bundle with one record's preimage changed but its key kept."""
    first, *rest = bundle.records
    changed = attrs.evolve(first, preimage={**first.preimage, **preimage})
    return attrs.evolve(bundle, records=(changed, *rest))


def test_a_record_that_does_not_hash_to_its_key_refuses_the_whole_bundle(
    registry: docker.RegistryServer,
    stages: dict[str, Stage],
    client: RegistryClient,
    tmp_path: Path,
) -> None:
    """One forged record, and nothing of the bundle is imported."""
    store_a = Store(tmp_path / "a")
    _, bundle = built_with_cache_to(stages, store_a, client, f"{registry.host}/cache:good")
    ref = f"{registry.host}/cache:forged"
    export_cache(client, store_a, tampered(bundle, dest="/elsewhere"), ref)
    store = Store(tmp_path / "b")
    with pytest.raises(RemoteCacheError) as refused:
        fetch_cache(client, ref, store)
    assert "does not hash to its key" in refused.value.problem
    assert list(store.keys()) == []
    assert not store.area(StoreArea.TREES).exists()


def test_a_layer_whose_tar_is_not_its_diff_id_is_refused(
    registry: docker.RegistryServer,
    stages: dict[str, Stage],
    client: RegistryClient,
    tmp_path: Path,
) -> None:
    """An entry naming a real blob with a wrong diff_id gets no layer-cache entry."""
    store_a = Store(tmp_path / "a")
    _, bundle = built_with_cache_to(stages, store_a, client, f"{registry.host}/cache:good")
    victim = next(c for c in bundle.layers if c.layer is not None)
    assert victim.layer is not None
    lie = attrs.evolve(victim, layer=attrs.evolve(victim.layer, diff_id="sha256:" + "0" * 64))
    layers = tuple(lie if c is victim else c for c in bundle.layers)
    ref = f"{registry.host}/cache:lie"
    export_cache(client, store_a, attrs.evolve(bundle, layers=layers), ref)
    store = Store(tmp_path / "b")
    cache = fetch_cache(client, ref, store)
    with pytest.raises(RemoteCacheError) as refused:
        import_layers(client, cache, store, {victim.key})
    assert "it was refused" in str(refused.value)
    assert not layer_cache_path(store, victim.entry).exists()


def test_an_image_is_not_a_cache(
    registry: docker.RegistryServer, base: str, client: RegistryClient, tmp_path: Path
) -> None:
    """--cache-from on a plain image says what it found instead."""
    store = Store(tmp_path / "store")
    outcome, _ = build({"b": dsl.image(base).workdir("/x")}, store)
    image = outcome.image
    ref = f"{registry.host}/img:1"
    from imagedsl.oci.descriptor import Descriptor
    from imagedsl.oci.mediatypes import OCI_MANIFEST

    manifest = Descriptor(
        media_type=OCI_MANIFEST, digest=image.manifest_digest, size=len(image.manifest)
    )
    client.push(store, manifest, ref)
    with pytest.raises(RemoteCacheError) as refused:
        fetch_cache(client, ref, Store(tmp_path / "other"))
    assert "is not an imagedsl cache" in refused.value.problem


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("127.0.0.1:5000/c:1", id="no-type"),
        pytest.param("local:/tmp/cache", id="other-type"),
        pytest.param("registry:", id="empty"),
    ],
)
def test_cache_references_name_a_registry(text: str) -> None:
    """Only registry:REF is a cache reference."""
    with pytest.raises(RemoteCacheError):
        parse_cache_reference(text)


def test_cli_cache_to_then_plan_and_build_from_it(
    registry: docker.RegistryServer, project: Path, tmp_path: Path
) -> None:
    """The CLI round trip: build --cache-to in store A; in an empty store B, plan --cache-from
    shows every step as a remote hit and build --cache-from builds the same image, 0 steps."""
    cache = f"registry:{registry.host}/cache:1"
    cold_started = time.monotonic()
    first = imagedsl(
        "build", "build.py:tool", "--backend", "oci", "--cache-to", cache,
        "--output", f"oci:{tmp_path / 'a-out'}:1",
        cwd=project, store=tmp_path / "a",
    )  # fmt: skip
    cold = time.monotonic() - cold_started
    assert first.returncode == 0, first.stderr
    assert f"-> {registry.host}/cache:1@sha256:" in first.stderr

    planned = imagedsl(
        "plan", "build.py:tool", "--json", "--cache-from", cache, cwd=project, store=tmp_path / "b"
    )
    assert planned.returncode == 0, planned.stderr
    steps = [s for s in json.loads(planned.stdout)["steps"] if s["status"] != "config"]
    assert {s["status"] for s in steps} == {"hit"}
    remote = [
        s for s in steps if f"hit from the remote cache {registry.host}/cache:1" in s["notes"]
    ]
    assert len(remote) == len([s for s in steps if s["kind"] != "scratch"])

    warm_started = time.monotonic()
    second = imagedsl(
        "build", "build.py:tool", "--backend", "oci", "--cache-from", cache,
        "--output", f"oci:{tmp_path / 'b-out'}:1",
        cwd=project, store=tmp_path / "c",
    )  # fmt: skip
    warm = time.monotonic() - warm_started
    assert second.returncode == 0, second.stderr
    assert "built 0 steps" in second.stderr
    a_digest, _, _ = oci.read_image(tmp_path / "a-out", "1")
    b_digest, _, _ = oci.read_image(tmp_path / "b-out", "1")
    assert a_digest == b_digest
    print(f"cold build with --cache-to {cold:.2f}s, empty store with --cache-from {warm:.2f}s")


def test_cli_missing_cache_is_a_warning(
    registry: docker.RegistryServer, project: Path, tmp_path: Path
) -> None:
    """The first CI run has no cache yet: build says so and builds."""
    result = imagedsl(
        "build", "build.py:app", "--backend", "oci",
        "--cache-from", f"registry:{registry.host}/nothing:1",
        cwd=project, store=tmp_path / "store",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"warning: no remote cache at {registry.host}/nothing:1" in result.stderr


def test_cli_remote_cache_needs_the_oci_backend(project: Path, tmp_path: Path) -> None:
    """The docker backend keeps its cache in BuildKit: the options are refused, exit 2."""
    result = imagedsl(
        "build", "build.py:app", "--backend", "docker", "--cache-to", "registry:127.0.0.1:9/c",
        cwd=project, store=tmp_path / "store",
    )  # fmt: skip
    assert result.returncode == 2
    assert "need --backend oci" in result.stderr


def entries_of(store: Store) -> Mapping[str, Any]:
    """Every layer-cache entry of a store, by file name."""
    root = store.area(StoreArea.OCI_LAYERS)
    return {p.name: json.loads(p.read_bytes()) for p in root.rglob("*.json")}


def test_importing_twice_changes_nothing(
    registry: docker.RegistryServer,
    stages: dict[str, Stage],
    client: RegistryClient,
    tmp_path: Path,
) -> None:
    """A second import of the same cache writes no record and fetches nothing."""
    ref = f"{registry.host}/cache:1"
    built_with_cache_to(stages, Store(tmp_path / "a"), client, ref)
    store = Store(tmp_path / "b")
    for round_ in range(2):
        cache = fetch_cache(client, ref, store)
        imported = import_records(store, cache.bundle)
        hits = {s.key for s in plan(stages, "tool", store=store, project="test").steps}
        done = import_layers(client, cache, store, hits)
        if round_ == 1:
            assert imported.written == 0
            assert (done.entries, done.bytes_fetched) == (0, 0)
    assert entries_of(store)
    outcome, _ = build(stages, store, target="tool", backend=OCIBackend())
    assert outcome.stats.layers_written == 0


def test_cli_layers_of_another_compression_are_not_fetched(
    registry: docker.RegistryServer, project: Path, tmp_path: Path
) -> None:
    """A zstd build cannot reuse gzip layers: it takes the records, leaves the layers."""
    cache = f"registry:{registry.host}/cache:gz"
    first = imagedsl(
        "build", "build.py:app", "--backend", "oci", "--cache-to", cache,
        cwd=project, store=tmp_path / "a",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    env_store = tmp_path / "b"
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", "build", "build.py:app", "--backend", "oci",
         "--cache-from", cache],
        cwd=project,
        env={**os.environ, "IMAGEDSL_STORE": str(env_store), "IMAGEDSL_OCI_COMPRESSION": "zstd"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pulled = [line for line in result.stderr.splitlines() if line.strip().startswith("pulled")]
    assert len(pulled) == 1, result.stderr  # the records bundle, no layer
    assert "built 0 steps" not in result.stderr


def test_cli_cache_reference_must_name_a_registry(project: Path, tmp_path: Path) -> None:
    """A cache option that is not registry:REF is a usage error, exit 2."""
    result = imagedsl(
        "plan", "build.py:app", "--cache-from", "local:/tmp/cache", cwd=project, store=tmp_path
    )
    assert result.returncode == 2
    assert "--cache-from expects registry:NAME[:TAG]" in result.stderr

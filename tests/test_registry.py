"""The registry client against a real ``docker-registry``: pull, push, mount, faults, interop."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.layout import LayoutBlobs
from imagedsl.oci.manifest import Manifest
from imagedsl.oci.mediatypes import DOCKER_MANIFEST
from imagedsl.oci.platform import Platform
from imagedsl.oci.reference import parse_reference
from imagedsl.registry import transport
from imagedsl.registry.auth import DockerConfig
from imagedsl.registry.client import RegistryClient
from imagedsl.registry.errors import (
    NotFoundError,
    PlatformNotFoundError,
    RegistryConnectionError,
    RegistryDigestError,
)
from imagedsl.registry.transport import Repository, RetryPolicy
from imagedsl.store import Store, StoreArea
from tests.support import docker
from tests.support import registry as rs
from tests.support.skips import require_tool
from tests.support.waiting import wait_until

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
FAST_RETRY = RetryPolicy(attempts=4, initial_delay=0.01, max_delay=0.05)


class RecordingProgress:
    """Keeps every progress call (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: dict[str, tuple[int, str]] = {}
        self.advanced: dict[str, int] = {}
        self.finished: dict[str, str] = {}

    def transfer_started(self, digest: str, size: int, direction: str) -> None:
        with self.lock:
            self.started[digest] = (size, direction)

    def transfer_advanced(self, digest: str, done: int) -> None:
        with self.lock:
            self.advanced[digest] = max(done, self.advanced.get(digest, 0))

    def transfer_finished(self, digest: str, outcome: str) -> None:
        with self.lock:
            self.finished[digest] = outcome


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path) -> Store:
    """An empty store for the images a test makes."""
    return Store(tmp_path / "store")


@pytest.fixture(name="client")
def fixture_client() -> Iterator[RegistryClient]:
    """A client with no Docker config, quick retries and 1 MiB chunks."""
    with RegistryClient(
        docker_config=DockerConfig(), retry=FAST_RETRY, chunk_size=1 << 20, timeout=10
    ) as client:
        yield client


def three_layer_image(store: Store, seed: int = 1) -> Descriptor:
    """An image whose layers are below, around and above the 1 MiB chunk size."""
    return rs.make_image(
        store,
        [
            {"small.txt": b"hello\n"},
            {"mid.bin": rs.random_bytes(900_000, seed)},
            {"big.bin": rs.random_bytes(2_600_000, seed + 1)},
        ],
    )


def read_manifest(store: Store, digest: str) -> Manifest:
    """A manifest from the store."""
    return Manifest.parse(store.blob_path(digest).read_bytes())


def test_push_then_pull_round_trip(
    registry: docker.RegistryServer, client: RegistryClient, store: Store, tmp_path: Path
) -> None:
    """An image pushed under two tags pulls back into an empty store byte for byte."""
    manifest = three_layer_image(store)
    ref = f"{registry.host}/team/app:v1"

    result = client.push(store, manifest, ref, tags=["v1", "latest"])

    assert result.digest == manifest.digest
    assert result.tags == ("v1", "latest")
    assert set(result.blobs.values()) == {"pushed"}
    assert sorted(registry.tags("team/app")) == ["latest", "v1"]
    resolved = client.resolve(f"{registry.host}/team/app:latest")
    assert (resolved.digest, resolved.size) == (manifest.digest, manifest.size)

    fresh = Store(tmp_path / "fresh")
    pulled = client.pull(ref, fresh)
    assert pulled.reference.digest == manifest.digest
    assert pulled.index is None
    expected = read_manifest(store, manifest.digest)
    assert pulled.layers == expected.layers
    for blob in (manifest, *expected.blobs):
        assert (
            fresh.blob_path(blob.digest).read_bytes() == store.blob_path(blob.digest).read_bytes()
        )
    assert pulled.bytes_downloaded == sum(b.size for b in expected.blobs)
    # The timeout watchdog's thread ends once no request is left: a build that pulled its
    # base is a process with one thread again, which may fork its layer writers.
    wait_until(
        lambda: all(t.name != "imagedsl-registry-watchdog" for t in threading.enumerate()),
        "the registry watchdog's thread to end",
    )


def test_second_push_sends_nothing(
    registry: docker.RegistryServer, client: RegistryClient, store: Store
) -> None:
    """Pushing again finds every blob in place (HEAD) and uploads no byte."""
    manifest = three_layer_image(store)
    client.push(store, manifest, f"{registry.host}/app:1")

    proxy = rs.FaultProxy(registry.port, decide=lambda *_: "pass")
    try:
        again = client.push(store, manifest, f"{proxy.host}/app:1")
    finally:
        proxy.stop()

    assert set(again.blobs.values()) == {"exists"}
    assert again.bytes_uploaded == 0
    blob_requests = [(m, t) for m, t, _ in proxy.log if "/blobs/" in t]
    assert {m for m, _ in blob_requests} == {"HEAD"}  # no upload was even started
    assert len(blob_requests) == len(again.blobs)  # one question per blob, no retry


def test_interrupted_push_does_not_resend_finished_blobs(
    registry: docker.RegistryServer, client: RegistryClient, store: Store
) -> None:
    """Blobs an earlier, interrupted push finished are skipped; only the rest are sent."""
    manifest = three_layer_image(store)
    image = read_manifest(store, manifest.digest)
    repo = Repository.of(parse_reference(f"{registry.host}/app:1"))
    finished = image.layers[2]
    assert client.push_blob(repo, finished, store) == ("pushed", finished.size)

    result = client.push(store, manifest, f"{registry.host}/app:1")

    assert result.blobs[finished.digest] == "exists"
    assert result.bytes_uploaded == sum(b.size for b in image.blobs) - finished.size


def test_cross_repository_mount(
    registry: docker.RegistryServer, client: RegistryClient, store: Store
) -> None:
    """Blobs already in another repository are mounted, not uploaded."""
    manifest = three_layer_image(store)
    client.push(store, manifest, f"{registry.host}/base/one:1")

    result = client.push(store, manifest, f"{registry.host}/other/two:1", mount_from=["base/one"])

    assert set(result.blobs.values()) == {"mounted"}
    assert result.bytes_uploaded == 0
    assert client.resolve(f"{registry.host}/other/two:1").digest == manifest.digest


def test_index_push_and_platform_choice(
    registry: docker.RegistryServer, client: RegistryClient, store: Store, tmp_path: Path
) -> None:
    """An index is pushed with its children; pull picks the manifest of the asked platform."""
    amd = rs.make_image(store, [{"arch": b"amd64\n"}], platform=AMD64)
    arm = rs.make_image(store, [{"arch": b"arm64\n"}], platform=ARM64)
    index = rs.make_index(store, {AMD64: amd, ARM64: arm})
    ref = f"{registry.host}/multi:1"

    result = client.push(store, index, ref)
    assert result.media_type == index.media_type

    fresh = Store(tmp_path / "fresh")
    pulled = client.pull(ref, fresh, platform=Platform("linux", "arm64"))
    assert pulled.index is not None
    assert pulled.index.digest == index.digest
    assert pulled.manifest.digest == arm.digest
    assert fresh.blob_path(pulled.layers[0].digest).exists()
    assert not fresh.blob_path(read_manifest(store, amd.digest).layers[0].digest).exists()

    with pytest.raises(PlatformNotFoundError) as caught:
        client.pull(ref, fresh, platform=Platform("linux", "s390x"))
    assert caught.value.available == ("linux/amd64", "linux/arm64/v8")

    everything = Store(tmp_path / "all")
    client.pull_all(ref, everything)
    for blob in (index, amd, arm, *read_manifest(store, amd.digest).blobs):
        assert everything.blob_path(blob.digest).exists()


def test_ranged_resume_of_a_partial_download(
    registry: docker.RegistryServer, client: RegistryClient, store: Store, tmp_path: Path
) -> None:
    """A partial download left by an interrupted pull is continued with Range, not restarted."""
    manifest = three_layer_image(store)
    client.push(store, manifest, f"{registry.host}/app:1")
    big = read_manifest(store, manifest.digest).layers[2]
    fresh = Store(tmp_path / "fresh")
    final = fresh.blob_path(big.digest)
    final.parent.mkdir(parents=True)
    partial = final.with_name(f".partial.{final.name}")
    partial.write_bytes(store.blob_path(big.digest).read_bytes()[:1_000_000])
    repo = Repository.of(parse_reference(f"{registry.host}/app:1"))

    fetched = client.fetch_blob(repo, big, fresh)

    assert fetched == big.size - 1_000_000
    assert final.read_bytes() == store.blob_path(big.digest).read_bytes()
    assert not partial.exists()


def test_download_cut_midway_resumes(
    registry: docker.RegistryServer, store: Store, tmp_path: Path
) -> None:
    """A response cut in the middle is resumed from where it stopped."""
    manifest = three_layer_image(store)
    big = read_manifest(store, manifest.digest).layers[2]
    with RegistryClient(docker_config=DockerConfig(), retry=FAST_RETRY) as direct:
        direct.push(store, manifest, f"{registry.host}/app:1")
    cut = {"done": False}

    def cut_first_blob_get(method: str, target: str, number: int) -> str:
        del number
        if method == "GET" and big.digest in target and not cut["done"]:
            cut["done"] = True
            return "drop-response"
        return "pass"

    proxy = rs.FaultProxy(registry.port, decide=cut_first_blob_get, seed=3)
    try:
        progress = RecordingProgress()
        with RegistryClient(
            docker_config=DockerConfig(), retry=FAST_RETRY, progress=progress
        ) as client:
            fetched = client.fetch_blob(
                Repository(proxy.host, "app"), big, Store(tmp_path / "fresh")
            )
    finally:
        proxy.stop()
    assert proxy.faults == {"drop-response": 1}
    assert fetched == big.size  # every byte once: the resumed part was not fetched again
    ranged = [t for m, t, f in proxy.log if m == "GET" and big.digest in t]
    assert len(ranged) == 2
    assert progress.finished[big.digest] == "pulled"
    assert progress.advanced[big.digest] == big.size


def test_concurrent_pulls_into_one_store(
    registry: docker.RegistryServer, client: RegistryClient, store: Store, tmp_path: Path
) -> None:
    """Clients pulling the same image into one store at once take turns per blob."""
    manifest = three_layer_image(store)
    client.push(store, manifest, f"{registry.host}/app:1")
    shared = Store(tmp_path / "shared")
    results: list[int] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            with RegistryClient(docker_config=DockerConfig(), retry=FAST_RETRY) as own:
                results.append(own.pull(f"{registry.host}/app:1", shared).bytes_downloaded)
        except BaseException as error:  # re-raised below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=pull) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    image = read_manifest(store, manifest.digest)
    assert sum(results) == sum(b.size for b in image.blobs)  # each blob downloaded once
    assert rs.corrupt_blobs(shared) == []
    leftovers = [p.name for p in shared.area(StoreArea.BLOBS).iterdir() if p.name[0] == "."]
    assert leftovers == []


def test_corrupt_blob_is_refused(
    registry: docker.RegistryServer, client: RegistryClient, store: Store, tmp_path: Path
) -> None:
    """A blob whose bytes do not match its digest never lands in the store."""
    manifest = three_layer_image(store)
    client.push(store, manifest, f"{registry.host}/app:1")
    mid = read_manifest(store, manifest.digest).layers[1]
    data_file = (
        registry.storage / "docker/registry/v2/blobs/sha256" / mid.digest[7:9] / mid.digest[7:]
    ) / "data"
    data = bytearray(data_file.read_bytes())
    data[1000] ^= 0xFF
    data_file.write_bytes(bytes(data))
    fresh = Store(tmp_path / "fresh")

    with pytest.raises(RegistryDigestError) as caught:
        client.pull(f"{registry.host}/app:1", fresh)

    assert caught.value.expected == mid.digest
    assert not fresh.blob_path(mid.digest).exists()
    assert rs.corrupt_blobs(fresh) == []


def test_unknown_manifest_and_blob(
    registry: docker.RegistryServer, client: RegistryClient, store: Store, tmp_path: Path
) -> None:
    """Missing tags and blobs are NotFoundError, with the registry's error code."""
    with pytest.raises(NotFoundError) as caught:
        client.resolve(f"{registry.host}/nothing:here")
    assert caught.value.status == 404
    blob = rs.put_blob(store, b"x", rs.LAYER)
    with pytest.raises(NotFoundError) as missing:
        client.fetch_blob(Repository(registry.host, "nothing"), blob, Store(tmp_path / "fresh"))
    assert missing.value.codes == ("BLOB_UNKNOWN",)


def test_progress_reports_each_blob(
    registry: docker.RegistryServer, store: Store, tmp_path: Path
) -> None:
    """Every blob is started and finished, with its size, in both directions."""
    manifest = three_layer_image(store)
    layers = read_manifest(store, manifest.digest).blobs
    progress = RecordingProgress()
    with RegistryClient(docker_config=DockerConfig(), progress=progress) as client:
        client.push(store, manifest, f"{registry.host}/app:1")
        assert {d: progress.finished[d.digest] for d in layers} == dict.fromkeys(layers, "pushed")
        assert {progress.started[d.digest] for d in layers} == {(d.size, "push") for d in layers}
        client.pull(f"{registry.host}/app:1", Store(tmp_path / "fresh"))
    assert {progress.finished[d.digest] for d in layers} == {"pulled"}
    assert all(progress.advanced[d.digest] == d.size for d in layers)


# --- faults ----------------------------------------------------------------------------------


def test_push_through_faults_completes_and_verifies(
    registry: docker.RegistryServer, store: Store, tmp_path: Path
) -> None:
    """With 500s and cut connections at random, the push completes and the image verifies."""
    manifest = three_layer_image(store, seed=7)
    amd_index = rs.make_index(store, {AMD64: manifest})
    # Registry 2.x cancels an upload whose size no longer matches its state token, so a
    # chunk cut after the registry stored part of it, or whose answer was lost, restarts the
    # blob: the budget of attempts allows for several restarts of the five-chunk blob.
    proxy = rs.FaultProxy(registry.port, error_rate=0.1, drop_rate=0.1, seed=11)
    patient = RetryPolicy(attempts=80, initial_delay=0.005, max_delay=0.05)
    try:
        with RegistryClient(
            docker_config=DockerConfig(), retry=patient, chunk_size=512 << 10, timeout=10
        ) as client:
            result = client.push(store, amd_index, f"{proxy.host}/flaky:1")
            pulled_through_faults = client.pull(f"{proxy.host}/flaky:1", Store(tmp_path / "p1"))
    finally:
        proxy.stop()

    assert sum(proxy.faults.values()) >= 3, proxy.faults
    assert result.digest == amd_index.digest
    assert pulled_through_faults.manifest.digest == manifest.digest
    with RegistryClient(docker_config=DockerConfig()) as direct:
        fresh = Store(tmp_path / "fresh")
        pulled = direct.pull(f"{registry.host}/flaky:1", fresh, platform=AMD64)
    assert pulled.manifest.digest == manifest.digest
    assert rs.corrupt_blobs(fresh) == []
    assert rs.corrupt_blobs(store) == []
    assert rs.corrupt_blobs(Store(tmp_path / "p1")) == []


def test_chunked_upload_resumes_after_a_refused_chunk(
    registry: docker.RegistryServer, store: Store
) -> None:
    """A chunk refused with 500 is sent again at the offset the registry reports."""
    manifest = three_layer_image(store)
    big = read_manifest(store, manifest.digest).layers[2]
    patches = {"n": 0}

    def refuse_second_patch(method: str, target: str, number: int) -> str:
        del target, number
        if method == "PATCH":
            patches["n"] += 1
            if patches["n"] == 2:
                return "500"
        return "pass"

    proxy = rs.FaultProxy(registry.port, decide=refuse_second_patch)
    try:
        with RegistryClient(
            docker_config=DockerConfig(), retry=FAST_RETRY, chunk_size=1 << 20
        ) as client:
            outcome = client.push_blob(Repository(proxy.host, "app"), big, store)
    finally:
        proxy.stop()
    assert outcome == ("pushed", big.size)  # no byte sent twice
    methods = [m for m, _t, _f in proxy.log]
    assert methods.count("POST") == 1
    assert "GET" in methods  # the upload's status was asked for
    assert methods.count("PATCH") == 4  # three chunks, one of them twice


class SleepRecorder:
    """Stands in for the transport's ``time`` module: records pauses instead of sleeping."""

    def __init__(self, pauses: list[float]) -> None:
        self.pauses = pauses

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


def test_429_retry_after_is_honoured(
    registry: docker.RegistryServer, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 with Retry-After: 1 makes the client wait that long before trying again."""
    blob = rs.put_blob(store, b"layer", rs.LAYER)

    def throttle_first(method: str, target: str, number: int) -> str:
        del method, target
        return "429" if number == 2 else "pass"

    pauses: list[float] = []
    monkeypatch.setattr(transport, "time", SleepRecorder(pauses))
    proxy = rs.FaultProxy(registry.port, decide=throttle_first)
    try:
        with RegistryClient(docker_config=DockerConfig(), retry=FAST_RETRY) as client:
            client.push_blob(Repository(proxy.host, "app"), blob, store)
    finally:
        proxy.stop()
    assert proxy.faults == {"429": 1}
    assert pauses == [1.0]  # the server's Retry-After, not the policy's 0.01 s backoff


def test_timeout_gives_up_with_a_connection_error(
    registry: docker.RegistryServer,
) -> None:
    """A registry that stops answering costs the timeout per attempt, then a clear error."""

    def stall_after_first(method: str, target: str, number: int) -> str:
        del method, target
        return "pass" if number == 1 else "stall"

    proxy = rs.FaultProxy(registry.port, decide=stall_after_first)
    try:
        with (
            RegistryClient(
                docker_config=DockerConfig(),
                retry=RetryPolicy(attempts=2, initial_delay=0.01, max_delay=0.01),
                timeout=0.3,
            ) as client,
            pytest.raises(RegistryConnectionError) as caught,
        ):
            client.resolve(f"{proxy.host}/app:1")
    finally:
        proxy.stop()
    assert caught.value.attempts == 2
    assert caught.value.host == proxy.host
    assert proxy.faults == {"stall": 2}  # one timeout per attempt, then the error


# --- interop ---------------------------------------------------------------------------------


def _skopeo() -> str:
    return require_tool("skopeo", "Debian: apt-get install skopeo")


def test_skopeo_reads_what_we_push(
    registry: docker.RegistryServer, client: RegistryClient, store: Store, tmp_path: Path
) -> None:
    """skopeo inspects and copies our image and index with the digests we pushed."""
    skopeo = _skopeo()
    manifest = three_layer_image(store)
    index = rs.make_index(store, {AMD64: manifest})
    client.push(store, index, f"{registry.host}/interop:idx")
    client.push(store, manifest, f"{registry.host}/interop:img")

    raw = subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/interop:idx"],
        check=True,
        capture_output=True,
    ).stdout
    assert rs.sha256(raw) == index.digest
    info = json.loads(
        subprocess.run(
            [skopeo, "inspect", "--tls-verify=false", f"docker://{registry.host}/interop:img"],
            check=True,
            capture_output=True,
        ).stdout
    )
    assert info["Digest"] == manifest.digest
    layout = tmp_path / "layout"
    subprocess.run(
        [skopeo, "copy", "--src-tls-verify=false",
         f"docker://{registry.host}/interop:img", f"oci:{layout}:img"],
        check=True, capture_output=True,
    )  # fmt: skip
    for blob in (manifest, *read_manifest(store, manifest.digest).blobs):
        copied = LayoutBlobs(layout).blob_path(blob.digest)
        assert copied.read_bytes() == store.blob_path(blob.digest).read_bytes()


def test_we_pull_and_push_what_skopeo_pushes(
    registry: docker.RegistryServer, client: RegistryClient, store: Store, tmp_path: Path
) -> None:
    """An OCI layout copied in by skopeo pulls back; a layout pushes from LayoutBlobs too."""
    skopeo = _skopeo()
    manifest = three_layer_image(store)
    layout = tmp_path / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (manifest, *read_manifest(store, manifest.digest).blobs):
        shutil.copy(store.blob_path(blob.digest), blobs / blob.digest[7:])
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entry = {**manifest.to_json(), "annotations": {"org.opencontainers.image.ref.name": "t"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))

    subprocess.run(
        [skopeo, "copy", "--dest-tls-verify=false", f"oci:{layout}:t",
         f"docker://{registry.host}/by-skopeo:t"],
        check=True, capture_output=True,
    )  # fmt: skip
    pulled = client.pull(f"{registry.host}/by-skopeo:t", Store(tmp_path / "fresh"))
    assert pulled.manifest.digest == manifest.digest

    result = client.push(LayoutBlobs(layout), manifest, f"{registry.host}/from-layout:t")
    assert result.digest == manifest.digest


def test_docker_interop_both_ways(
    registry: docker.RegistryServer,
    docker_engine: docker.DockerEngine,
    busybox_image: str,
    client: RegistryClient,
    tmp_path: Path,
) -> None:
    """What docker pushes we pull (every blob verified); what we push docker pulls and runs."""
    pushed_by_docker = f"{registry.host}/busybox:docker"
    docker_engine.run("tag", busybox_image, pushed_by_docker)
    docker_engine.run("push", pushed_by_docker)
    store = Store(tmp_path / "store")

    pulled = client.pull(pushed_by_docker, store)

    assert pulled.manifest.media_type == DOCKER_MANIFEST
    assert rs.corrupt_blobs(store) == []
    for blob in pulled.manifest.blobs:
        assert store.blob_path(blob.digest).stat().st_size == blob.size

    ours = f"{registry.host}/ours/busybox:copy"
    result = client.push(store, pulled.manifest.descriptor, ours, mount_from=["busybox"])
    assert set(result.blobs.values()) == {"mounted"}
    try:
        docker_engine.run("pull", ours)
        output = docker_engine.run("run", "--rm", ours, "echo", "hello from imagedsl").stdout
        assert output.strip() == "hello from imagedsl"
    finally:
        docker_engine.run("rmi", "-f", ours, pushed_by_docker, check=False)

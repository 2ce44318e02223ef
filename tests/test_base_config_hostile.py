"""Hostile base image configs, manifests and index chains: refused in one line, never carried.

A base's config is checked once where the base is imported (a registry, a layout, an OCI or
docker archive, the store), so a config of the wrong shape is a
:class:`~imagedsl.oci.image.BaseConfigError` naming the base and the field, and one over
4 MiB is refused from its descriptor before it is read. Pushes and pulls walk indexes once
per manifest and no deeper than a layout import does. Registries here are written on raw
sockets (:mod:`tests.support.hostile`) so that requests can be counted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

import imagedsl as dsl
from imagedsl.oci.layout import LayoutBlobs
from imagedsl.oci.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from imagedsl.registry.auth import DockerConfig
from imagedsl.registry.client import RegistryClient
from imagedsl.registry.errors import PushSourceError, RegistryError
from imagedsl.store import Store
from tests.support import oci
from tests.support.hostile import HostileServer, Request, head, registry_handler
from tests.support.oci import member, tar_bytes

LAYER_TAR = tar_bytes(
    [member("etc/", kind=tarfile.DIRTYPE, mode=0o755), member("etc/hello", data=b"hi\n")]
)
LAYER_BLOB = gzip.compress(LAYER_TAR, mtime=0)
DIFF_ID = oci.sha256(LAYER_TAR)
MIB = 1 << 20


def config_with(**changes: Any) -> bytes:
    """A valid config for the one test layer, with top-level fields replaced."""
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]},
        "history": [{"created_by": "test layer"}],
    }
    config.update(changes)
    return json.dumps(config).encode()


def runtime_with(**changes: Any) -> bytes:
    """A valid config whose ``config`` (the runtime defaults) has fields replaced."""
    return config_with(config={"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], **changes})


# -- images written here -------------------------------------------------------------------------


def image_documents(
    config: bytes, *, layer_type: str = OCI_LAYER_GZIP, config_size: int | None = None
) -> tuple[bytes, dict[str, bytes]]:
    """An image manifest of the test layer and ``config`` (its descriptor claiming
    ``config_size`` when given), and its blobs by digest."""
    layer: dict[str, Any] = {
        "mediaType": layer_type,
        "digest": oci.sha256(LAYER_BLOB),
        "size": len(LAYER_BLOB),
    }
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": oci.sha256(config),
                "size": len(config) if config_size is None else config_size,
            },
            "layers": [layer],
        }
    ).encode()
    return manifest, {oci.sha256(config): config, oci.sha256(LAYER_BLOB): LAYER_BLOB}


def write_blobs(root: Path, blobs: Iterable[bytes]) -> None:
    """Blobs into ``root/blobs/sha256``, each named by its digest."""
    directory = root / "blobs" / "sha256"
    directory.mkdir(parents=True, exist_ok=True)
    for data in blobs:
        (directory / hashlib.sha256(data).hexdigest()).write_bytes(data)


def write_layout(
    root: Path, manifest: bytes, blobs: Mapping[str, bytes], *, index: bytes | None = None
) -> str:
    """An OCI layout whose index.json (``index``, or one entry tagged 1) names ``manifest``."""
    write_blobs(root, [manifest, *blobs.values()])
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entry = {
        "mediaType": OCI_MANIFEST,
        "digest": oci.sha256(manifest),
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "1"},
    }
    default = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    (root / "index.json").write_bytes(default if index is None else index)
    return f"oci:{root}:1"


def config_layout(root: Path, config: bytes, **kwargs: Any) -> str:
    """An OCI layout holding one image of the test layer and ``config``."""
    return write_layout(root, *image_documents(config, **kwargs))


def tar_of(files: Mapping[str, bytes], path: Path) -> None:
    """A plain tar of ``files``."""
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def docker_archive(path: Path, config: bytes, listing: object = None) -> str:
    """A ``docker save`` archive of the test layer and ``config`` (``listing``: another
    manifest.json)."""
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    entries = [{"Config": config_name, "RepoTags": ["base:1"], "Layers": ["layer/layer.tar"]}]
    files = {
        config_name: config,
        "layer/layer.tar": LAYER_TAR,
        "manifest.json": json.dumps(entries if listing is None else listing).encode(),
    }
    tar_of(files, path)
    return f"docker-archive:{path}"


def oci_archive(path: Path, config: bytes) -> str:
    """An OCI archive (a layout in a tar) of the test layer and ``config``."""
    root = path.with_suffix(".layout")
    config_layout(root, config)
    tar_of({str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}, path)
    return f"oci-archive:{path}:1"


def registry_documents(manifest: bytes, tag: str = "1") -> dict[str, tuple[str, bytes]]:
    """What :func:`registry_handler` serves for one manifest, by tag and by digest."""
    return {tag: (OCI_MANIFEST, manifest), oci.sha256(manifest): (OCI_MANIFEST, manifest)}


def build(reference: str, tmp_path: Path) -> None:
    """Build a stage on the base (no RUN: nothing is extracted)."""
    oci.build({"a": dsl.image(reference).cmd("x")}, Store(tmp_path / "store"))


def blob_requests(server: HostileServer) -> int:
    """Requests the server saw for blobs."""
    return sum(n for path, n in server.requests.items() if "/blobs/" in path)


# -- F12: index chains and fan-outs ------------------------------------------------------------------


def index_chain(depth: int, fan: int) -> tuple[bytes, list[bytes], dict[str, bytes]]:
    """An image manifest under ``depth - 1`` indexes, each listing the next ``fan`` times:
    (the top, every manifest and index, the image's blobs)."""
    manifest, blobs = image_documents(config_with())
    documents = [manifest]
    top, media_type = manifest, OCI_MANIFEST
    for _ in range(depth - 1):
        child = {"mediaType": media_type, "digest": oci.sha256(top), "size": len(top)}
        top = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child] * fan}
        ).encode()
        documents.append(top)
        media_type = OCI_INDEX
    return top, documents, blobs


def test_push_refuses_a_chain_of_indexes_deeper_than_a_layout_import_reads(tmp_path: Path) -> None:
    """Pushing 1,200 nested indexes (a RecursionError before), or five, is refused before
    anything is sent, as an input error naming the depth."""
    for depth in (1200, 5):
        top, documents, blobs = index_chain(depth, fan=1)
        root = tmp_path / f"chain{depth}"
        write_blobs(root, [*documents, *blobs.values()])
        with (
            RegistryClient(docker_config=DockerConfig()) as client,
            pytest.raises(PushSourceError) as caught,
        ):
            client.push(LayoutBlobs(root), oci.sha256(top), "127.0.0.1:9/x:1")
        assert "more than 4 manifests deep" in caught.value.problem
        assert caught.value.exit_code == 2


def accepting_registry(pushed: set[str]) -> Callable[[Request, HostileServer], list[bytes]]:
    """A registry that has every blob and takes every manifest (remembered in ``pushed``)."""

    def handle(request: Request, server: HostileServer) -> list[bytes]:
        del server
        reference = request.path.rsplit("/", 1)[1]
        if "/manifests/" in request.path and request.method == "PUT":
            pushed.add(reference)
            return [head(201)]
        if "/manifests/" in request.path:
            return [head(200 if reference in pushed else 404)]
        return [head(200)]  # /v2/, and every blob: the registry has it

    return handle


def test_push_walks_each_manifest_once(tmp_path: Path) -> None:
    """Indexes that list the next one twice (within the depth a layout may have): each child
    manifest is checked and put once, not once per path to it."""
    top, documents, blobs = index_chain(4, fan=2)
    write_blobs(tmp_path, [*documents, *blobs.values()])
    pushed: set[str] = set()
    with (
        HostileServer(accepting_registry(pushed)) as server,
        RegistryClient(docker_config=DockerConfig()) as client,
    ):
        client.push(LayoutBlobs(tmp_path), oci.sha256(top), f"{server.host}/x:1")
        counts = {d: server.count(f"/v2/x/manifests/{oci.sha256(d)}") for d in documents[:-1]}
    assert set(counts.values()) == {2}  # one HEAD, one PUT
    assert {oci.sha256(d) for d in documents[:-1]} | {"1"} == pushed


def test_pull_all_fetches_each_manifest_once(tmp_path: Path) -> None:
    """``pull_all`` of indexes that list the next one twice fetches each manifest once."""
    top, documents, blobs = index_chain(4, fan=2)
    served = {oci.sha256(d): (OCI_INDEX, d) for d in documents}
    served["1"] = (OCI_INDEX, top)
    served[oci.sha256(documents[0])] = (OCI_MANIFEST, documents[0])
    with (
        HostileServer(registry_handler(served, blobs)) as server,
        RegistryClient(docker_config=DockerConfig()) as client,
    ):
        client.pull_all(f"{server.host}/x:1", Store(tmp_path / "s"))
        counts = {server.count(f"/v2/x/manifests/{oci.sha256(d)}") for d in documents[:-1]}
    assert counts == {1}


def test_pull_all_stops_at_the_depth_a_layout_may_nest(tmp_path: Path) -> None:
    """``pull_all`` of a chain of indexes deeper than a layout import follows is a registry
    error naming the depth, with no blob fetched."""
    top, documents, blobs = index_chain(5, fan=1)
    served = {oci.sha256(d): (OCI_INDEX, d) for d in documents}
    served["1"] = (OCI_INDEX, top)
    served[oci.sha256(documents[0])] = (OCI_MANIFEST, documents[0])
    with (
        HostileServer(registry_handler(served, blobs)) as server,
        RegistryClient(docker_config=DockerConfig()) as client,
    ):
        with pytest.raises(RegistryError) as caught:
            client.pull_all(f"{server.host}/x:1", Store(tmp_path / "s"))
        assert blob_requests(server) == 0
    assert "more than 4 manifests deep" in caught.value.detail

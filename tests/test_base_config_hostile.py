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
from imagedsl.errors import InputError
from imagedsl.oci.image import MAX_CONFIG, BaseConfigError, BaseConfigTooLargeError
from imagedsl.oci.layout import BaseImageError, LayoutBlobs, read_local_image
from imagedsl.oci.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from imagedsl.oci.reference import parse_reference
from imagedsl.registry.auth import DockerConfig
from imagedsl.registry.client import RegistryClient
from imagedsl.registry.errors import PushSourceError, RegistryError
from imagedsl.store import Store
from tests.support import REPO_ROOT, oci
from tests.support.cli import imagedsl
from tests.support.hostile import HostileServer, Request, head, registry_handler
from tests.support.oci import member, tar_bytes
from tests.support.registry import put_blob

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


def nested(depth: int) -> Any:
    """A JSON list nested ``depth`` deep."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


BAD_CONFIGS = [
    pytest.param(b"[1,2,3]", "", "is not a JSON object", id="a-list"),
    pytest.param(config_with(x="\udcff").replace(b'"\\udcff"', b'"\xff"'), "", "UTF-8", id="utf8"),
    pytest.param(b'{"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}", "", "deeply", id="deep-200k"),
    pytest.param(config_with(x=nested(100)), "x", "deeper than 32", id="deep-100"),
    pytest.param(config_with(x=float("nan")), "", "not valid JSON", id="nan"),
    pytest.param(runtime_with(Env=["A=\ud800"]), "config", "Unicode", id="lone-surrogate"),
    pytest.param(config_with(architecture=5), "architecture", "string", id="architecture"),
    pytest.param(config_with(rootfs="x"), "rootfs", "object", id="rootfs-string"),
    pytest.param(
        config_with(rootfs={"diff_ids": {"a": 1}}), "rootfs.diff_ids", "list", id="diff-ids-object"
    ),
    pytest.param(
        config_with(rootfs={"diff_ids": ["a"]}), "rootfs.diff_ids[0]", "digest", id="diff-id-word"
    ),
    pytest.param(config_with(history="nope"), "history", "list", id="history-string"),
    pytest.param(config_with(history=[1, "x"]), "history[0]", "object", id="history-numbers"),
    pytest.param(
        config_with(history=[{"created_by": 5}]),
        "history[0].created_by",
        "string",
        id="history-created-by",
    ),
    pytest.param(
        config_with(history=[{"empty_layer": "no"}]),
        "history[0].empty_layer",
        "true or false",
        id="history-empty-layer",
    ),
    pytest.param(config_with(config=[1]), "config", "object", id="config-list"),
    pytest.param(runtime_with(Env=[1, None, "X=1"]), "config.Env", "strings", id="env"),
    pytest.param(runtime_with(Cmd=5), "config.Cmd", "strings", id="cmd"),
    pytest.param(runtime_with(Entrypoint={"x": 1}), "config.Entrypoint", "strings", id="entry"),
    pytest.param(runtime_with(WorkingDir=7), "config.WorkingDir", "string", id="workdir"),
    pytest.param(runtime_with(User=["root"]), "config.User", "string", id="user"),
    pytest.param(runtime_with(ExposedPorts=[80]), "config.ExposedPorts", "object", id="ports"),
    pytest.param(runtime_with(Volumes=3), "config.Volumes", "object", id="volumes"),
    pytest.param(runtime_with(Labels="x"), "config.Labels", "object", id="labels"),
    pytest.param(runtime_with(Labels={"a": 1}), "config.Labels", "strings", id="label-number"),
    pytest.param(runtime_with(StopSignal=9), "config.StopSignal", "string", id="stopsignal"),
    pytest.param(runtime_with(Shell="sh"), "config.Shell", "strings", id="shell"),
    pytest.param(runtime_with(OnBuild="RUN x"), "config.OnBuild", "strings", id="onbuild"),
    pytest.param(runtime_with(OnBuild=[1, None]), "config.OnBuild", "strings", id="onbuild-nums"),
    pytest.param(runtime_with(Healthcheck=1), "config.Healthcheck", "object", id="healthcheck"),
    pytest.param(
        runtime_with(Healthcheck={"Test": "true"}),
        "config.Healthcheck.Test",
        "strings",
        id="healthcheck-test",
    ),
]


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


# -- F6: a config of the wrong shape ---------------------------------------------------------------


@pytest.mark.parametrize(("config", "field", "problem"), BAD_CONFIGS)
def test_a_config_of_the_wrong_shape_is_refused_naming_the_field(
    config: bytes, field: str, problem: str, tmp_path: Path
) -> None:
    """A base config that is not UTF-8 JSON, not an object, nested absurdly deep, or whose
    fields are not of the OCI spec's types is an input error naming the base and the field,
    never a traceback and never carried into the image."""
    reference = config_layout(tmp_path / "base", config)
    with pytest.raises(BaseConfigError) as caught:
        build(reference, tmp_path)
    assert caught.value.reference == reference
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert caught.value.exit_code == 2
    assert not list((tmp_path / "store").glob("oci/bases/*.json"))


SOURCES: list[Any] = [
    pytest.param(lambda tmp, config: config_layout(tmp / "layout", config), id="oci"),
    pytest.param(lambda tmp, config: oci_archive(tmp / "image.tar", config), id="oci-archive"),
    pytest.param(
        lambda tmp, config: docker_archive(tmp / "image.tar", config), id="docker-archive"
    ),
]


@pytest.mark.parametrize("make", SOURCES)
@pytest.mark.parametrize(
    ("config", "field"),
    [
        pytest.param(b"[1,2,3]", "", id="a-list"),
        pytest.param(runtime_with(Cmd=5, Entrypoint={"x": 1}), "config.Cmd", id="cmd-number"),
    ],
)
def test_every_local_source_checks_the_config(
    make: Callable[[Path, bytes], str], config: bytes, field: str, tmp_path: Path
) -> None:
    """An OCI layout, an OCI archive and a docker-archive (what an engine export is read
    as) all refuse a config of the wrong shape, naming the base and the field."""
    reference = make(tmp_path, config)
    with pytest.raises(BaseConfigError) as caught:
        build(reference, tmp_path)
    assert caught.value.field == field
    assert caught.value.reference == str(parse_reference(reference, step="test"))


@pytest.mark.parametrize(
    ("config", "field"),
    [
        pytest.param(b"[1,2,3]", "", id="a-list"),
        pytest.param(runtime_with(Cmd=5), "config.Cmd", id="cmd-number"),
        pytest.param(config_with(history=[1]), "history[0]", id="history-number"),
    ],
)
def test_a_registry_base_config_is_checked(config: bytes, field: str, tmp_path: Path) -> None:
    """A config pulled from a registry is checked as a local one is."""
    manifest, blobs = image_documents(config)
    with HostileServer(registry_handler(registry_documents(manifest), blobs)) as server:
        reference = f"{server.host}/base:1"
        with pytest.raises(BaseConfigError) as caught:
            build(reference, tmp_path)
    assert (caught.value.reference, caught.value.field) == (reference, field)


def test_a_config_the_store_holds_is_checked_too(tmp_path: Path) -> None:
    """A base whose blobs the store holds already (an earlier import left them) is read from
    the store with the same checks: its bad config is refused there too."""
    manifest, blobs = image_documents(runtime_with(Cmd=5))
    store = Store(tmp_path / "store")
    for data in [manifest, *blobs.values()]:
        put_blob(store, data, "application/octet-stream")
    reference = f"oci:{tmp_path / 'gone'}@{oci.sha256(manifest)}"  # only the store has it
    with pytest.raises(BaseConfigError) as caught:
        oci.build({"a": dsl.image(reference).cmd("x")}, store)
    assert caught.value.field == "config.Cmd"


def test_the_cli_says_what_is_wrong_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``imagedsl build`` on such a base exits 2 with one line naming the base and the field."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # the checkout under test, from any cwd
    reference = config_layout(tmp_path / "base", runtime_with(Labels={"a": 1}))
    project = tmp_path / "project"
    project.mkdir()
    (project / "build.py").write_text(
        f"import imagedsl as dsl\napp = dsl.image({reference!r}).cmd('x')\n"
    )
    result = imagedsl(
        "build", "build.py:app", "--backend", "oci", cwd=project, store=tmp_path / "s"
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if reference in line]
    assert len(errors) == 1
    assert "config.Labels" in errors[0]


def test_inspect_checks_the_config_of_an_image_read_in_place(tmp_path: Path) -> None:
    """An image read where it is (``imagedsl inspect``) has its config checked the same way."""
    reference = config_layout(tmp_path / "base", b'{"rootfs": [1]}')
    with (
        pytest.raises(BaseConfigError) as caught,
        read_local_image(parse_reference(reference, step="test"), "linux/amd64"),
    ):
        pass
    assert caught.value.field == "rootfs"


# -- layouts whose index or manifest is not one -------------------------------------------------


DEEP = b'{"x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"


@pytest.mark.parametrize(
    ("manifest", "index"),
    [
        pytest.param(b"[1,2]", None, id="manifest-a-list"),
        pytest.param(DEEP, None, id="manifest-too-deep"),
        pytest.param(b"{}", DEEP, id="index-json-too-deep"),
    ],
)
def test_a_layout_manifest_that_is_not_an_object_is_refused(
    manifest: bytes, index: bytes | None, tmp_path: Path
) -> None:
    """A layout whose manifest is a JSON list, or nested past what a parser can read, or
    whose index.json nests so, is one base-image error naming the base."""
    reference = write_layout(tmp_path / "base", manifest, {}, index=index)
    with pytest.raises(BaseImageError) as caught:
        build(reference, tmp_path)
    assert isinstance(caught.value, InputError)
    assert str(tmp_path / "base") in caught.value.reference


def test_index_entry_annotations_that_are_not_an_object_are_refused(tmp_path: Path) -> None:
    """An index.json entry whose annotations are not an object matches no tag: a base-image
    error listing what the layout holds."""
    manifest, blobs = image_documents(config_with())
    entry = {"mediaType": OCI_MANIFEST, "digest": oci.sha256(manifest), "size": len(manifest)}
    index = json.dumps({"schemaVersion": 2, "manifests": [{**entry, "annotations": "x"}]})
    reference = write_layout(tmp_path / "layout", manifest, blobs, index=index.encode())
    with pytest.raises(BaseImageError) as caught:
        build(reference, tmp_path)
    assert "no single image matches 1" in caught.value.problem


def test_a_docker_archive_listing_other_than_objects_is_refused(tmp_path: Path) -> None:
    """A docker-archive whose manifest.json lists something other than objects is a
    base-image error."""
    archive = docker_archive(tmp_path / "image.tar", config_with(), listing=[1])
    with pytest.raises(BaseImageError) as caught:
        build(archive, tmp_path)
    assert "manifest.json" in caught.value.problem


def test_a_registry_manifest_nested_too_deeply_is_one_error() -> None:
    """A manifest nested past what a parser reads is a registry error, not a RecursionError."""
    with (
        HostileServer(registry_handler({"1": (OCI_MANIFEST, DEEP)}, {})) as server,
        RegistryClient(docker_config=DockerConfig()) as client,
        pytest.raises(RegistryError) as caught,
    ):
        client.get_manifest(f"{server.host}/x:1")
    assert "nested too deeply" in caught.value.detail


# -- F11: a config too large to read ---------------------------------------------------------------


def padded_config(size: int) -> bytes:
    """A valid config of exactly ``size`` bytes."""
    bare = config_with(pad="")
    return config_with(pad="A" * (size - len(bare)))


def test_a_registry_config_over_4_mib_is_refused_before_it_is_fetched(tmp_path: Path) -> None:
    """The config's descriptor says 5 MiB: refused, naming the base, and no blob (neither the
    config nor a layer) is requested."""
    config = padded_config(5 * MIB)
    manifest, blobs = image_documents(config)
    with HostileServer(registry_handler(registry_documents(manifest), blobs)) as server:
        reference = f"{server.host}/big:1"
        with pytest.raises(BaseConfigTooLargeError) as caught:
            build(reference, tmp_path)
        assert blob_requests(server) == 0
    assert caught.value.reference == reference
    assert (caught.value.size, caught.value.limit) == (5 * MIB, MAX_CONFIG)


@pytest.mark.parametrize(
    ("claimed", "refused_at"),
    [
        pytest.param(None, 5 * MIB, id="descriptor-says-so"),
        pytest.param(100, 5 * MIB, id="descriptor-lies"),
    ],
)
def test_a_layout_config_over_4_mib_is_refused_before_it_is_read(
    claimed: int | None, refused_at: int, tmp_path: Path
) -> None:
    """A layout's config over 4 MiB is refused from its descriptor, or from its file's size
    when the descriptor claims less."""
    reference = config_layout(tmp_path / "base", padded_config(5 * MIB), config_size=claimed)
    with pytest.raises(BaseConfigTooLargeError) as caught:
        build(reference, tmp_path)
    assert caught.value.size == refused_at
    assert caught.value.exit_code == 2


def test_a_docker_archive_config_over_4_mib_is_refused(tmp_path: Path) -> None:
    """A docker-archive's (or an engine export's) config file over 4 MiB is refused from its
    size in the archive."""
    reference = docker_archive(tmp_path / "image.tar", padded_config(5 * MIB))
    with pytest.raises(BaseConfigTooLargeError) as caught:
        build(reference, tmp_path)
    assert caught.value.size == 5 * MIB


# -- F15: a layer type the backend cannot read ------------------------------------------------------


@pytest.mark.parametrize(
    "layer_type",
    [
        pytest.param("application/x-evil", id="unknown"),
        pytest.param("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", id="foreign"),
    ],
)
def test_an_unreadable_layer_type_is_refused_before_any_blob_is_fetched(
    layer_type: str, tmp_path: Path
) -> None:
    """A registry base with a layer of a type the backend cannot read is refused, naming the
    type, without a single blob request."""
    manifest, blobs = image_documents(config_with(), layer_type=layer_type)
    with HostileServer(registry_handler(registry_documents(manifest), blobs)) as server:
        with pytest.raises(BaseImageError) as caught:
            build(f"{server.host}/base:1", tmp_path)
        assert blob_requests(server) == 0
    assert layer_type in caught.value.problem


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


def served_chain(
    depth: int, fan: int
) -> tuple[dict[str, tuple[str, bytes]], list[bytes], dict[str, bytes]]:
    """:func:`index_chain` as a registry serves it (tag ``1`` is the top index; the innermost
    document is the image manifest): the documents by reference, the documents, the blobs."""
    top, documents, blobs = index_chain(depth, fan=fan)
    served = {oci.sha256(d): (OCI_INDEX, d) for d in documents}
    served["1"] = (OCI_INDEX, top)
    served[oci.sha256(documents[0])] = (OCI_MANIFEST, documents[0])
    return served, documents, blobs


def test_pull_all_fetches_each_manifest_once(tmp_path: Path) -> None:
    """``pull_all`` of indexes that list the next one twice fetches each manifest once."""
    served, documents, blobs = served_chain(4, fan=2)
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
    served, _, blobs = served_chain(5, fan=1)
    with (
        HostileServer(registry_handler(served, blobs)) as server,
        RegistryClient(docker_config=DockerConfig()) as client,
    ):
        with pytest.raises(RegistryError) as caught:
            client.pull_all(f"{server.host}/x:1", Store(tmp_path / "s"))
        assert blob_requests(server) == 0
    assert "more than 4 manifests deep" in caught.value.detail


def test_pushing_a_layout_whose_index_annotations_are_no_object_is_one_error(
    tmp_path: Path,
) -> None:
    """``imagedsl push oci:DIR:TAG`` read an index.json entry's annotations as an object: a
    string there was an AttributeError traceback. Now the entry matches no tag: one line,
    exit 2, before anything is sent."""
    manifest, blobs = image_documents(config_with())
    entry = {"mediaType": OCI_MANIFEST, "digest": oci.sha256(manifest), "size": len(manifest)}
    index = json.dumps({"schemaVersion": 2, "manifests": [{**entry, "annotations": "x"}]})
    write_layout(tmp_path / "layout", manifest, blobs, index=index.encode())
    done = imagedsl(
        "push", f"oci:{tmp_path / 'layout'}:1", "127.0.0.1:9/x:1", cwd=REPO_ROOT,
        store=tmp_path / "store",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "index.json" in done.stderr

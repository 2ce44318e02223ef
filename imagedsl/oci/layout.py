"""OCI image layouts and image archives: reading base images, writing outputs.

Base images come from an OCI layout directory (``oci:DIR[:TAG]``), an OCI archive
(``oci-archive:FILE[:TAG]``), a ``docker save`` archive (``docker-archive:FILE[:TAG]``), or the
local engine (``docker-daemon:NAME[:TAG]``, through ``docker save``). Their blobs are copied
into the store only after their bytes match their digests, and their layers are kept as they
are (never recompressed), so an output image refers to the very blobs the base was made of.
Every layer is read once through :func:`imagedsl.backends.oci._fs.scan_layer`, which refuses
entries that could escape the root.

Outputs: an OCI layout directory (``oci:DIR[:TAG]``, blobs hard-linked from the store, then
``index.json`` replaced atomically, last), and one archive format for both
``oci-archive:FILE[:TAG]`` and ``docker-archive:FILE[:TAG]``: an OCI layout in a tar that also
carries Docker's ``manifest.json``, which is what ``docker load``, ``podman load`` and
skopeo's ``oci-archive:`` and ``docker-archive:`` transports each look for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import attrs

from imagedsl.backends import BuildRequestError
from imagedsl.backends.oci._blobs import (
    BlobDigestError,
    BlobStore,
    MissingBlobError,
    VerifyingReader,
    check_digest,
    damaged_as_digest_error,
    link_or_copy,
)
from imagedsl.backends.oci._fs import (
    Filesystem,
    LayerIndex,
    decompressed,
    drain,
    load_index,
    save_index,
    scan_layer,
    sniff_compression,
)
from imagedsl.backends.oci.layer import MEDIA_TYPES, LayerBlob
from imagedsl.errors import ImageDSLError
from imagedsl.ledger import atomic_file, atomic_write, fsync_dir

if TYPE_CHECKING:
    from imagedsl.backends.engine import DockerEngine
    from imagedsl.registry import RegistryClient
    from imagedsl.steps import ImageReference

MANIFEST_OCI: Final = "application/vnd.oci.image.manifest.v1+json"
INDEX_OCI: Final = "application/vnd.oci.image.index.v1+json"
CONFIG_OCI: Final = "application/vnd.oci.image.config.v1+json"
MANIFEST_DOCKER: Final = "application/vnd.docker.distribution.manifest.v2+json"
LIST_DOCKER: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME: Final = "org.opencontainers.image.ref.name"
CONTAINERD_NAME: Final = "io.containerd.image.name"
_LAYER_TYPES: Final = {
    MEDIA_TYPES["gzip"]: MEDIA_TYPES["gzip"],
    MEDIA_TYPES["zstd"]: MEDIA_TYPES["zstd"],
    MEDIA_TYPES["none"]: MEDIA_TYPES["none"],
    "application/vnd.docker.image.rootfs.diff.tar.gzip": MEDIA_TYPES["gzip"],
    "application/vnd.docker.image.rootfs.diff.tar": MEDIA_TYPES["none"],
    "application/vnd.docker.image.rootfs.diff.tar.zstd": MEDIA_TYPES["zstd"],
}
_MAX_JSON: Final = 16 << 20
_OUTPUT_KINDS: Final = ("oci", "oci-archive", "docker-archive", "docker")


class BaseImageError(ImageDSLError):
    """A base image cannot be read from where its reference says."""

    def __init__(self, reference: str, problem: str) -> None:
        super().__init__(reference, problem)
        self.reference = reference
        self.problem = problem

    def __str__(self) -> str:
        return f"base image {self.reference}: {self.problem}"


@attrs.frozen(kw_only=True)
class Output:
    """Where a built image goes: ``kind`` is oci, oci-archive, docker-archive or docker."""

    kind: str
    path: str | None
    tag: str | None

    @classmethod
    def parse(cls, text: str) -> Output:
        """Parse ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:TAG]``,
        ``docker[:TAG]``."""
        kind, sep, rest = text.partition(":")
        if kind not in _OUTPUT_KINDS:
            raise BuildRequestError(
                f"--output {text!r}: expected oci:DIR[:TAG], oci-archive:FILE[:TAG], "
                "docker-archive:FILE[:TAG] or docker[:TAG]"
            )
        if kind == "docker":
            return cls(kind=kind, path=None, tag=rest or None)
        if not sep or not rest:
            raise BuildRequestError(f"--output {text!r}: {kind}: needs a path")
        path, _, tag = rest.partition(":")
        if not path:
            raise BuildRequestError(f"--output {text!r}: {kind}: needs a path")
        return cls(kind=kind, path=path, tag=tag or None)


@attrs.frozen(kw_only=True)
class BaseImage:
    """A base image in the store: its manifest digest, config, and layers as they were."""

    reference: str
    manifest_digest: str
    config: Mapping[str, Any] = attrs.field(eq=False, repr=False)
    layers: tuple[LayerBlob, ...]


@attrs.frozen(kw_only=True)
class BuiltImage:
    """An image whose blobs are all in the store."""

    manifest: bytes = attrs.field(repr=False)
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerBlob, ...]

    @property
    def blob_digests(self) -> list[str]:
        """Config and layers (the manifest apart)."""
        return [self.config_digest, *(layer.digest for layer in self.layers)]


# -- reading base images -----------------------------------------------------------------


class _Source:
    """Where a base image's files are: a layout directory or a tar."""

    where: str

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def read_json(self, name: str) -> Any:
        with self.open(name) as handle:
            data = handle.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise BaseImageError(self.where, f"{name} is too large")
        try:
            return json.loads(data)
        except ValueError:
            raise BaseImageError(self.where, f"{name} is not valid JSON") from None

    def close(self) -> None:
        """Release the source."""


class _DirSource(_Source):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        if not root.is_dir():
            raise BaseImageError(str(root), "is not a directory (an OCI layout was expected)")

    def open(self, name: str) -> IO[bytes]:
        path = self.root / name
        if path.is_symlink() or not path.is_file():
            raise BaseImageError(self.where, f"has no file {name}")
        return path.open("rb")


class _TarSource(_Source):
    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            self.archive = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close()
        except (OSError, tarfile.TarError) as error:
            raise BaseImageError(str(path), f"cannot be read as a tar archive: {error}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in self.archive.getmembers():
            name = member.name.removeprefix("./")
            if member.isreg():
                self.members[name] = member

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name)
        if member is None:
            raise BaseImageError(self.where, f"has no file {name}")
        handle = self.archive.extractfile(member)
        assert handle is not None
        return handle

    def close(self) -> None:
        self.archive.close()


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + check_digest(digest).partition(":")[2]


def import_base(
    reference: ImageReference,
    platform: str,
    blobs: BlobStore,
    *,
    engine: Callable[[], DockerEngine],
    registry: Callable[[], RegistryClient],
) -> BaseImage:
    """Bring a base image's blobs into the store (checked) and read its config."""
    shown = str(reference)
    if reference.transport == "registry":
        return _import_registry(reference, platform, blobs, registry())
    if reference.transport == "docker-daemon":
        return _import_daemon(reference, platform, blobs, engine())
    path, tag = _split_path_tag(reference.name, reference.tag)
    source: _Source
    if reference.transport == "oci":
        source = _DirSource(path)
    else:
        if not path.is_file():
            raise BaseImageError(shown, f"{path} is not a file")
        source = _TarSource(path)
    try:
        if reference.transport == "docker-archive":
            return _import_docker_archive(source, shown, tag, blobs)
        return _import_layout(source, shown, tag, reference.digest, platform, blobs)
    finally:
        source.close()


def _split_path_tag(name: str, tag: str | None) -> tuple[Path, str | None]:
    """The path and tag of ``FILE[:TAG]``; a tag may hold ``:`` (``name:1``), so when the
    reference was split at its last ``:`` and that path does not exist, split at the first."""
    path = Path(name).expanduser()
    if not path.exists() and ":" in name:
        head, _, rest = name.partition(":")
        if Path(head).expanduser().exists():
            return Path(head).expanduser(), f"{rest}:{tag}" if tag else rest
    return path, tag


def _import_layout(
    source: _Source,
    shown: str,
    tag: str | None,
    digest: str | None,
    platform: str,
    blobs: BlobStore,
) -> BaseImage:
    descriptor: Mapping[str, Any] = _choose(source, shown, tag, digest)
    for _ in range(4):  # an index may point at an index (multi-platform)
        media_type = descriptor.get("mediaType")
        manifest_digest = check_digest(descriptor.get("digest"))
        with source.open(_blob_name(manifest_digest)) as handle:
            blobs.import_stream(handle, manifest_digest, source.where)
        document = json.loads(blobs.read(manifest_digest))
        media_type = document.get("mediaType", media_type)
        if media_type in (INDEX_OCI, LIST_DOCKER) or "manifests" in document:
            descriptor = _pick_platform(shown, document, platform)
            continue
        return _import_manifest(source, shown, manifest_digest, document, blobs)
    raise BaseImageError(shown, "nests image indexes too deeply")


def _choose(source: _Source, shown: str, tag: str | None, digest: str | None) -> Mapping[str, Any]:
    """The one index.json entry a tag (or digest) names, or an error listing what is there."""
    index = source.read_json("index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise BaseImageError(shown, "index.json lists no manifests")
    if digest is not None:
        chosen = [m for m in manifests if isinstance(m, dict) and m.get("digest") == digest]
    elif tag is not None:
        chosen = [
            m
            for m in manifests
            if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == tag
        ]
    else:
        chosen = [m for m in manifests if isinstance(m, dict)]
    if len(chosen) != 1:
        names = sorted(
            str((m.get("annotations") or {}).get(REF_NAME))
            for m in manifests
            if isinstance(m, dict)
        )
        wanted = digest or tag or "(no tag: the layout must hold exactly one image)"
        raise BaseImageError(shown, f"no single image matches {wanted}; it holds {names}")
    entry: Mapping[str, Any] = chosen[0]
    return entry


def local_base_digest(reference: ImageReference, platform: str) -> str | None:  # noqa: ARG001
    """What a local base (OCI layout or archive) names now, read without importing it.

    For plans: the digest of the index.json entry the tag names (an OCI layout or archive),
    or for a docker-archive the digest of the image's config (it has no manifest digest).
    Registry bases are pinned by the lock file and docker-daemon bases need a daemon, so
    both give None here (unpinned). A base that cannot be read also gives None: the build
    will say what is wrong with it.
    """
    if reference.transport not in ("oci", "oci-archive", "docker-archive"):
        return None
    path, tag = _split_path_tag(reference.name, reference.tag)
    shown = str(reference)
    try:
        source: _Source = _DirSource(path) if reference.transport == "oci" else _TarSource(path)
    except (OSError, tarfile.TarError, BaseImageError):
        return None
    try:
        if reference.transport == "docker-archive":
            manifest = source.read_json("manifest.json")
            entries = manifest if isinstance(manifest, list) else []
            if tag is not None:
                wanted = {tag, normalise_tag(tag)}
                entries = [m for m in entries if wanted.intersection(m.get("RepoTags") or [])]
            if len(entries) != 1:
                return None
            named = re.search(r"([0-9a-f]{64})(?:\.json)?$", str(entries[0].get("Config") or ""))
            return None if named is None else f"sha256:{named.group(1)}"
        return check_digest(_choose(source, shown, tag, reference.digest).get("digest"))
    except (OSError, ValueError, KeyError, tarfile.TarError, ImageDSLError):
        return None
    finally:
        source.close()


def _pick_platform(shown: str, index: Mapping[str, Any], platform: str) -> Mapping[str, Any]:
    os_name, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    candidates = []
    for item in index.get("manifests") or []:
        wanted = item.get("platform") or {}
        if (
            wanted.get("os") == os_name
            and wanted.get("architecture") == arch
            and (not variant or wanted.get("variant") in (None, variant))
        ):
            candidates.append(item)
    if not candidates:
        raise BaseImageError(shown, f"has no image for platform {platform}")
    return dict(candidates[0])


def _import_manifest(
    source: _Source, shown: str, manifest_digest: str, manifest: Mapping[str, Any], blobs: BlobStore
) -> BaseImage:
    config_descriptor = manifest.get("config") or {}
    config_digest = check_digest(config_descriptor.get("digest"))
    with source.open(_blob_name(config_digest)) as handle:
        blobs.import_stream(handle, config_digest, source.where)
    config = json.loads(blobs.read(config_digest))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    descriptors = manifest.get("layers") or []
    if len(diff_ids) != len(descriptors):
        raise BaseImageError(shown, "its config and manifest disagree on the number of layers")
    layers = []
    for descriptor, diff_id in zip(descriptors, diff_ids, strict=True):
        media_type = _LAYER_TYPES.get(descriptor.get("mediaType", ""))
        if media_type is None:
            raise BaseImageError(
                shown, f"has a layer of unsupported type {descriptor.get('mediaType')!r}"
            )
        digest = check_digest(descriptor.get("digest"))
        with source.open(_blob_name(digest)) as handle:
            blobs.import_stream(handle, digest, source.where)
        layers.append(
            LayerBlob(
                digest=digest,
                size=int(descriptor.get("size") or blobs.path(digest).stat().st_size),
                diff_id=check_digest(diff_id),
                media_type=media_type,
                uncompressed_size=0,
            )
        )
    return BaseImage(
        reference=shown, manifest_digest=manifest_digest, config=config, layers=tuple(layers)
    )


def _import_docker_archive(
    source: _Source, shown: str, tag: str | None, blobs: BlobStore
) -> BaseImage:
    manifest = source.read_json("manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise BaseImageError(shown, "manifest.json lists no images")
    if tag is not None:
        wanted = {tag, normalise_tag(tag)}
        chosen = [
            m for m in manifest if wanted.intersection(m.get("RepoTags") or []) or m.get("") == tag
        ]
    else:
        chosen = manifest
    if len(chosen) != 1:
        tags = sorted(t for m in manifest for t in m.get("RepoTags") or [])
        raise BaseImageError(shown, f"no single image matches {tag or '(no tag)'}; it holds {tags}")
    entry = chosen[0]
    config_name = str(entry.get("Config") or "")
    with source.open(config_name) as handle:
        config_bytes = handle.read(_MAX_JSON)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    named = re.search(r"([0-9a-f]{64})(?:\.json)?$", config_name)
    if named and named.group(1) != config_digest.partition(":")[2]:
        raise BlobDigestError(f"{shown} {config_name}", "sha256:" + named.group(1), config_digest)
    blobs.put(config_bytes)
    config = json.loads(config_bytes)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    names = entry.get("Layers") or []
    if len(diff_ids) != len(names):
        raise BaseImageError(shown, "its config and manifest.json disagree on the layer count")
    layers = []
    for name, diff_id in zip(names, diff_ids, strict=True):
        digest, size, head = _import_unknown(source, str(name), blobs)
        layers.append(
            LayerBlob(
                digest=digest,
                size=size,
                diff_id=check_digest(diff_id),
                media_type=MEDIA_TYPES[sniff_compression(head)],  # type: ignore[index]
                uncompressed_size=0,
            )
        )
    document = manifest_document(config_digest, len(config_bytes), layers, {})
    manifest_digest = blobs.put(document)
    return BaseImage(
        reference=shown, manifest_digest=manifest_digest, config=config, layers=tuple(layers)
    )


def _import_unknown(source: _Source, name: str, blobs: BlobStore) -> tuple[str, int, bytes]:
    """Import a blob whose digest is only known once read (docker-archive layers)."""
    hasher = hashlib.sha256()
    size = 0
    head = b""
    with source.open(name) as handle, blobs.writer() as out:
        while True:
            data = handle.read(1 << 20)
            if not data:
                break
            if not head:
                head = data[:4]
            hasher.update(data)
            size += len(data)
            out.write(data)
        digest = "sha256:" + hasher.hexdigest()
        named = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", name)
        if named and named.group(1) != digest.partition(":")[2]:
            raise BlobDigestError(f"{source.where} {name}", "sha256:" + named.group(1), digest)
        if not blobs.has(digest, size):
            blobs.commit(out, digest)
    return digest, size, head


def _import_registry(
    reference: ImageReference, platform: str, blobs: BlobStore, client: RegistryClient
) -> BaseImage:
    """Pull through the registry client (which checks every digest) into the store."""
    from imagedsl.registry import Platform

    pulled = client.pull(reference, blobs.store, platform=Platform.parse(platform))
    config = json.loads(blobs.read(pulled.config.digest))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(pulled.layers):
        raise BaseImageError(str(reference), "its config and manifest disagree on the layer count")
    layers = []
    for descriptor, diff_id in zip(pulled.layers, diff_ids, strict=True):
        media_type = _LAYER_TYPES.get(descriptor.media_type)
        if media_type is None:
            raise BaseImageError(
                str(reference), f"has a layer of unsupported type {descriptor.media_type!r}"
            )
        layers.append(
            LayerBlob(
                digest=check_digest(descriptor.digest),
                size=descriptor.size,
                diff_id=check_digest(diff_id),
                media_type=media_type,
                uncompressed_size=0,
            )
        )
    return BaseImage(
        reference=str(reference),
        manifest_digest=pulled.manifest.digest,
        config=config,
        layers=tuple(layers),
    )


def _import_daemon(
    reference: ImageReference, platform: str, blobs: BlobStore, engine: DockerEngine
) -> BaseImage:
    name = f"{reference.name}:{reference.tag or 'latest'}"
    if reference.digest:
        name = f"{reference.name}@{reference.digest}"
    shown = str(reference)
    found = engine.run("image", "inspect", "--format", "{{.Id}}", name, check=False)
    image_id = found.stdout.strip()
    if found.returncode != 0 or not image_id.startswith("sha256:"):
        raise BaseImageError(shown, f"the local engine has no image {name}")
    memo = blobs.store.root / "oci" / "daemon" / f"{image_id.partition(':')[2]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(memo.read_bytes())
        base = _base_from_store(shown, saved["manifest"], blobs)
        if base is not None:
            return base
    tmp_root = blobs.store.root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        archive = Path(tmp, "image.tar")
        engine.run("save", "-o", str(archive), name)
        source = _TarSource(archive)
        try:
            base = _import_docker_archive(source, shown, None, blobs)
        finally:
            source.close()
    atomic_write(memo, json.dumps({"manifest": base.manifest_digest}).encode())
    del platform  # the engine holds one platform per tag; the config says which
    return base


def _base_from_store(shown: str, manifest_digest: str, blobs: BlobStore) -> BaseImage | None:
    if not blobs.has(manifest_digest):
        return None
    manifest = json.loads(blobs.read(manifest_digest))
    config_digest = manifest["config"]["digest"]
    if not blobs.has(config_digest):
        return None
    config = json.loads(blobs.read(config_digest))
    layers = []
    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        if not blobs.has(descriptor["digest"], descriptor["size"]):
            return None
        layers.append(
            LayerBlob(
                digest=descriptor["digest"],
                size=descriptor["size"],
                diff_id=diff_id,
                media_type=descriptor["mediaType"],
                uncompressed_size=0,
            )
        )
    return BaseImage(
        reference=shown, manifest_digest=manifest_digest, config=config, layers=tuple(layers)
    )


def layer_index(blobs: BlobStore, layer: LayerBlob, lower: Filesystem | None) -> LayerIndex:
    """The index of a layer in the store, reading (and checking) the layer if needed.

    Reading checks the blob's digest and the diff_id of the tar inside it, and refuses unsafe
    entries (:func:`~imagedsl.backends.oci._fs.scan_layer`). Layers we wrote ourselves have
    their index saved when written, so they are never read back for it.
    """
    found = load_index(blobs.store, layer.diff_id)
    if found is not None:
        return found
    with blobs.open(layer.digest) as raw, damaged_as_digest_error(raw, f"layer {layer.digest}"):
        inner = VerifyingReader(decompressed(raw), layer.diff_id, f"the tar inside {layer.digest}")
        index = scan_layer(inner, layer=layer.digest, diff_id=layer.diff_id, lower=lower)  # type: ignore[arg-type]
        inner.drain()
        drain(raw)
    save_index(blobs.store, index)
    return index


# -- writing images --------------------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The one byte form of our JSON documents: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def descriptor_of(layer: LayerBlob) -> dict[str, Any]:
    """The manifest descriptor of a layer."""
    return {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}


def manifest_document(
    config_digest: str,
    config_size: int,
    layers: Sequence[LayerBlob],
    annotations: Mapping[str, str],
) -> bytes:
    """An OCI image manifest."""
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_OCI,
        "config": {"mediaType": CONFIG_OCI, "digest": config_digest, "size": config_size},
        "layers": [descriptor_of(layer) for layer in layers],
    }
    if annotations:
        document["annotations"] = dict(annotations)
    return canonical_json(document)


def normalise_tag(tag: str) -> str:
    """``name`` -> ``name:latest`` (what Docker's RepoTags hold)."""
    last = tag.rsplit("/", 1)[-1]
    return tag if ":" in last or "@" in last else f"{tag}:latest"


def _index_entry(image: BuiltImage, tag: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "mediaType": MANIFEST_OCI,
        "digest": image.manifest_digest,
        "size": len(image.manifest),
    }
    if tag:
        entry["annotations"] = {REF_NAME: tag}
    return entry


def write_layout(directory: Path, image: BuiltImage, tags: Sequence[str], blobs: BlobStore) -> None:
    """Add ``image`` to an OCI layout directory (made if missing) under ``tags``.

    Blobs go in first (each linked atomically under its name), ``index.json`` last, replaced
    atomically: a build killed at any point leaves the layout as it was or with the image.
    """
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / "oci-layout"
    if not marker.exists():
        atomic_write(marker, canonical_json({"imageLayoutVersion": "1.0.0"}))
    for digest in [*image.blob_digests, image.manifest_digest]:
        dest = directory / _blob_name(digest)
        if not dest.exists():
            link_or_copy(blobs.path(digest), dest)
    fsync_dir(directory / "blobs" / "sha256")
    manifests: list[dict[str, Any]] = []
    index_file = directory / "index.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        old = json.loads(index_file.read_bytes())
        manifests = [m for m in old.get("manifests", []) if isinstance(m, dict)]
    wanted: list[str | None] = [*tags] or [None]
    kept = []
    for item in manifests:
        name = (item.get("annotations") or {}).get(REF_NAME)
        if name in wanted or (name is None and item.get("digest") == image.manifest_digest):
            continue
        kept.append(item)
    kept.extend(_index_entry(image, tag) for tag in wanted)
    index = {"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": kept}
    atomic_write(index_file, canonical_json(index))


def write_archive(
    path: Path, image: BuiltImage, tags: Sequence[str], blobs: BlobStore, *, mtime: int
) -> None:
    """One tar that is both an OCI layout and a ``docker save`` archive, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config_name = _blob_name(image.config_digest)
    docker_manifest = [
        {
            "Config": config_name,
            "RepoTags": [normalise_tag(t) for t in tags if _is_docker_name(normalise_tag(t))],
            "Layers": [_blob_name(layer.digest) for layer in image.layers],
        }
    ]
    names: list[str | None] = [*tags] or [None]
    entries = [_index_entry(image, tag) for tag in names]
    for entry, tag in zip(entries, tags, strict=False):
        if _is_docker_name(normalise_tag(tag)):
            entry.setdefault("annotations", {})[CONTAINERD_NAME] = normalise_tag(tag)
    index = {"schemaVersion": 2, "mediaType": INDEX_OCI, "manifests": entries}
    with (
        atomic_file(path) as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        _add_dir(archive, "blobs/", mtime)
        _add_dir(archive, "blobs/sha256/", mtime)
        seen = set()
        for digest in [*image.blob_digests, image.manifest_digest]:
            if digest in seen:
                continue
            seen.add(digest)
            source = blobs.path(digest)
            if not source.exists():
                raise MissingBlobError(str(blobs.store.root), digest)
            info = _info(_blob_name(digest), mtime)
            info.size = source.stat().st_size
            with source.open("rb") as handle:
                archive.addfile(info, handle)
        for name, data in (
            ("index.json", canonical_json(index)),
            ("manifest.json", canonical_json(docker_manifest)),
            ("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
        ):
            info = _info(name, mtime)
            info.size = len(data)
            archive.addfile(info, _BytesReader(data))


def _is_docker_name(tag: str) -> bool:
    return bool(
        re.fullmatch(r"[a-z0-9][a-z0-9._/-]*(?::\d+)?(?:/[a-z0-9._-]+)*:[\w][\w.-]{0,127}", tag)
    )


def _info(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_dir(archive: tarfile.TarFile, name: str, mtime: int) -> None:
    info = _info(name, mtime)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    archive.addfile(info)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._offset + n
        chunk = self._data[self._offset : end]
        self._offset += len(chunk)
        return chunk


def load_into_docker(archive: Path, tags: Sequence[str], engine: DockerEngine) -> str:
    """``docker load`` an archive; return what the engine calls the image."""
    from imagedsl.backends.engine import DockerCommandError

    try:
        result = engine.run("load", "-i", str(archive))
    except DockerCommandError as error:
        problem = (error.stderr or error.stdout or "").strip().splitlines()[-1:]
        raise BuildRequestError(
            f"docker load refused the image: {' '.join(problem) or error}"
            " (zstd layers need an engine that reads them; gzip works everywhere)"
        ) from None
    loaded = ""
    for line in result.stdout.splitlines():
        if line.startswith(("Loaded image:", "Loaded image ID:")):
            loaded = line.split(":", 1)[1].strip()
    return normalise_tag(tags[0]) if tags else loaded


@contextlib.contextmanager
def scratch_dir(blobs: BlobStore) -> Iterator[Path]:
    """A temporary directory inside the store (same filesystem as the blobs)."""
    root = blobs.store.root / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        yield Path(tmp)

"""Reading OCI image layouts and image archives, into the store or in place.

Images are read from an OCI layout directory (``oci:DIR[:TAG]``), an OCI archive
(``oci-archive:FILE[:TAG]``) or a ``docker save`` archive (``docker-archive:FILE[:TAG]``). Their
blobs are copied into the store only after their bytes match their digests, and their layers
are kept as they are (never recompressed), so an image made on top of one refers to the very
blobs it was made of. :class:`LayoutBlobs` serves a layout's blobs as they are (to push them);
:func:`read_local_image` reads an image where it is, without copying it (``imagedsl inspect``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, cast

import attrs

from imagedsl.errors import ImageDSLError, InputError
from imagedsl.oci.annotations import CONTAINERD_IMAGE_NAME, REF_NAME
from imagedsl.oci.blobs import BlobDigestError, BlobStore, check_digest
from imagedsl.oci.image import BaseImage, LayerBlob
from imagedsl.oci.manifest import manifest_document
from imagedsl.oci.mediatypes import (
    DOCKER_MANIFEST_LIST,
    LAYER_MEDIA_TYPES,
    OCI_INDEX,
    READABLE_LAYER_TYPES,
    sniff_compression,
)
from imagedsl.oci.reference import name_of_tag, normalise_tag

if TYPE_CHECKING:
    from imagedsl.oci.reference import ImageReference

_MAX_JSON: Final = 16 << 20


@attrs.define
class BaseImageError(InputError):
    """A base image cannot be read from where its reference says."""

    reference: str
    problem: str

    def __str__(self) -> str:
        return f"base image {self.reference}: {self.problem}"


@attrs.frozen
class LayoutBlobs:
    """The blobs of an OCI image layout directory, as a :class:`~imagedsl.oci.blobs.BlobSource`."""

    root: Path

    def blob_path(self, digest: str) -> Path:
        """``ROOT/blobs/<algorithm>/<hex>``."""
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "blobs" / algorithm / hexdigest


# -- sources -------------------------------------------------------------------------------


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


def blob_name(digest: str) -> str:
    """Where a blob lives inside a layout: ``blobs/sha256/<hex>``."""
    return "blobs/sha256/" + check_digest(digest).partition(":")[2]


def _local_source(reference: ImageReference) -> tuple[str, str | None, _Source]:
    """The reference as shown, its tag, and the layout directory or archive it names."""
    shown = str(reference)
    path, tag = split_path_tag(reference.name, reference.tag)
    if reference.transport == "oci":
        return shown, tag, _DirSource(path)
    if not path.is_file():
        raise BaseImageError(shown, f"{path} is not a file")
    return shown, tag, _TarSource(path)


def import_local_image(reference: ImageReference, platform: str, blobs: BlobStore) -> BaseImage:
    """Bring an image from a layout or archive into the store (checked) and read its config."""
    shown, tag, source = _local_source(reference)
    try:
        if reference.transport == "docker-archive":
            return _import_docker_archive(source, shown, tag, blobs)
        return _import_layout(source, shown, tag, reference.digest, platform, blobs)
    finally:
        source.close()


def import_docker_archive(path: Path, shown: str, blobs: BlobStore) -> BaseImage:
    """Bring the one image of a ``docker save`` archive into the store."""
    source = _TarSource(path)
    try:
        return _import_docker_archive(source, shown, None, blobs)
    finally:
        source.close()


def split_path_tag(name: str, tag: str | None) -> tuple[Path, str | None]:
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
    name = name_of_tag((descriptor.get("annotations") or {}).get(CONTAINERD_IMAGE_NAME))
    for _ in range(4):  # an index may point at an index (multi-platform)
        media_type = descriptor.get("mediaType")
        manifest_digest = check_digest(descriptor.get("digest"))
        with source.open(blob_name(manifest_digest)) as handle:
            blobs.import_stream(handle, manifest_digest, source.where)
        document = json.loads(blobs.read(manifest_digest))
        media_type = document.get("mediaType", media_type)
        if media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST) or "manifests" in document:
            descriptor = _pick_platform(shown, document, platform)
            continue
        base = _import_manifest(source, shown, manifest_digest, document, blobs)
        return attrs.evolve(base, name=name)
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


def _tagged(manifest: object, tag: str | None) -> list[Any]:
    """A docker-archive's ``manifest.json`` entries that ``tag`` names (all without a tag;
    none when the document is not a list)."""
    entries = manifest if isinstance(manifest, list) else []
    if tag is None:
        return entries
    wanted = {tag, normalise_tag(tag)}
    return [m for m in entries if wanted.intersection(m.get("RepoTags") or [])]


def local_image_name(reference: ImageReference, platform: str) -> str | None:  # noqa: ARG001
    """The name recorded inside a local base (a layout entry's ``io.containerd.image.name``,
    a docker-archive's first ``RepoTags``), read without importing it; None without one, or
    when it cannot be read."""
    if reference.transport not in ("oci", "oci-archive", "docker-archive"):
        return None
    try:
        _, tag, source = _local_source(reference)
    except (OSError, tarfile.TarError, BaseImageError):
        return None
    try:
        if reference.transport == "docker-archive":
            entries = _tagged(source.read_json("manifest.json"), tag)
            tags = entries[0].get("RepoTags") if len(entries) == 1 else None
            return name_of_tag(tags[0]) if isinstance(tags, list) and tags else None
        entry = _choose(source, str(reference), tag, reference.digest)
        return name_of_tag((entry.get("annotations") or {}).get(CONTAINERD_IMAGE_NAME))
    except (OSError, ValueError, KeyError, AttributeError, tarfile.TarError, ImageDSLError):
        return None
    finally:
        source.close()


def local_base_digest(reference: ImageReference, platform: str) -> str | None:
    """What a local base (OCI layout or archive) holds now, read without importing it: the
    digest of its image config for ``platform``, the identity plans key bases by.

    For an OCI layout or archive, the config descriptor of the manifest the tag names (through
    an index, the platform's); for a docker-archive, the digest its config file is named by.
    Only the index and manifests are read. Registry and docker-daemon bases give None here.
    A base that cannot be read also gives None: the build will say what is wrong with it.
    """
    if reference.transport not in ("oci", "oci-archive", "docker-archive"):
        return None
    try:
        shown, tag, source = _local_source(reference)
    except (OSError, tarfile.TarError, BaseImageError):
        return None
    try:
        if reference.transport == "docker-archive":
            entries = _tagged(source.read_json("manifest.json"), tag)
            if len(entries) != 1:
                return None
            named = re.search(r"([0-9a-f]{64})(?:\.json)?$", str(entries[0].get("Config") or ""))
            return None if named is None else f"sha256:{named.group(1)}"
        descriptor: Mapping[str, Any] = _choose(source, shown, tag, reference.digest)
        for _ in range(4):  # an index may point at an index (multi-platform)
            document = source.read_json(blob_name(check_digest(descriptor.get("digest"))))
            if document.get("mediaType") in (OCI_INDEX, DOCKER_MANIFEST_LIST) or (
                "manifests" in document
            ):
                descriptor = _pick_platform(shown, document, platform)
                continue
            return check_digest((document.get("config") or {}).get("digest"))
        return None
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        tarfile.TarError,
        ImageDSLError,
    ):
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
    with source.open(blob_name(config_digest)) as handle:
        blobs.import_stream(handle, config_digest, source.where)
    config = json.loads(blobs.read(config_digest))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    descriptors = manifest.get("layers") or []
    if len(diff_ids) != len(descriptors):
        raise BaseImageError(shown, "its config and manifest disagree on the number of layers")
    layers = []
    for descriptor, diff_id in zip(descriptors, diff_ids, strict=True):
        media_type = READABLE_LAYER_TYPES.get(descriptor.get("mediaType", ""))
        if media_type is None:
            raise BaseImageError(
                shown, f"has a layer of unsupported type {descriptor.get('mediaType')!r}"
            )
        digest = check_digest(descriptor.get("digest"))
        with source.open(blob_name(digest)) as handle:
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
    repo_tags = entry.get("RepoTags") or [None]
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
                media_type=LAYER_MEDIA_TYPES[sniff_compression(head)],
                uncompressed_size=0,
            )
        )
    document = manifest_document(config_digest, len(config_bytes), layers, {})
    manifest_digest = blobs.put(document)
    return BaseImage(
        reference=shown,
        manifest_digest=manifest_digest,
        config=config,
        layers=tuple(layers),
        name=name_of_tag(repo_tags[0]),
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
        if not blobs.intact(digest, size):
            blobs.commit(out, digest)
    return digest, size, head


# -- reading in place ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LocalLayer:
    """A layer of an image read in place: the file holding it and what it should be."""

    name: str
    #: The blob's digest (None in a docker-archive, where layers are named by path).
    digest: str | None
    size: int
    diff_id: str
    media_type: str | None


@attrs.define
class LocalImage:
    """An image in a layout or archive, read in place: its config, layers and blobs."""

    reference: str
    manifest_digest: str | None
    config: Mapping[str, Any]
    layers: tuple[LocalLayer, ...]
    _source: _Source

    def open(self, layer: LocalLayer) -> IO[bytes]:
        """The layer's bytes as stored (compressed or not)."""
        source = self._source
        if isinstance(source, _TarSource) and layer.name in source.members:
            member = source.members[layer.name]
            reader: Any = ArchiveMember(source.where, member.offset_data, member.size)
            return cast("IO[bytes]", reader)
        return source.open(layer.name)


class ArchiveMember:
    """A member of an uncompressed tar read straight from the file at its offset (``pread``):
    ``tarfile``'s file object moves layer-sized members in small pieces. ``fd``, ``offset``
    and ``size`` let a reader read it by position."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self.fd = self._fd = os.open(path, os.O_RDONLY)
        self.offset = self._offset = offset
        self.size = self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._offset)
        if not data:
            raise OSError("the archive ends inside a member")
        self._offset += len(data)
        self._left -= len(data)
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ArchiveMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def read_local_image(reference: ImageReference, platform: str) -> Iterator[LocalImage]:
    """Open the image a local reference names, without copying it anywhere."""
    shown, tag, source = _local_source(reference)
    try:
        if reference.transport == "docker-archive":
            yield _read_docker_archive(source, shown, tag)
        else:
            yield _read_layout(source, shown, tag, reference.digest, platform)
    finally:
        source.close()


def _read_layout(
    source: _Source, shown: str, tag: str | None, digest: str | None, platform: str
) -> LocalImage:
    descriptor: Mapping[str, Any] = _choose(source, shown, tag, digest)
    for _ in range(4):  # an index may point at an index (multi-platform)
        manifest_digest = check_digest(descriptor.get("digest"))
        document = source.read_json(blob_name(manifest_digest))
        if (
            document.get("mediaType") in (OCI_INDEX, DOCKER_MANIFEST_LIST)
            or "manifests" in document
        ):
            descriptor = _pick_platform(shown, document, platform)
            continue
        config = source.read_json(
            blob_name(check_digest((document.get("config") or {}).get("digest")))
        )
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        descriptors = document.get("layers") or []
        if len(diff_ids) != len(descriptors):
            raise BaseImageError(shown, "its config and manifest disagree on the number of layers")
        layers = tuple(
            LocalLayer(
                name=blob_name(layer.get("digest")),
                digest=check_digest(layer.get("digest")),
                size=int(layer.get("size") or 0),
                diff_id=check_digest(diff_id),
                media_type=str(layer.get("mediaType") or "") or None,
            )
            for layer, diff_id in zip(descriptors, diff_ids, strict=True)
        )
        return LocalImage(shown, manifest_digest, config, layers, source)
    raise BaseImageError(shown, "nests image indexes too deeply")


def _read_docker_archive(source: _Source, shown: str, tag: str | None) -> LocalImage:
    manifest = source.read_json("manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise BaseImageError(shown, "manifest.json lists no images")
    chosen = _tagged(manifest, tag)
    if len(chosen) != 1:
        tags = sorted(t for m in manifest for t in m.get("RepoTags") or [])
        raise BaseImageError(shown, f"no single image matches {tag or '(no tag)'}; it holds {tags}")
    config = source.read_json(str(chosen[0].get("Config") or ""))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    names = [str(n) for n in chosen[0].get("Layers") or []]
    if len(diff_ids) != len(names):
        raise BaseImageError(shown, "its config and manifest.json disagree on the layer count")
    assert isinstance(source, _TarSource)
    layers = tuple(
        LocalLayer(
            name=name,
            digest=None,
            size=source.members[name].size if name in source.members else 0,
            diff_id=check_digest(diff_id),
            media_type=None,
        )
        for name, diff_id in zip(names, diff_ids, strict=True)
    )
    return LocalImage(shown, None, config, layers, source)

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, cast

import attrs

from imagedsl.errors import ImageDSLError
from imagedsl.oci.annotations import CONTAINERD_IMAGE_NAME, REF_NAME
from imagedsl.oci.blobs import BlobDigestError, BlobStore, check_digest
from imagedsl.oci.image import (
    MAX_CONFIG,
    BaseImage,
    LayerBlob,
    check_config_size,
    diff_ids_of,
    parse_base_config,
)
from imagedsl.oci.image import BaseImageError as BaseImageError  # re-exported: it was defined here
from imagedsl.oci.manifest import MAX_INDEX_DEPTH, Manifest, manifest_document
from imagedsl.oci.mediatypes import LAYER_MEDIA_TYPES, READABLE_LAYER_TYPES, sniff_compression
from imagedsl.oci.reference import name_of_tag, normalise_tag

if TYPE_CHECKING:
    from imagedsl.oci.descriptor import Descriptor
    from imagedsl.oci.reference import ImageReference

_MAX_JSON: Final = 16 << 20


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

    def size(self, name: str) -> int:
        """The size of file ``name``, known before it is read."""
        raise NotImplementedError

    def read_small(self, name: str, limit: int = _MAX_JSON) -> bytes:
        """The bytes of file ``name``, refused past ``limit`` (never read further)."""
        with self.open(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise BaseImageError(self.where, f"{name} is too large")
        return data

    def read_json(self, name: str) -> Any:
        data = self.read_small(name)
        try:
            return json.loads(data)
        except ValueError:
            raise BaseImageError(self.where, f"{name} is not valid JSON") from None
        except RecursionError:
            raise BaseImageError(self.where, f"{name} nests too deeply to be read") from None

    def close(self) -> None:
        """Release the source."""


class _DirSource(_Source):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        if not root.is_dir():
            raise BaseImageError(str(root), "is not a directory (an OCI layout was expected)")

    def open(self, name: str) -> IO[bytes]:
        return self._path(name).open("rb")

    def size(self, name: str) -> int:
        return self._path(name).lstat().st_size

    def _path(self, name: str) -> Path:
        path = self.root / name
        if path.is_symlink() or not path.is_file():
            raise BaseImageError(self.where, f"has no file {name}")
        return path


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
        handle = self.archive.extractfile(self._member(name))
        assert handle is not None
        return handle

    def size(self, name: str) -> int:
        return self._member(name).size

    def _member(self, name: str) -> tarfile.TarInfo:
        member = self.members.get(name)
        if member is None:
            raise BaseImageError(self.where, f"has no file {name}")
        return member

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
    entry = _choose(source, shown, tag, digest)
    name = name_of_tag(_annotations(entry).get(CONTAINERD_IMAGE_NAME))

    def imported(manifest_digest: str) -> bytes:
        data = source.read_small(blob_name(manifest_digest))
        return _import_bytes(source, manifest_digest, data, blobs)

    manifest = _image_manifest(shown, entry, platform, imported)
    base = _import_manifest(source, shown, manifest, blobs)
    return attrs.evolve(base, name=name)


def _import_bytes(source: _Source, digest: str, data: bytes, blobs: BlobStore) -> bytes:
    """A small blob's bytes, read from ``source`` as blob ``digest``: checked against it and
    put in the store."""
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise BlobDigestError(source.where, digest, actual)
    blobs.put(data)
    return data


def _read_config(source: _Source, name: str, shown: str) -> bytes:
    """A config's bytes, refused past :data:`MAX_CONFIG` before a byte is read."""
    check_config_size(shown, source.size(name))
    with source.open(name) as handle:
        data = handle.read(MAX_CONFIG + 1)
    check_config_size(shown, len(data))
    return data


def _image_manifest(
    shown: str, entry: Mapping[str, Any], platform: str, read: Callable[[str], bytes]
) -> Manifest:
    """The image manifest an index.json entry leads to for ``platform``, through indexes
    (multi-platform, nested too) at most :data:`MAX_INDEX_DEPTH` manifests deep; ``read``
    gives a manifest's bytes by digest."""
    digest = check_digest(entry.get("digest"))
    media_type = entry.get("mediaType")
    for _ in range(MAX_INDEX_DEPTH):
        try:
            manifest = Manifest.parse(
                read(digest),
                media_type=media_type if isinstance(media_type, str) else None,
                where=blob_name(digest),
            )
        except ValueError as error:
            raise BaseImageError(shown, str(error)) from None
        if not manifest.is_index:
            return manifest
        chosen = _pick_platform(shown, manifest, platform)
        digest, media_type = chosen.digest, chosen.media_type
    raise BaseImageError(shown, "nests image indexes too deeply")


def _annotations(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """An index.json entry's annotations (none when they are not an object)."""
    annotations = entry.get("annotations")
    return annotations if isinstance(annotations, dict) else {}


def _choose(source: _Source, shown: str, tag: str | None, digest: str | None) -> Mapping[str, Any]:
    """The one index.json entry a tag (or digest) names, or an error listing what is there."""
    index = source.read_json("index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise BaseImageError(shown, "index.json lists no manifests")
    entries = [m for m in manifests if isinstance(m, dict)]
    if digest is not None:
        chosen = [m for m in entries if m.get("digest") == digest]
    elif tag is not None:
        chosen = [m for m in entries if _annotations(m).get(REF_NAME) == tag]
    else:
        chosen = entries
    if len(chosen) != 1:
        names = sorted(str(_annotations(m).get(REF_NAME)) for m in entries)
        wanted = digest or tag or "(no tag: the layout must hold exactly one image)"
        raise BaseImageError(shown, f"no single image matches {wanted}; it holds {names}")
    entry: Mapping[str, Any] = chosen[0]
    return entry


def _docker_entries(manifest: object, shown: str) -> list[Mapping[str, Any]]:
    """A docker-archive's ``manifest.json`` entries, each checked: ``Config`` a string,
    ``Layers`` and ``RepoTags`` (null: none) lists of strings."""
    if not isinstance(manifest, list) or not manifest:
        raise BaseImageError(shown, "manifest.json lists no images")
    for i, entry in enumerate(manifest):
        if not isinstance(entry, dict):
            raise BaseImageError(shown, f"manifest.json's entry {i} is not an object")
        if not isinstance(entry.get("Config"), str):
            raise BaseImageError(shown, f"manifest.json's entry {i} has no Config file name")
        for field in ("Layers", "RepoTags"):
            value = entry.get(field)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(item, str) for item in value)
            ):
                raise BaseImageError(
                    shown, f"manifest.json's entry {i} has {field} that is not a list of strings"
                )
    return manifest


def _repo_tags(entry: Mapping[str, Any]) -> Sequence[str]:
    tags: Sequence[str] = entry.get("RepoTags") or ()
    return tags


def _tagged(manifest: Sequence[Mapping[str, Any]], tag: str | None) -> list[Mapping[str, Any]]:
    """A docker-archive's ``manifest.json`` entries that ``tag`` names (all without a tag)."""
    if tag is None:
        return list(manifest)
    wanted = {tag, normalise_tag(tag)}
    return [m for m in manifest if wanted.intersection(_repo_tags(m))]


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
        shown = str(reference)
        if reference.transport == "docker-archive":
            entries = _tagged(_docker_entries(source.read_json("manifest.json"), shown), tag)
            tags = _repo_tags(entries[0]) if len(entries) == 1 else ()
            return name_of_tag(tags[0]) if tags else None
        entry = _choose(source, shown, tag, reference.digest)
        return name_of_tag(_annotations(entry).get(CONTAINERD_IMAGE_NAME))
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
            entries = _tagged(_docker_entries(source.read_json("manifest.json"), shown), tag)
            if len(entries) != 1:
                return None
            named = re.search(r"([0-9a-f]{64})(?:\.json)?$", str(entries[0].get("Config") or ""))
            return None if named is None else f"sha256:{named.group(1)}"
        entry = _choose(source, shown, tag, reference.digest)
        manifest = _image_manifest(
            shown, entry, platform, lambda d: source.read_small(blob_name(d))
        )
        return None if manifest.config is None else manifest.config.digest
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


def _pick_platform(shown: str, index: Manifest, platform: str) -> Descriptor:
    os_name, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    for item in index.manifests:
        found = item.platform
        if (
            found is not None
            and found.os == os_name
            and found.architecture == arch
            and (not variant or found.variant in (None, variant))
        ):
            return item
    raise BaseImageError(shown, f"has no image for platform {platform}")


def layer_types(shown: str, layers: Sequence[Descriptor]) -> list[str]:
    """The type each layer is kept under, or a :class:`BaseImageError` naming the first
    layer of a type the backend cannot read (checked before any layer is fetched)."""
    kept = []
    for layer in layers:
        media_type = READABLE_LAYER_TYPES.get(layer.media_type)
        if media_type is None:
            raise BaseImageError(shown, f"has a layer of unsupported type {layer.media_type!r}")
        kept.append(media_type)
    return kept


def _image_config(
    shown: str, manifest: Manifest, read: Callable[[str], bytes]
) -> tuple[dict[str, Any], list[str]]:
    """An image manifest's config (checked: see :func:`~imagedsl.oci.image.parse_base_config`)
    and its diff_ids, one per layer; ``read`` gives the config's bytes by digest."""
    if manifest.config is None:  # pragma: no cover - Manifest.parse gives a manifest one
        raise BaseImageError(shown, "its manifest has no config")
    check_config_size(shown, manifest.config.size)
    config = parse_base_config(read(manifest.config.digest), shown)
    diff_ids = diff_ids_of(config)
    if len(diff_ids) != len(manifest.layers):
        raise BaseImageError(shown, "its config and manifest disagree on the number of layers")
    return config, diff_ids


def _import_manifest(
    source: _Source, shown: str, manifest: Manifest, blobs: BlobStore
) -> BaseImage:
    types = layer_types(shown, manifest.layers)

    def imported(digest: str) -> bytes:
        data = _read_config(source, blob_name(digest), shown)
        return _import_bytes(source, digest, data, blobs)

    config, diff_ids = _image_config(shown, manifest, imported)
    layers = []
    for descriptor, diff_id, media_type in zip(manifest.layers, diff_ids, types, strict=True):
        digest = descriptor.digest
        with source.open(blob_name(digest)) as handle:
            blobs.import_stream(handle, digest, source.where)
        layers.append(
            LayerBlob(
                digest=digest,
                size=descriptor.size or blobs.path(digest).stat().st_size,
                diff_id=diff_id,
                media_type=media_type,
                uncompressed_size=0,
            )
        )
    return BaseImage(
        reference=shown, manifest_digest=manifest.digest, config=config, layers=tuple(layers)
    )


def _import_docker_archive(
    source: _Source, shown: str, tag: str | None, blobs: BlobStore
) -> BaseImage:
    manifest = _docker_entries(source.read_json("manifest.json"), shown)
    chosen = _tagged(manifest, tag)
    if len(chosen) != 1:
        tags = sorted(t for m in manifest for t in _repo_tags(m))
        raise BaseImageError(shown, f"no single image matches {tag or '(no tag)'}; it holds {tags}")
    entry = chosen[0]
    config_name = str(entry["Config"])
    config_bytes = _read_config(source, config_name, shown)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    named = re.search(r"([0-9a-f]{64})(?:\.json)?$", config_name)
    if named and named.group(1) != config_digest.partition(":")[2]:
        raise BlobDigestError(f"{shown} {config_name}", "sha256:" + named.group(1), config_digest)
    config = parse_base_config(config_bytes, shown)
    blobs.put(config_bytes)
    diff_ids = diff_ids_of(config)
    names: Sequence[str] = entry.get("Layers") or ()
    if len(diff_ids) != len(names):
        raise BaseImageError(shown, "its config and manifest.json disagree on the layer count")
    layers = []
    for name, diff_id in zip(names, diff_ids, strict=True):
        digest, size, head = _import_unknown(source, name, blobs)
        layers.append(
            LayerBlob(
                digest=digest,
                size=size,
                diff_id=diff_id,
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
        name=name_of_tag(next(iter(_repo_tags(entry)), None)),
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
    entry = _choose(source, shown, tag, digest)
    manifest = _image_manifest(shown, entry, platform, lambda d: source.read_small(blob_name(d)))
    config, diff_ids = _image_config(
        shown, manifest, lambda d: _read_config(source, blob_name(d), shown)
    )
    layers = tuple(
        LocalLayer(
            name=blob_name(layer.digest),
            digest=layer.digest,
            size=layer.size,
            diff_id=diff_id,
            media_type=layer.media_type or None,
        )
        for layer, diff_id in zip(manifest.layers, diff_ids, strict=True)
    )
    return LocalImage(shown, manifest.digest, config, layers, source)


def _read_docker_archive(source: _Source, shown: str, tag: str | None) -> LocalImage:
    manifest = _docker_entries(source.read_json("manifest.json"), shown)
    chosen = _tagged(manifest, tag)
    if len(chosen) != 1:
        tags = sorted(t for m in manifest for t in _repo_tags(m))
        raise BaseImageError(shown, f"no single image matches {tag or '(no tag)'}; it holds {tags}")
    config = parse_base_config(_read_config(source, str(chosen[0]["Config"]), shown), shown)
    diff_ids = diff_ids_of(config)
    names: Sequence[str] = chosen[0].get("Layers") or ()
    if len(diff_ids) != len(names):
        raise BaseImageError(shown, "its config and manifest.json disagree on the layer count")
    assert isinstance(source, _TarSource)
    layers = tuple(
        LocalLayer(
            name=name,
            digest=None,
            size=source.members[name].size if name in source.members else 0,
            diff_id=diff_id,
            media_type=None,
        )
        for name, diff_id in zip(names, diff_ids, strict=True)
    )
    return LocalImage(shown, None, config, layers, source)

"""Base images for the builder: from the store, the local engine, a registry, a layout or archive.

:func:`import_base` finds a base image by the content identity the plan keyed it by (the
digest of its image config; see :mod:`imagedsl.bases`), looking in order:

1. **the store**, which remembers which manifest each image it holds came as
   (``StoreArea.OCI_BASES``), so an image used before is found with no engine and no network;
2. **the local engine**, when one answers (registry names and ``docker-daemon:``), if its image
   is the one planned: exported once (what ``docker save`` writes, through the engine's API)
   and read into the store; but when the engine has the image from the reference's registry
   (pulled from or pushed to it), the blobs come from there, as the registry holds them, so
   the image built on it shares (and a push mounts) the base's layers;
3. **the registry** (registry names), through the registry client, by the manifest digest
   the lock file pinned when there is one.

An OCI layout or archive is read from its file. Blobs come into the store checked and are
never recompressed. A base in none of these places is a
:class:`~imagedsl.bases.BaseNotFoundError` that says what each place had. Every layer is then
read once into the builder's view of the filesystem by :func:`layer_index`, through
:func:`~imagedsl.backends.oci.filesystem.scan_layer`, which refuses entries that could escape
the root.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from imagedsl.backends.oci.filesystem import (
    Filesystem,
    LayerIndex,
    drain,
    load_index,
    save_index,
    scan_layer,
)
from imagedsl.bases import (
    LOCAL_FILE_TRANSPORTS,
    BaseNotFoundError,
    engine_name,
    repository_digest,
)
from imagedsl.engine_api import EngineError
from imagedsl.errors import InputError
from imagedsl.oci.blobs import BlobStore, VerifyingReader, damaged_as_digest_error
from imagedsl.oci.image import (
    BaseImage,
    BaseImageError,
    LayerBlob,
    check_config_size,
    diff_ids_of,
    parse_base_config,
)
from imagedsl.oci.layerstream import decompressed
from imagedsl.oci.layout import (
    import_docker_archive,
    import_local_image,
    layer_types,
    local_image_name,
)
from imagedsl.oci.manifest import Manifest
from imagedsl.oci.platform import Platform
from imagedsl.oci.reference import portable_name
from imagedsl.store import StoreArea, atomic_write

if TYPE_CHECKING:
    from imagedsl.engine_api import EngineAPI, EngineImage, LocalImages
    from imagedsl.oci.reference import ImageReference
    from imagedsl.registry.client import PulledImage, RegistryClient


@attrs.frozen(kw_only=True)
class WantedBase:
    """The base a plan's FROM keyed: its reference, platform, and what the plan knew of it.

    ``identity`` is the digest the key holds (None: unpinned); ``manifest`` is a manifest
    digest that pulls exactly this image (the reference's own digest, or the lock file's).
    """

    reference: ImageReference
    platform: str
    identity: str | None = None
    manifest: str | None = None

    @property
    def shown(self) -> str:
        """The reference as written."""
        return str(self.reference)

    @property
    def pinned_manifest(self) -> str | None:
        """The manifest digest that names this image exactly, if any."""
        return self.reference.digest or self.manifest

    @property
    def config(self) -> str | None:
        """The image config digest the plan keyed the base by, when that is what it knew (a
        pin by manifest digest alone is not one)."""
        if self.identity is None or self.identity == self.pinned_manifest:
            return None
        return self.identity


def import_base(
    wanted: WantedBase,
    blobs: BlobStore,
    *,
    images: Callable[[], LocalImages],
    registry: Callable[[], RegistryClient],
) -> BaseImage:
    """Find the base in the store, the local engine or its registry (in that order), or read
    it from its layout or archive; bring its blobs into the store (checked); read its config.

    Its ``name`` (what the image's ``base.name`` annotation says) is the reference's
    normalised name for a registry or engine base, and the name recorded inside a layout or
    archive: never a path on this machine.
    """
    base = _find_base(wanted, blobs, images=images, registry=registry)
    check_base_platform(wanted, base)
    if wanted.reference.transport in LOCAL_FILE_TRANSPORTS:
        name = base.name or local_image_name(wanted.reference, wanted.platform)
    else:
        name = portable_name(wanted.reference)
    return attrs.evolve(base, name=name)


def check_base_platform(wanted: WantedBase, base: BaseImage) -> None:
    """Refuse a base whose config says it is for another platform than its stage's (a
    single-platform image of another architecture: its files could not run there). A config
    that names no architecture is taken as it is."""
    found = Platform.from_json(base.config)  # a config names them as a descriptor does
    if found is not None and not Platform.parse(wanted.platform).matches(found):
        raise BasePlatformError(wanted.shown, wanted.platform, str(found))


@attrs.define
class BasePlatformError(InputError):
    """A base image is for another platform than the stage it starts (and has no image for
    that one)."""

    reference: str
    platform: str
    found: str

    def __str__(self) -> str:
        return (
            f"base image {self.reference} is for {self.found}, not {self.platform}: it holds "
            f"one platform; use a multi-platform base (an image index with {self.platform}) "
            f"or an image built for {self.platform}"
        )


def _find_base(
    wanted: WantedBase,
    blobs: BlobStore,
    *,
    images: Callable[[], LocalImages],
    registry: Callable[[], RegistryClient],
) -> BaseImage:
    looked: list[tuple[str, str]] = []
    found = _from_store(wanted, blobs, looked)
    if found is not None:
        return found
    transport = wanted.reference.transport
    if transport in LOCAL_FILE_TRANSPORTS:
        base = import_local_image(wanted.reference, wanted.platform, blobs)
        _remember(blobs, base)
        return base
    local = images()
    found = _from_engine(wanted, blobs, local, registry, looked)
    if found is not None:
        return found
    if transport == "docker-daemon" and local.engine is None:
        raise EngineError("(none)", f"reading the base image {wanted.shown}", local.absence())
    if transport == "registry":
        found = _from_registry(wanted, blobs, registry(), looked)
        if found is not None:
            return found
    raise BaseNotFoundError(wanted.shown, wanted.identity, tuple(looked))


# -- the store -----------------------------------------------------------------------------------


def _memo_path(blobs: BlobStore, config_digest: str) -> Path:
    return blobs.store.area(StoreArea.OCI_BASES) / f"{config_digest.partition(':')[2]}.json"


def _stored_manifest(blobs: BlobStore, digest: str) -> Manifest:
    """A manifest or index in the store; ``ValueError`` when it is not one."""
    return Manifest.parse(blobs.read(digest), where=digest)


def _remember(blobs: BlobStore, base: BaseImage) -> None:
    """Note which manifest the image (by config digest) is in the store as."""
    with contextlib.suppress(OSError, ValueError):
        config = _stored_manifest(blobs, base.manifest_digest).config
        if config is not None:
            memo = _memo_path(blobs, config.digest)
            atomic_write(memo, json.dumps({"manifest": base.manifest_digest}).encode())


def _from_store(
    wanted: WantedBase, blobs: BlobStore, looked: list[tuple[str, str]]
) -> BaseImage | None:
    """The base by its identity, when the store holds all of it."""
    if wanted.config is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(_memo_path(blobs, wanted.config).read_bytes())
            base = _base_from_store(wanted.shown, saved["manifest"], blobs, wanted.platform)
            if base is not None and _config_digest(blobs, base) == wanted.config:
                return base
        looked.append(("the store", f"no image {wanted.config}"))
    elif wanted.pinned_manifest is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            base = _base_from_store(wanted.shown, wanted.pinned_manifest, blobs, wanted.platform)
            if base is not None:
                return base
        looked.append(("the store", f"no manifest {wanted.pinned_manifest}"))
    return None


def _config_digest(blobs: BlobStore, base: BaseImage) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        config = _stored_manifest(blobs, base.manifest_digest).config
        return None if config is None else config.digest
    return None


def _base_from_store(
    shown: str, manifest_digest: str, blobs: BlobStore, platform: str
) -> BaseImage | None:
    """The base whose manifest (or index) the store holds, when the store holds all of it; a
    config that is not one is refused, as it is when the base is first imported."""
    manifest: Manifest | None = None
    for _ in range(2):  # an index (as pulled from a registry), then the platform's manifest
        if not blobs.intact(manifest_digest):
            return None
        manifest = _stored_manifest(blobs, manifest_digest)
        if not manifest.is_index:
            break
        wanted = Platform.parse(platform)
        chosen = [c for c in manifest.manifests if c.platform and wanted.matches(c.platform)]
        if not chosen:
            return None
        manifest_digest = chosen[0].digest
    if manifest is None or manifest.config is None:
        return None
    config_descriptor = manifest.config
    if not blobs.intact(config_descriptor.digest):
        return None
    check_config_size(shown, config_descriptor.size)
    config = parse_base_config(blobs.read(config_descriptor.digest), shown)
    diff_ids = diff_ids_of(config)
    if len(diff_ids) != len(manifest.layers):
        return None
    layers = []
    for descriptor, diff_id in zip(manifest.layers, diff_ids, strict=True):
        if not blobs.intact(descriptor.digest, descriptor.size):
            return None
        layers.append(
            LayerBlob(
                digest=descriptor.digest,
                size=descriptor.size,
                diff_id=diff_id,
                media_type=descriptor.media_type,
                uncompressed_size=0,
            )
        )
    return BaseImage(
        reference=shown, manifest_digest=manifest_digest, config=config, layers=tuple(layers)
    )


# -- the local engine ----------------------------------------------------------------------------


def _from_engine(
    wanted: WantedBase,
    blobs: BlobStore,
    images: LocalImages,
    registry: Callable[[], RegistryClient],
    looked: list[tuple[str, str]],
) -> BaseImage | None:
    """The engine's image for the reference, if it is the one planned. When the engine has it
    from the reference's registry (pulled from or pushed to it), its blobs are pulled from
    there as the registry holds them (compressed; a push then mounts them from the base's
    repository) rather than exported, unless the registry does not answer."""
    name = engine_name(wanted.reference)
    image = images.image(name)
    engine = images.engine
    if engine is None:
        looked.append(("the local engine", images.absence()))
        return None
    if image is None:
        looked.append((f"the local engine ({engine.host})", f"no image {name}"))
        return None
    if wanted.config is not None and image.id != wanted.config:
        looked.append((f"the local engine ({engine.host})", f"{name} is {image.id}"))
        return None
    if wanted.reference.transport == "registry" and not image.runs_on(wanted.platform):
        looked.append(
            (
                f"the local engine ({engine.host})",
                f"{name} is for {image.platform}, not {wanted.platform}",
            )
        )
        return None
    remembered = _remembered(wanted.shown, image, blobs)
    if remembered is not None:
        return remembered
    digest = repository_digest(image, wanted.reference)
    if digest is not None:
        from imagedsl.registry.errors import RegistryError

        exact = attrs.evolve(wanted, identity=image.id, manifest=digest)
        with contextlib.suppress(RegistryError):
            pulled = _from_registry(exact, blobs, registry(), [])
            if pulled is not None:
                return pulled
    return _export(wanted.shown, name, blobs, engine)


def _remembered(shown: str, image: EngineImage, blobs: BlobStore) -> BaseImage | None:
    """The engine's image, when the store holds it already (by image ID, its config digest)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(_memo_path(blobs, image.id).read_bytes())
        return _base_from_store(shown, saved["manifest"], blobs, image.platform)
    return None


def _export(shown: str, name: str, blobs: BlobStore, engine: EngineAPI) -> BaseImage:
    """The engine's image, exported (the store then remembers its manifest by image ID)."""
    tmp_root = blobs.store.area(StoreArea.TMP)
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        archive = Path(tmp, "image.tar")
        engine.export(name, archive)
        base = import_docker_archive(archive, shown, blobs)
    _remember(blobs, base)
    return base


# -- the registry --------------------------------------------------------------------------------


def _from_registry(
    wanted: WantedBase, blobs: BlobStore, client: RegistryClient, looked: list[tuple[str, str]]
) -> BaseImage | None:
    """Pull through the registry client (which checks every digest) into the store."""
    from imagedsl.registry.errors import NotFoundError

    reference = wanted.reference
    if wanted.pinned_manifest is not None:
        reference = attrs.evolve(reference, digest=wanted.pinned_manifest)
    host = reference.name.partition("/")[0]

    def check(manifest: Manifest) -> None:
        """Refuse what the backend cannot read before a blob is fetched: a layer of another
        type, a config too large to read."""
        layer_types(wanted.shown, manifest.layers)
        if manifest.config is not None:
            check_config_size(wanted.shown, manifest.config.size)

    try:
        pulled = client.pull(
            reference, blobs.store, platform=Platform.parse(wanted.platform), check=check
        )
    except NotFoundError:
        looked.append((f"the registry {host}", f"no {reference.familiar}"))
        return None
    if wanted.config is not None and pulled.config.digest != wanted.config:
        looked.append((f"the registry {host}", f"{reference.familiar} is {pulled.config.digest}"))
        return None
    base = _pulled_base(wanted.shown, pulled, blobs)
    _remember(blobs, base)
    return base


def _pulled_base(shown: str, pulled: PulledImage, blobs: BlobStore) -> BaseImage:
    types = layer_types(shown, pulled.layers)
    check_config_size(shown, pulled.config.size)
    config = parse_base_config(blobs.read(pulled.config.digest, pulled.config.size), shown)
    diff_ids = diff_ids_of(config)
    if len(diff_ids) != len(pulled.layers):
        raise BaseImageError(shown, "its config and manifest disagree on the layer count")
    layers = [
        LayerBlob(
            digest=descriptor.digest,
            size=descriptor.size,
            diff_id=diff_id,
            media_type=media_type,
            uncompressed_size=0,
        )
        for descriptor, diff_id, media_type in zip(pulled.layers, diff_ids, types, strict=True)
    ]
    return BaseImage(
        reference=shown,
        manifest_digest=pulled.manifest.digest,
        config=config,
        layers=tuple(layers),
    )


def layer_index(blobs: BlobStore, layer: LayerBlob, lower: Filesystem | None) -> LayerIndex:
    """The index of a layer in the store, reading (and checking) the layer if needed.

    Reading checks the blob's digest and the diff_id of the tar inside it, and refuses unsafe
    entries (:func:`~imagedsl.backends.oci.filesystem.scan_layer`). Layers we wrote ourselves have
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

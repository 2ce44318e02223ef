"""Base images for the builder: from a registry, the local engine, or a layout or archive.

:func:`import_base` brings a base image's blobs into the store (checked, never recompressed)
wherever its reference says it is: a registry through the registry client, the local engine
through ``docker save``, a layout or archive through :mod:`imagedsl.oci.layout`. Every layer is
then read once into the builder's view of the filesystem by :func:`layer_index`, through
:func:`~imagedsl.backends.oci.filesystem.scan_layer`, which refuses entries that could escape the root.
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
    decompressed,
    drain,
    load_index,
    save_index,
    scan_layer,
)
from imagedsl.oci.blobs import BlobStore, VerifyingReader, check_digest, damaged_as_digest_error
from imagedsl.oci.image import BaseImage, LayerBlob
from imagedsl.oci.layout import BaseImageError, import_docker_archive, import_local_image
from imagedsl.oci.mediatypes import READABLE_LAYER_TYPES
from imagedsl.oci.platform import Platform
from imagedsl.oci.reference import portable_name
from imagedsl.store import StoreArea, atomic_write

if TYPE_CHECKING:
    from imagedsl.backends.engine import DockerEngine
    from imagedsl.oci.reference import ImageReference
    from imagedsl.registry.client import RegistryClient


def import_base(
    reference: ImageReference,
    platform: str,
    blobs: BlobStore,
    *,
    engine: Callable[[], DockerEngine],
    registry: Callable[[], RegistryClient],
) -> BaseImage:
    """Bring a base image's blobs into the store (checked) and read its config."""
    if reference.transport == "registry":
        return _import_registry(reference, platform, blobs, registry())
    if reference.transport == "docker-daemon":
        return _import_daemon(reference, platform, blobs, engine())
    return import_local_image(reference, platform, blobs)


def _import_registry(
    reference: ImageReference, platform: str, blobs: BlobStore, client: RegistryClient
) -> BaseImage:
    """Pull through the registry client (which checks every digest) into the store."""
    pulled = client.pull(reference, blobs.store, platform=Platform.parse(platform))
    config = json.loads(blobs.read(pulled.config.digest))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(pulled.layers):
        raise BaseImageError(str(reference), "its config and manifest disagree on the layer count")
    layers = []
    for descriptor, diff_id in zip(pulled.layers, diff_ids, strict=True):
        media_type = READABLE_LAYER_TYPES.get(descriptor.media_type)
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
        name=portable_name(reference),
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
    memo = blobs.store.area(StoreArea.OCI_DAEMON) / f"{image_id.partition(':')[2]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(memo.read_bytes())
        base = _base_from_store(shown, saved["manifest"], blobs)
        if base is not None:
            return attrs.evolve(base, name=portable_name(reference))
    tmp_root = blobs.store.area(StoreArea.TMP)
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        archive = Path(tmp, "image.tar")
        engine.run("save", "-o", str(archive), name)
        base = import_docker_archive(archive, shown, blobs)
    atomic_write(memo, json.dumps({"manifest": base.manifest_digest}).encode())
    del platform  # the engine holds one platform per tag; the config says which
    return attrs.evolve(base, name=portable_name(reference))


def _base_from_store(shown: str, manifest_digest: str, blobs: BlobStore) -> BaseImage | None:
    if not blobs.intact(manifest_digest):
        return None
    manifest = json.loads(blobs.read(manifest_digest))
    config_digest = manifest["config"]["digest"]
    if not blobs.intact(config_digest):
        return None
    config = json.loads(blobs.read(config_digest))
    layers = []
    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        if not blobs.intact(descriptor["digest"], descriptor["size"]):
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

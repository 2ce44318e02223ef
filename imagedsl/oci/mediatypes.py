"""Media types, each defined once, and the layer compressions they name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
#: The empty descriptor's type (a config that holds the 2 bytes ``{}``).
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD: Final = "application/vnd.docker.image.rootfs.diff.tar.zstd"

#: What points at manifests (an index, or Docker's manifest list).
INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
#: What points at a config and layers.
MANIFEST_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

Compression = Literal["gzip", "zstd", "none"]
COMPRESSIONS: Final[tuple[Compression, ...]] = ("gzip", "zstd", "none")
#: The media type of a layer we write, by its compression.
LAYER_MEDIA_TYPES: Final[Mapping[Compression, str]] = {
    "gzip": OCI_LAYER_GZIP,
    "zstd": OCI_LAYER_ZSTD,
    "none": OCI_LAYER,
}
#: Every layer type a base image may have, with the OCI type its layer is kept under.
READABLE_LAYER_TYPES: Final[Mapping[str, str]] = {
    OCI_LAYER_GZIP: OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD: OCI_LAYER_ZSTD,
    OCI_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_ZSTD: OCI_LAYER_ZSTD,
}


def sniff_compression(head: bytes) -> Compression:
    """``gzip``, ``zstd`` or ``none`` from a blob's first bytes."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"

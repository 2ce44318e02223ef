"""The annotation keys imagedsl reads and writes, each defined once."""

from __future__ import annotations

from typing import Final

#: An index entry's tag in an OCI layout.
REF_NAME: Final = "org.opencontainers.image.ref.name"
#: The full image name containerd (and ``docker load``) gives an index entry.
CONTAINERD_IMAGE_NAME: Final = "io.containerd.image.name"
CREATED: Final = "org.opencontainers.image.created"
BASE_NAME: Final = "org.opencontainers.image.base.name"
BASE_DIGEST: Final = "org.opencontainers.image.base.digest"
#: A blob's file name (ORAS and other artifact tools show it).
TITLE: Final = "org.opencontainers.image.title"

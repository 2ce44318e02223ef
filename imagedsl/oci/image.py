"""Layers and images whose blobs are in the store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class LayerBlob:
    """A layer: its blob digest and size, its diff_id, and its media type."""

    digest: str
    size: int
    diff_id: str
    media_type: str
    uncompressed_size: int

    def to_json(self) -> dict[str, object]:
        """The form kept in the store's layer index."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class BaseImage:
    """A base image in the store: its manifest digest, config, and layers as they were."""

    reference: str
    manifest_digest: str
    config: Mapping[str, Any] = attrs.field(eq=False, repr=False)
    layers: tuple[LayerBlob, ...]
    #: The name the image is known by, for its ``base.name`` annotation: a registry
    #: reference without its digest, or the name recorded inside a local image; never a path
    #: (the same archive at two paths makes the same image). None when it has no name.
    name: str | None = None

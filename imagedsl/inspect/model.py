"""What ``imagedsl inspect`` reports: per layer, the waste, the secrets; and its JSON (schema 1).

``wasted_bytes`` and ``efficiency`` are dive's: a path present in more than one layer
(written again, or deleted by a whiteout) counts all its copies as wasted, and efficiency is
the bytes of each path's smallest copy over the bytes of all copies (see docs/inspect.md).
"""

from __future__ import annotations

from typing import Any, Final

import attrs

INSPECT_SCHEMA: Final = 1


@attrs.frozen(kw_only=True)
class LayerReport:
    """One layer: its sizes, the step that made it, and what it changed."""

    index: int
    #: The blob's digest (None for a ``docker save`` layer, named by path).
    digest: str | None
    diff_id: str | None
    media_type: str | None
    compressed_bytes: int
    #: Bytes of the tar inside the blob.
    uncompressed_bytes: int
    #: Bytes of the files in the layer (dive's layer size: the sum of its entries' sizes).
    content_bytes: int
    created_by: str
    #: The build-file step and line that made the layer, when imagedsl built the image.
    step: str | None = None
    file: str | None = None
    line: int | None = None
    added: int
    changed: int
    deleted: int
    #: This layer's share of the image's wasted bytes (its copies of wasted paths).
    wasted_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        """This layer in the inspect JSON schema."""
        return {
            "index": self.index,
            "digest": self.digest,
            "diff_id": self.diff_id,
            "media_type": self.media_type,
            "compressed_bytes": self.compressed_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "content_bytes": self.content_bytes,
            "created_by": self.created_by,
            "step": self.step,
            "file": self.file,
            "line": self.line,
            "added": self.added,
            "changed": self.changed,
            "deleted": self.deleted,
            "wasted_bytes": self.wasted_bytes,
        }


@attrs.frozen
class WastedPath:
    """A path in more than one layer: the bytes of all its copies, and those layers."""

    path: str
    bytes: int
    layers: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """``{"path", "bytes", "layers"}``."""
        return {"path": self.path, "bytes": self.bytes, "layers": list(self.layers)}


@attrs.frozen
class LayerSecret:
    """A credential found in a layer's files; ``deleted_later``: a later layer deletes or
    replaces it, so the final filesystem hides it while the layer still ships it."""

    path: str
    layer: int
    kind: str
    deleted_later: bool

    def to_json(self) -> dict[str, Any]:
        """``{"path", "layer", "kind", "deleted_later"}``."""
        return {
            "path": self.path,
            "layer": self.layer,
            "kind": self.kind,
            "deleted_later": self.deleted_later,
        }


@attrs.frozen(kw_only=True)
class InspectReport:
    """Everything ``imagedsl inspect`` found in one image."""

    image: str
    manifest_digest: str | None
    config_digest: str | None = None
    layers: tuple[LayerReport, ...]
    #: Bytes of every layer's files (dive's image size).
    size_bytes: int
    wasted_bytes: int
    efficiency: float
    wasted: tuple[WastedPath, ...]
    secrets: tuple[LayerSecret, ...]

    @property
    def user_size_bytes(self) -> int:
        """Bytes of the layers above the first (dive's "user" size: not the base's bottom)."""
        return sum(layer.content_bytes for layer in self.layers[1:])

    def to_json(self) -> dict[str, Any]:
        """The documented inspect schema (``schema: 1``; fields may be added)."""
        return {
            "schema": INSPECT_SCHEMA,
            "image": self.image,
            "manifest_digest": self.manifest_digest,
            "layers": [layer.to_json() for layer in self.layers],
            "size_bytes": self.size_bytes,
            "user_size_bytes": self.user_size_bytes,
            "wasted_bytes": self.wasted_bytes,
            "efficiency": self.efficiency,
            "wasted": [w.to_json() for w in self.wasted],
            "secrets": [s.to_json() for s in self.secrets],
        }

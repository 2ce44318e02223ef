"""Image manifests and indexes: parsed with the exact bytes their digest is of, and written.

:class:`Manifest` reads an OCI or Docker v2 manifest or index (what registries and layouts
hold); :func:`manifest_document` writes the OCI image manifest of an image we made, in
:func:`canonical_json`, the one byte form of our JSON documents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.mediatypes import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
)

if TYPE_CHECKING:
    from imagedsl.oci.image import LayerBlob

#: The most manifests read along one path from a top manifest to an image: up to three
#: nested indexes, then the image manifest. Layouts, pushes and pulls all stop there, so a
#: hostile chain of indexes costs a few reads, never a deep recursion.
MAX_INDEX_DEPTH: Final = 4


@attrs.frozen(kw_only=True)
class Manifest:
    """A parsed image manifest or index, with the exact bytes its digest is of."""

    media_type: str
    digest: str
    raw: bytes = attrs.field(repr=False, eq=False)
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None

    @property
    def is_index(self) -> bool:
        """An index (or Docker manifest list) points at manifests, not at blobs."""
        return self.media_type in INDEX_TYPES

    @property
    def descriptor(self) -> Descriptor:
        """A descriptor of this manifest."""
        return Descriptor(media_type=self.media_type, digest=self.digest, size=len(self.raw))

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """The blobs an image manifest needs: config first, then layers."""
        return ((self.config,) if self.config is not None else ()) + self.layers

    @classmethod
    def parse(cls, raw: bytes, *, media_type: str | None = None, where: str = "") -> Manifest:
        """Parse manifest bytes; ``media_type`` (a Content-Type) is used when the JSON has none.

        Raises ``ValueError`` for anything that is not an OCI or Docker v2 manifest or index.
        """
        where = where or "manifest"
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{where}: not JSON") from None
        except RecursionError:  # nested deeper than the parser goes
            raise ValueError(f"{where}: JSON nested too deeply") from None
        if not isinstance(payload, dict):
            raise ValueError(f"{where}: not a JSON object")
        if payload.get("schemaVersion") != 2:
            raise ValueError(f"{where}: schemaVersion {payload.get('schemaVersion')!r} is not 2")
        declared = payload.get("mediaType")
        kind = declared if isinstance(declared, str) else (media_type or "").split(";")[0].strip()
        if kind not in INDEX_TYPES | MANIFEST_TYPES:
            kind = OCI_INDEX if "manifests" in payload else OCI_MANIFEST
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        subject = payload.get("subject")
        common: dict[str, Any] = {
            "media_type": kind,
            "digest": digest,
            "raw": raw,
            "subject": Descriptor.from_json(subject, where) if subject is not None else None,
        }
        if kind in INDEX_TYPES:
            children = payload.get("manifests")
            if not isinstance(children, list):
                raise ValueError(f"{where}: an index without a manifests list")
            manifests = tuple(Descriptor.from_json(c, where) for c in children)
            return cls(manifests=manifests, **common)
        layers = payload.get("layers")
        if not isinstance(layers, list):
            raise ValueError(f"{where}: a manifest without a layers list")
        return cls(
            config=Descriptor.from_json(payload.get("config"), where),
            layers=tuple(Descriptor.from_json(layer, where) for layer in layers),
            **common,
        )


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
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [descriptor_of(layer) for layer in layers],
    }
    if annotations:
        document["annotations"] = dict(annotations)
    return canonical_json(document)


def index_document(manifests: Sequence[Descriptor]) -> bytes:
    """An OCI image index of ``manifests`` (each with its platform), in the order given."""
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [m.to_json() for m in manifests],
    }
    return canonical_json(document)

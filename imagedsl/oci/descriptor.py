"""Content descriptors: what a manifest or an index says about a blob or another manifest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from imagedsl.oci.digest import is_sha256
from imagedsl.oci.platform import Platform


@attrs.frozen(kw_only=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or another manifest."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    artifact_type: str | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: object, where: str) -> Descriptor:
        """Parse and check a descriptor (its digest must be sha256: it names a file)."""
        if not isinstance(value, dict):
            raise ValueError(f"{where}: a descriptor is not an object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{where}: a descriptor lacks mediaType or size")
        if not is_sha256(digest):
            raise ValueError(f"{where}: descriptor digest {digest!r} is not sha256:<hex>")
        assert isinstance(digest, str)
        annotations = value.get("annotations")
        artifact_type = value.get("artifactType")
        urls = value.get("urls")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            platform=Platform.from_json(value.get("platform")),
            annotations=(
                {k: v for k, v in annotations.items() if isinstance(v, str)}
                if isinstance(annotations, dict)
                else {}
            ),
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            urls=tuple(u for u in urls if isinstance(u, str)) if isinstance(urls, list) else (),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form (for manifests the caller writes)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.urls:
            out["urls"] = list(self.urls)
        return out

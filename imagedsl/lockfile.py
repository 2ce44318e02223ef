"""The lock file: base images pinned to what they were when resolved.

``imagedsl plan --resolve`` finds what every unpinned base of the target is: the local
engine's image when it has one for the platform (no registry is asked), else the registry's
(the manifest the tag names now). It records each base's content identity (the image config
digest, the identity keys use) and, when known, a manifest digest that pulls exactly that
image, in ``imagedsl.lock`` beside the build file, and plans with them. Later plans and builds
read the lock, so a tag that moves upstream does not move the build until the lock is
refreshed. (The local engine's own image still comes first where it has one: a Dockerfile's
``FROM`` uses it, so the plan must too; the plan notes where the two differ.)

The file is JSON, sorted, one entry per (reference, platform)::

    {"version": 2,
     "images": {"docker.io/library/python:3.12-slim": {"linux/amd64": {
         "image": "sha256:…", "manifest": "sha256:…"}}}}

A version 1 file (from older imagedsl: each entry one manifest digest) is read as it was
written: that digest is both the base's identity and what pulls it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from imagedsl.errors import InputError
from imagedsl.oci.digest import is_sha256
from imagedsl.store import atomic_write

if TYPE_CHECKING:
    from imagedsl.oci.reference import ImageReference
    from imagedsl.planner import Plan

LOCK_NAME: Final = "imagedsl.lock"
LOCK_VERSION: Final = 2
_READABLE_VERSIONS: Final = (1, 2)


@attrs.define
class LockFileError(InputError):
    """A lock file exists but cannot be used."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@attrs.frozen
class Pin:
    """One lock entry: the base's content identity, and a manifest digest that pulls it."""

    image: str
    manifest: str | None = None

    def to_json(self) -> dict[str, str]:
        """The entry as the lock file holds it."""
        return {"image": self.image} | ({"manifest": self.manifest} if self.manifest else {})


def lock_key(reference: ImageReference) -> str:
    """The reference a lock entry is filed under: normalised, without a digest."""
    if reference.transport != "registry":
        return str(attrs.evolve(reference, digest=None))
    return f"{reference.name}:{reference.tag}" if reference.tag else reference.name


def unpinned_bases(plan: Plan) -> dict[tuple[str, str], ImageReference]:
    """The bases of ``plan`` that the build file leaves unpinned, from a registry or the local
    engine (``docker-daemon:``): (lock key, platform) -> reference."""
    from imagedsl.steps import FromImage

    wanted: dict[tuple[str, str], ImageReference] = {}
    for step in plan.steps:
        base = step.node.step
        if isinstance(base, FromImage):
            image = base.image
            if image.transport in ("registry", "docker-daemon") and not image.digest:
                wanted[lock_key(image), step.node.state.platform] = image
    return wanted


@attrs.frozen
class LockFile:
    """Pins read from (or to be written to) one lock file."""

    path: Path
    pins: Mapping[str, Mapping[str, Pin]] = attrs.field(factory=dict)

    @classmethod
    def beside(cls, buildfile: Path) -> LockFile:
        """The lock file next to a build file (empty if there is none yet)."""
        return cls.read(buildfile.parent / LOCK_NAME)

    @classmethod
    def read(cls, path: Path) -> LockFile:
        """Read a lock file; a missing one is empty, a malformed one is an error."""
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as error:
            raise LockFileError(str(path), f"cannot be read: {error}") from None
        version = payload.get("version") if isinstance(payload, dict) else None
        if version not in _READABLE_VERSIONS:
            raise LockFileError(str(path), f"is not a version {LOCK_VERSION} imagedsl lock file")
        images = payload.get("images")
        if not isinstance(images, dict):
            raise LockFileError(str(path), "has no 'images' object")
        pins: dict[str, dict[str, Pin]] = {}
        for reference, platforms in images.items():
            if not isinstance(platforms, dict):
                raise LockFileError(str(path), f"entry {reference!r} is not an object")
            pins[reference] = {}
            for platform, entry in platforms.items():
                pin = _read_pin(entry, version)
                if pin is None:
                    raise LockFileError(
                        str(path), f"entry {reference!r} {platform!r} is not a sha256 digest"
                    )
                pins[reference][platform] = pin
        return cls(path, pins)

    def pin(self, reference: ImageReference, platform: str) -> Pin | None:
        """The pin of a base on a platform, or None."""
        return self.pins.get(lock_key(reference), {}).get(platform)

    def digest(self, reference: ImageReference, platform: str) -> str | None:
        """The pinned identity of a base on a platform, or None."""
        pin = self.pin(reference, platform)
        return None if pin is None else pin.image

    def updated(self, resolved: Iterable[tuple[str, str, str | Pin]]) -> LockFile:
        """A copy with ``(reference, platform, pin)`` entries added or replaced (a bare
        digest is a pin by that digest alone)."""
        pins = {reference: dict(platforms) for reference, platforms in self.pins.items()}
        for reference, platform, pin in resolved:
            entry = pin if isinstance(pin, Pin) else Pin(pin, pin)
            pins.setdefault(reference, {})[platform] = entry
        return attrs.evolve(self, pins=pins)

    def write(self) -> None:
        """Write the lock file atomically, sorted, so diffs of it read well."""
        payload = {
            "version": LOCK_VERSION,
            "images": {
                ref: {platform: pin.to_json() for platform, pin in sorted(p.items())}
                for ref, p in sorted(self.pins.items())
            },
        }
        atomic_write(self.path, (json.dumps(payload, indent=2) + "\n").encode())


def _read_pin(entry: object, version: int) -> Pin | None:
    if version == 1:
        return Pin(str(entry), str(entry)) if is_sha256(entry) else None
    if not isinstance(entry, dict):
        return None
    image, manifest = entry.get("image"), entry.get("manifest")
    if not is_sha256(image) or (manifest is not None and not is_sha256(manifest)):
        return None
    return Pin(str(image), None if manifest is None else str(manifest))

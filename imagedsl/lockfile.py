"""The lock file: base images pinned to the manifest digests they had when resolved.

``imagedsl plan --resolve`` looks up every unpinned registry base of the target (one ``HEAD``
on its manifest), records the digests in ``imagedsl.lock`` beside the build file, and plans
with them. Later plans and builds read the lock, so a tag that moves upstream does not move
the build until the lock is refreshed; and the key of each base is its digest, not its tag.

The file is JSON, sorted, one entry per (reference, platform)::

    {"version": 1,
     "images": {"docker.io/library/python:3.12-slim": {"linux/amd64": "sha256:…"}}}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from imagedsl.errors import InputError
from imagedsl.oci.digest import is_sha256
from imagedsl.store import atomic_write

if TYPE_CHECKING:
    from imagedsl.oci.reference import ImageReference
    from imagedsl.planner import Plan
    from imagedsl.steps import FromImage

LOCK_NAME: Final = "imagedsl.lock"
LOCK_VERSION: Final = 1


@attrs.define
class LockFileError(InputError):
    """A lock file exists but cannot be used."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def lock_key(step: FromImage) -> str:
    """The reference a lock entry is filed under: normalised, without a digest."""
    reference = step.image
    name = reference.name if reference.transport == "registry" else str(reference)
    return f"{name}:{reference.tag}" if reference.tag else name


def unpinned_bases(plan: Plan) -> dict[tuple[str, str], ImageReference]:
    """The registry bases of ``plan`` that nothing pins: (lock key, platform) -> reference."""
    from imagedsl.steps import FromImage

    wanted: dict[tuple[str, str], ImageReference] = {}
    for step in plan.steps:
        base = step.node.step
        if isinstance(base, FromImage):
            image = base.image
            if image.transport == "registry" and not image.digest:
                wanted[lock_key(base), step.node.state.platform] = image
    return wanted


@attrs.frozen
class LockFile:
    """Pins read from (or to be written to) one lock file."""

    path: Path
    pins: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)

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
        if not isinstance(payload, dict) or payload.get("version") != LOCK_VERSION:
            raise LockFileError(str(path), f"is not a version {LOCK_VERSION} imagedsl lock file")
        images = payload.get("images")
        if not isinstance(images, dict):
            raise LockFileError(str(path), "has no 'images' object")
        pins: dict[str, dict[str, str]] = {}
        for reference, platforms in images.items():
            if not isinstance(platforms, dict):
                raise LockFileError(str(path), f"entry {reference!r} is not an object")
            for platform, digest in platforms.items():
                if not is_sha256(digest):
                    raise LockFileError(
                        str(path), f"entry {reference!r} {platform!r} is not a sha256 digest"
                    )
            pins[reference] = dict(platforms)
        return cls(path, pins)

    def digest(self, step: FromImage, platform: str) -> str | None:
        """The pinned digest of a base on a platform, or None."""
        return self.pins.get(lock_key(step), {}).get(platform)

    def resolver(self) -> Callable[[FromImage, str], str | None]:
        """A base resolver for the planner that reads this lock."""
        return self.digest

    def updated(self, resolved: Iterable[tuple[str, str, str]]) -> LockFile:
        """A copy with ``(reference, platform, digest)`` pins added or replaced."""
        pins = {reference: dict(platforms) for reference, platforms in self.pins.items()}
        for reference, platform, digest in resolved:
            pins.setdefault(reference, {})[platform] = digest
        return attrs.evolve(self, pins=pins)

    def write(self) -> None:
        """Write the lock file atomically, sorted, so diffs of it read well."""
        payload = {
            "version": LOCK_VERSION,
            "images": {ref: dict(sorted(p.items())) for ref, p in sorted(self.pins.items())},
        }
        atomic_write(self.path, (json.dumps(payload, indent=2) + "\n").encode())

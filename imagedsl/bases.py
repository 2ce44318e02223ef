"""What a base image is, found while planning: its content identity (docs/cache-keys.md).

A base's key holds the digest of its image config: the Docker engine's image ID, the config
descriptor of its manifest in a registry or a layout, the config file of a ``docker save``
archive. So one image has one key however it is named or wherever it comes from, both
backends share it, and a tag moved to other content misses.

For a reference the build file leaves unpinned, the plan asks, in order:

1. the local engine, over its API (:mod:`imagedsl.engine_api`): for a registry name, its
   image when it has one for the platform (a Dockerfile's ``FROM`` uses that image, so the
   plan must); for ``docker-daemon:NAME``, its image;
2. the lock file (``plan --resolve``);
3. for an OCI layout or archive, the file itself.

When none knows, the base is unpinned: its key follows the tag name, and the plan says so. A
reference pinned by digest (``name@sha256:…``) is keyed by that digest as written and never
looked up, so its key never depends on what happens to be downloaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from imagedsl.engine_api import EngineImage, LocalImages
from imagedsl.errors import ImageDSLError, InputError
from imagedsl.graph import ResolvedBase

if TYPE_CHECKING:
    from imagedsl.graph import BaseResolver
    from imagedsl.lockfile import LockFile, Pin
    from imagedsl.oci.reference import ImageReference

#: Transports whose images are files, read where they are.
LOCAL_FILE_TRANSPORTS = ("oci", "oci-archive", "docker-archive")


@attrs.define
class BaseNotFoundError(InputError, LookupError):
    """A base image is in none of the places it may come from.

    ``identity`` is the content the plan keyed it by (None: unpinned); ``places`` says, for
    each place looked in (the store, the local engine, the registry), what it had instead.
    """

    reference: str
    identity: str | None
    places: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        what = self.reference + (f" (image {self.identity})" if self.identity else "")
        looked = "; ".join(f"{place}: {answer}" for place, answer in self.places)
        return f"base image {what} was not found: {looked}"


def engine_name(reference: ImageReference) -> str:
    """The name the engine knows a registry or ``docker-daemon:`` reference by."""
    name = reference.name
    if reference.digest is not None:
        return f"{name}@{reference.digest}"
    return f"{name}:{reference.tag or 'latest'}"


def engine_image(
    images: LocalImages, reference: ImageReference, platform: str
) -> EngineImage | None:
    """The engine's image for ``reference``, or None.

    A registry name counts only with an image for ``platform``: with another platform's
    image, BuildKit goes to the registry. ``docker-daemon:`` takes the engine's image as it is.
    """
    if reference.transport not in ("registry", "docker-daemon"):
        return None
    found = images.image(engine_name(reference))
    if found is None or not found.id.startswith("sha256:"):
        return None
    if reference.transport == "registry" and not found.runs_on(platform):
        return None
    return found


def repository_digest(image: EngineImage, reference: ImageReference) -> str | None:
    """The digest the engine's image has in the reference's repository (it was pulled from
    it or pushed to it), if any: what pulls exactly this image from there."""
    from imagedsl.oci.reference import parse_reference

    if reference.transport != "registry":
        return None
    for text in image.repo_digests:
        try:
            known = parse_reference(text)
        except ImageDSLError:
            continue
        if known.name == reference.name and known.digest is not None:
            return known.digest
    return None


def engine_pin(images: LocalImages, reference: ImageReference, platform: str) -> Pin | None:
    """A lock entry from the engine's image: its ID, and the digest the engine has it by in
    this reference's repository, when it does (what pulls it elsewhere)."""
    from imagedsl.lockfile import Pin

    found = engine_image(images, reference, platform)
    if found is None:
        return None
    return Pin(found.id, repository_digest(found, reference))


def base_resolver(lock: LockFile, images: LocalImages | None = None) -> BaseResolver:
    """The resolver plans use (see the module docstring); ``images`` defaults to the engine
    a ``docker`` client would use."""
    local = images if images is not None else LocalImages()

    def resolve(reference: ImageReference, platform: str) -> ResolvedBase | None:
        if reference.transport in LOCAL_FILE_TRANSPORTS:
            from imagedsl.oci.layout import local_base_digest

            digest = local_base_digest(reference, platform)
            if digest is None:
                return None
            return ResolvedBase(
                digest=digest, notes=(f"resolved to {digest} from the local image",)
            )
        pin = lock.pin(reference, platform)
        found = engine_image(local, reference, platform)
        if found is not None:
            notes = [f"resolved to {found.id} by the local engine"]
            if pin is not None and pin.image != found.id:
                notes.append(
                    f"the lock file pins {pin.image}; the local engine's image comes first, as it "
                    "does for a Dockerfile's FROM (`plan --resolve` pins it)"
                )
            return ResolvedBase(digest=found.id, notes=tuple(notes))
        # An engine that is there but did not answer is said: keys planned without it differ.
        trouble = () if local.trouble is None else (f"planned without {local.trouble}",)
        if pin is not None:
            return ResolvedBase(
                digest=pin.image,
                manifest=pin.manifest,
                notes=(f"pinned to {pin.image} by the lock file", *trouble),
            )
        return ResolvedBase(digest=None, notes=trouble) if trouble else None

    return resolve

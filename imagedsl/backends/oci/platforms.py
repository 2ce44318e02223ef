"""Several target platforms, one image index: each platform's plan built in turn, then the
index of their manifests written where ``--output`` says.

Platforms are planned one after the other, after the one before was built: a step every
platform shares (a stage on ``$BUILDPLATFORM`` whose keys do not depend on the target) is
built for the first and is a hit for the rest, so it is built once. Outputs that hold one
image per name (``docker-archive:``, ``docker``) refuse a list of platforms before anything
is built: Docker 20.10's image store keeps one platform per tag.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from imagedsl.backends import BuildRequest, BuildRequestError, BuildResult
from imagedsl.backends.oci.outputs import (
    BuiltImage,
    BuiltIndex,
    Output,
    check_tag,
    write_archive,
    write_layout,
)
from imagedsl.oci.blobs import BlobStore
from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.manifest import index_document
from imagedsl.oci.mediatypes import OCI_INDEX
from imagedsl.oci.platform import Platform

if TYPE_CHECKING:
    from imagedsl.backends.oci.backend import OCIBackend
    from imagedsl.planner import Plan
    from imagedsl.reporting import Reporter
    from imagedsl.store import Store

#: Outputs that hold one image per name: a list of platforms is refused for them.
SINGLE_PLATFORM_OUTPUTS = ("docker-archive", "docker")


def check_platform_output(
    output: str | None,
    platforms: Sequence[str],
    refused: Collection[str] = SINGLE_PLATFORM_OUTPUTS,
) -> Output | None:
    """The parsed ``--output``; refused when it is of a kind in ``refused`` (one platform per
    image name) and several platforms are asked."""
    parsed = Output.parse(output) if output else None
    if parsed is not None and parsed.kind in refused and len(platforms) > 1:
        raise BuildRequestError(
            f"--output {output}: {parsed.kind} holds one platform per image name, and "
            f"{len(platforms)} platforms were asked ({', '.join(platforms)}): write an image "
            "index with oci:DIR[:TAG] or oci-archive:FILE[:TAG], push it with --push, or build "
            "one --platform at a time"
        )
    return parsed


@attrs.define
class PlatformSteps:
    """What a multi-platform build built and found cached, each step once: a label gets the
    platform of its step (``app[1] ... (linux/arm64)``; a native stage's, the build
    platform's), so a step every platform shares is named once, as built if any built it."""

    built: dict[str, None] = attrs.field(factory=dict)
    cached: dict[str, None] = attrs.field(factory=dict)

    def add(self, plan: Plan, result: BuildResult) -> None:
        """One platform's plan and result."""
        platforms = {f"{s.stage}[{s.index}]": s.platform for s in plan.steps}

        def named(label: str) -> str:
            return f"{label} ({platforms.get(label.partition(' ')[0], plan.target_platform)})"

        for label in result.built:
            self.built[named(label)] = None
            self.cached.pop(named(label), None)
        for label in result.cached:
            if named(label) not in self.built:
                self.cached[named(label)] = None


def image_platform(image: BuiltImage, blobs: BlobStore) -> Platform:
    """The platform an image's config says it is for (what its index entry carries)."""
    config = json.loads(blobs.read(image.config_digest))
    found = Platform.from_json(config)  # a config names them as a descriptor does
    if found is not None:
        return found
    return Platform(str(config.get("os", "")), str(config.get("architecture", "")))


def make_index(images: Sequence[BuiltImage], blobs: BlobStore) -> BuiltIndex:
    """The image index of ``images`` (one per platform, in order), put in the store."""
    entries = [
        Descriptor(
            media_type=image.media_type,
            digest=image.manifest_digest,
            size=len(image.manifest),
            platform=image_platform(image, blobs),
        )
        for image in images
    ]
    document = index_document(entries)
    return BuiltIndex(manifest=document, manifest_digest=blobs.put(document), images=tuple(images))


def build_platforms(
    backend: OCIBackend,
    plan_for: Callable[[str], Plan],
    platforms: Sequence[str],
    request: BuildRequest,
    *,
    store: Store,
    reporter: Reporter,
) -> BuildResult:
    """Build every platform's image (each planned by ``plan_for`` once the one before is
    built) and write their index to ``request.output``; the result's manifest is the
    index's descriptor (what ``--push`` pushes)."""
    output = check_platform_output(request.output, platforms)
    blobs = BlobStore(store)
    images: list[BuiltImage] = []
    steps = PlatformSteps()
    layer_cache: dict[tuple[str, Path], None] = {}
    for number, name in enumerate(platforms, 1):
        reporter.platform_started(name, number, len(platforms))
        planned = plan_for(name)
        one = backend.build_image(
            planned,
            attrs.evolve(request, output=None, platform=name),
            store=store,
            reporter=reporter,
        )
        images.append(one.image)
        steps.add(planned, one.result)
        layer_cache.update(dict.fromkeys(one.result.layer_cache))
    index = make_index(images, blobs)
    where = write_index(index, output, request.tags, blobs, epoch=backend.epoch)
    return index_result(index, where, steps, layer_cache=tuple(layer_cache))


def index_result(
    index: BuiltIndex,
    where: str,
    steps: PlatformSteps,
    *,
    layer_cache: tuple[tuple[str, Path], ...] = (),
) -> BuildResult:
    """A multi-platform build's result: its steps, and the index as its image and manifest."""
    return BuildResult(
        built=tuple(steps.built),
        cached=tuple(steps.cached),
        image=where,
        digest=index.manifest_digest,
        manifest=Descriptor(
            media_type=OCI_INDEX, digest=index.manifest_digest, size=len(index.manifest)
        ),
        layer_cache=layer_cache,
    )


def write_index(
    index: BuiltIndex, output: Output | None, tags: Sequence[str], blobs: BlobStore, *, epoch: int
) -> str:
    """Write ``index`` to an ``oci:`` layout or an ``oci-archive:``; what it is now called."""
    names = [output.tag] if output is not None and output.tag else list(tags)
    if output is None:
        return index.manifest_digest
    names = [check_tag(name, "-t") for name in names]
    assert output.path is not None
    assert output.kind not in SINGLE_PLATFORM_OUTPUTS
    if output.kind == "oci":
        write_layout(Path(output.path), index, names, blobs)
    else:
        write_archive(Path(output.path), index, names, blobs, mtime=epoch, docker_names=[])
    return f"{output.kind}:{output.path}" + (f":{names[0]}" if names else "")

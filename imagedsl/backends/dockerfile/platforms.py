"""Several target platforms with BuildKit (the ``docker`` backend).

Each platform is built in turn by ``docker build --platform P`` (BuildKit's cache shares the
``$BUILDPLATFORM`` stages between them, as the plan shares their keys). Then:

- with no ``--output`` or ``docker[:TAG]``: each platform is built into the engine under the
  tags, in the order given. Docker 20.10's image store keeps one image per tag, so the tags end
  on the **last** platform listed (the others stay in BuildKit's cache, untagged);
- with ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]`` or ``--push``: each platform's image is
  built under a temporary tag, saved (``docker save``) into the store, untagged, and the image
  index of them all is written there (:mod:`imagedsl.backends.oci.platforms`) or pushed;
- ``docker-archive:`` holds one platform per name: a list is refused before anything runs.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from imagedsl.backends import BuildRequest, BuildResult
from imagedsl.backends.oci.outputs import BuiltImage
from imagedsl.backends.oci.platforms import (
    PlatformSteps,
    check_platform_output,
    index_result,
    make_index,
    write_index,
)
from imagedsl.oci.blobs import BlobStore
from imagedsl.oci.layout import import_docker_archive
from imagedsl.store import StoreArea

if TYPE_CHECKING:
    from imagedsl.backends.dockerfile.buildkit import DockerfileBackend
    from imagedsl.planner import Plan
    from imagedsl.reporting import Reporter
    from imagedsl.store import Store


def build_platforms(
    backend: DockerfileBackend,
    plan_for: Callable[[str], Plan],
    platforms: Sequence[str],
    request: BuildRequest,
    *,
    store: Store,
    reporter: Reporter,
) -> BuildResult:
    """Build every platform; into the engine, or (an OCI output, or ``request.push``) as one
    image index in the store."""
    # The tags of a plain docker build end on the last platform (see the module docstring).
    output = check_platform_output(request.output, platforms, refused=("docker-archive",))
    if not request.push and (output is None or output.kind == "docker"):
        return _into_engine(backend, plan_for, platforms, request, store, reporter)
    engine = backend.engine(store)
    blobs = BlobStore(store)
    images: list[BuiltImage] = []
    steps = PlatformSteps()
    scratch_root = store.area(StoreArea.TMP)
    scratch_root.mkdir(parents=True, exist_ok=True)
    for number, name in enumerate(platforms, 1):
        reporter.platform_started(name, number, len(platforms))
        temporary = f"imagedsl-platform-{uuid.uuid4().hex[:12]}:{name.replace('/', '-')}"
        planned = plan_for(name)
        one = backend.build(
            planned,
            attrs.evolve(request, output=None, tags=(temporary,), platform=name, push=False),
            store=store,
            reporter=reporter,
        )
        try:
            with tempfile.TemporaryDirectory(dir=scratch_root) as tmp:
                archive = Path(tmp, "image.tar")
                engine.run("save", "--output", str(archive), temporary)
                base = import_docker_archive(archive, f"{name} image", blobs)
        finally:
            engine.run("rmi", temporary, check=False)
        manifest = blobs.read(base.manifest_digest)
        images.append(
            BuiltImage(
                manifest=manifest,
                manifest_digest=base.manifest_digest,
                config_digest=json.loads(manifest)["config"]["digest"],
                layers=base.layers,
            )
        )
        steps.add(planned, one)
    index = make_index(images, blobs)
    return index_result(index, write_index(index, output, request.tags, blobs, epoch=0), steps)


def _into_engine(
    backend: DockerfileBackend,
    plan_for: Callable[[str], Plan],
    platforms: Sequence[str],
    request: BuildRequest,
    store: Store,
    reporter: Reporter,
) -> BuildResult:
    """Each platform built into the engine under the tags; the last one keeps them."""
    steps = PlatformSteps()
    result = BuildResult()
    for number, name in enumerate(platforms, 1):
        reporter.platform_started(name, number, len(platforms))
        planned = plan_for(name)
        result = backend.build(
            planned, attrs.evolve(request, platform=name), store=store, reporter=reporter
        )
        steps.add(planned, result)
    return attrs.evolve(result, built=tuple(steps.built), cached=tuple(steps.cached))

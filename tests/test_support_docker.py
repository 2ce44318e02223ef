"""The real Docker engine, busybox base image and registry the other tests rely on."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.support import docker

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.support.docker import DockerEngine, RegistryServer

pytestmark = pytest.mark.docker


@pytest.fixture(name="scratch_tag")
def fixture_scratch_tag(docker_engine: DockerEngine) -> Iterator[str]:
    """A unique tag (xdist-safe) that is removed from the engine afterwards."""
    tag = f"imagedsl-test/scratch:{uuid.uuid4().hex[:12]}"
    yield tag
    docker_engine.run("image", "rm", "--force", tag, check=False)


def test_buildkit_multi_stage_build(
    docker_engine: DockerEngine, busybox_image: str, scratch_tag: str, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex  # defeats the build cache so RUN really runs in a container
    (tmp_path / "Dockerfile").write_text(
        f"FROM {busybox_image} AS build\n"
        f"RUN echo built-{token} > /out.txt && cat /out.txt\n"
        f"FROM {busybox_image}\n"
        "COPY --from=build /out.txt /out.txt\n"
        'CMD ["cat", "/out.txt"]\n'
    )
    result = docker_engine.build(tmp_path, "--tag", scratch_tag)
    progress = result.stderr + result.stdout
    assert re.search(r"^#\d+ \[build 2/2\] RUN echo built-", progress, re.MULTILINE), progress
    assert re.search(r"^#\d+ DONE \d", progress, re.MULTILINE), progress
    assert f"built-{token}" in progress  # the RUN step's output, shown by plain progress

    ran = docker_engine.run("run", "--rm", scratch_tag)
    assert ran.stdout == f"built-{token}\n"


def test_run_busybox_echo(docker_engine: DockerEngine, busybox_image: str) -> None:
    result = docker_engine.run("run", "--rm", busybox_image, "echo", "hi")
    assert result.stdout == "hi\n"


def test_busybox_image_shell_and_reuse(docker_engine: DockerEngine, busybox_image: str) -> None:
    image_id = docker_engine.run("image", "inspect", "--format", "{{.Id}}", busybox_image).stdout
    script = "cat /proc/self/comm; ls -ld /tmp | cut -c1-10; readlink /bin/cat"
    result = docker_engine.run("run", "--rm", "-i", busybox_image, "sh", input=script)
    assert result.stdout.split() == ["cat", "drwxrwxrwt", "/bin/busybox"]

    assert docker.ensure_busybox_image(docker_engine) == busybox_image
    again = docker_engine.run("image", "inspect", "--format", "{{.Id}}", busybox_image).stdout
    assert again == image_id, "the busybox image was rebuilt although nothing changed"


def test_push_to_registry(
    docker_engine: DockerEngine, busybox_image: str, registry: RegistryServer
) -> None:
    assert registry.catalog() == []
    remote = f"{registry.host}/imagedsl-test/busybox:pushed"
    docker_engine.run("tag", busybox_image, remote)
    try:
        docker_engine.run("push", remote)
    finally:
        docker_engine.run("image", "rm", remote, check=False)

    assert registry.catalog() == ["imagedsl-test/busybox"]
    assert registry.tags("imagedsl-test/busybox") == ["pushed"]
    assert any(registry.storage.rglob("data")), "no blobs in the registry's own storage"


def test_registry_serves_v2_and_stops(registry: RegistryServer) -> None:
    status, body = registry.get("/v2/")
    assert (status, body.strip()) == (200, b"{}")
    assert registry.get("/v2/nothing/here/manifests/latest")[0] == 404

    registry.stop()
    assert registry.process.returncode is not None
    with pytest.raises(OSError, match="refused"):
        registry.get("/v2/", timeout=2.0)

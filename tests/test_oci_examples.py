"""Every example built with ``--backend oci`` runs like its ``--backend docker`` build, and the
two root filesystems are the same file by file (content, mode, owner, symlinks), apart from
the by-nature differences listed in :func:`equivalence.differences` (and in
docs/oci-backend.md).

Both backends start from the same bytes: the Debian test bases without their device nodes
(:func:`equivalence.ensure_nodev_image`), by name for BuildKit and through
``docker-daemon:`` for the OCI backend. Docker's root filesystem comes from ``docker export``,
ours from the layers of the OCI layout the build wrote; each image is also run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docker import DockerEngine, host_tool, http_get, serving
from tests.support.equivalence import (
    differences,
    ensure_nodev_image,
    export_listing,
    layout_listing,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(name="tags")
def fixture_tags(docker_engine: DockerEngine) -> Iterator[tuple[str, str]]:
    """(docker backend's tag, OCI backend's tag), removed afterwards."""
    name = f"imagedsl-test/equivalence-{uuid.uuid4().hex[:10]}"
    yield f"{name}:docker", f"{name}:oci"
    for tag in ("docker", "oci"):
        docker_engine.run("image", "rm", "--force", f"{name}:{tag}", check=False)


def _copy_example(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(
        EXAMPLES / name,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "node_modules", "npm-cache", "wheels"),
    )
    return target


def _imagedsl(
    engine: DockerEngine, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **({"DOCKER_HOST": engine.host} if engine.host else {}), **env},
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def build_both(
    engine: DockerEngine,
    spec: str,
    variable: str,
    base: str,
    tags: tuple[str, str],
    tmp_path: Path,
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Build ``spec`` with each backend from the same base; return our OCI layout
    (``DIR:TAG``) and the OCI build's completed process. Both images end up in the engine."""
    nodev = ensure_nodev_image(engine, base)
    docker_tag, oci_tag = tags
    _imagedsl(engine, "build", spec, "--backend", "docker", "--store", str(tmp_path / "s1"),
              "-t", docker_tag, env={variable: nodev})  # fmt: skip
    oci_env = {variable: f"docker-daemon:{nodev}"}
    layout = f"{tmp_path / 'layout'}:app"
    built = _imagedsl(engine, "build", spec, "--backend", "oci", "--store",
                      str(tmp_path / "s2"), "--output", f"oci:{layout}", env=oci_env)  # fmt: skip
    _imagedsl(engine, "build", spec, "--backend", "oci", "--store", str(tmp_path / "s2"),
              "--output", f"docker:{oci_tag}", env=oci_env)  # fmt: skip
    return layout, built


def assert_same_rootfs(
    engine: DockerEngine, tags: tuple[str, str], layout: str, tmp_path: Path, mounts: list[str]
) -> None:
    """docker export of the docker backend's image == our layers applied, by nature aside."""
    docker = export_listing(engine, tags[0], tmp_path)
    directory, _, tag = layout.rpartition(":")
    ours = layout_listing(Path(directory), tag)
    assert differences(docker, ours, mount_points=mounts) == {}
    assert len(ours) == len(docker) - len(set(docker) - set(ours))  # ours adds nothing


def test_c_program_from_scratch(
    docker_engine: DockerEngine, debian_gcc_image: str, tmp_path: Path, tags: tuple[str, str]
) -> None:
    """The static binary compiled by a RUN in the build stage is the same file, and prints
    the same line, from both backends."""
    example = _copy_example("c-scratch", tmp_path)
    layout, _ = build_both(docker_engine, f"{example}/build.py", "GCC_BASE", debian_gcc_image,
                           tags, tmp_path)  # fmt: skip
    outputs = {docker_engine.run("run", "--rm", tag).stdout for tag in tags}
    assert outputs == {"hello from a static binary built by imagedsl (Linux x86_64)\n"}
    assert_same_rootfs(docker_engine, tags, layout, tmp_path, mounts=[])


def test_python_app_and_its_tests(
    docker_engine: DockerEngine, debian_python_image: str, tmp_path: Path, tags: tuple[str, str]
) -> None:
    """The Python app (dependencies installed by pip in a RUN) answers the same from both
    images, the roots match, and the test target's RUN passes under the OCI backend."""
    example = _copy_example("python-app", tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
         "-r", str(example / "requirements.txt"), "-d", str(example / "wheels")],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    spec = f"{example}/build.py"
    layout, _ = build_both(docker_engine, f"{spec}:app", "PYTHON_BASE", debian_python_image,
                           tags, tmp_path)  # fmt: skip
    answers = set()
    for tag in tags:
        with serving(docker_engine, tag, 8080) as url:
            answers.add(http_get(url + "/"))
    assert answers == {(200, b"hello from imagedsl (4.2 MB)\n")}
    assert_same_rootfs(docker_engine, tags, layout, tmp_path, mounts=["/wheels"])
    nodev = ensure_nodev_image(docker_engine, debian_python_image)
    tested = _imagedsl(docker_engine, "build", f"{spec}:test", "--backend", "oci", "--store",
                       str(tmp_path / "s2"), env={"PYTHON_BASE": f"docker-daemon:{nodev}"})  # fmt: skip
    assert "OK" in tested.stderr.splitlines()


def test_node_express_on_3011(
    docker_engine: DockerEngine, debian_node_image: str, tmp_path: Path, tags: tuple[str, str]
) -> None:
    """The Express server (npm ci in a RUN, from a bind-mounted offline cache) answers the
    same from both images, and the roots match."""
    npm = host_tool("npm")
    example = _copy_example("node-express", tmp_path)
    subprocess.run(
        [npm, "ci", "--omit=dev", "--cache", str(example / "npm-cache"), "--no-audit", "--no-fund"],
        cwd=example, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    shutil.rmtree(example / "node_modules")
    layout, _ = build_both(docker_engine, f"{example}/build.py", "NODE_BASE", debian_node_image,
                           tags, tmp_path)  # fmt: skip
    answers = set()
    for tag in tags:
        with serving(docker_engine, tag, 3011) as url:
            status, body = http_get(url + "/")
            answers.add((status, json.dumps(json.loads(body), sort_keys=True)))
            assert http_get(url + "/healthz") == (200, b"ok\n")
    assert answers == {(200, '{"express": "4.21.2", "message": "hello from imagedsl"}')}
    assert_same_rootfs(docker_engine, tags, layout, tmp_path, mounts=["/tmp/npm-cache"])

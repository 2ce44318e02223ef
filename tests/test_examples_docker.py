"""The examples build with the docker backend, run, and answer as their READMEs say.

Their public bases (``node:20-bookworm-slim``, ``gcc:13-bookworm``, ``python:3.12-slim``)
cannot be pulled here, so each test passes a locally made Debian base through the variable
its ``build.py`` documents. Build containers cannot reach the npm registry or the package
index either, so the tests fill the offline caches the examples document (``npm-cache/``,
``wheels/``) from the host first.
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

from imagedsl.backends.dockerfile._progress import CACHED, ProgressParser
from tests.support.docker import DockerEngine, host_tool, http_get, serving

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(name="tag")
def fixture_tag(docker_engine: DockerEngine) -> Iterator[str]:
    """A unique tag in this backend's namespace, removed afterwards."""
    tag = f"imagedsl-test/docker-backend-example-{uuid.uuid4().hex[:10]}"
    yield tag
    docker_engine.run("image", "rm", "--force", tag, check=False)


def copy_example(name: str, tmp_path: Path) -> Path:
    """A private copy of an example, without caches a developer may have left in it."""
    target = tmp_path / name
    shutil.copytree(
        EXAMPLES / name,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "node_modules", "npm-cache", "wheels"),
    )
    return target


def imagedsl(
    engine: DockerEngine, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI against the test engine; fail with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **({"DOCKER_HOST": engine.host} if engine.host else {}), **(env or {})},
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def assert_all_hits(engine: DockerEngine, spec: str, store: Path, env: dict[str, str]) -> None:
    """After the build, the plan has nothing left to do."""
    planned = imagedsl(engine, "plan", spec, "--store", str(store), "--json", env=env)
    summary = json.loads(planned.stdout)["summary"]
    assert summary["miss"] == summary["maybe"] == 0, planned.stdout


def test_node_express_answers_on_3011(
    docker_engine: DockerEngine, debian_node_image: str, tmp_path: Path, tag: str
) -> None:
    """The Express server built from examples/node-express answers on port 3011."""
    npm = host_tool("npm")
    example = copy_example("node-express", tmp_path)
    subprocess.run(
        [npm, "ci", "--omit=dev", "--cache", str(example / "npm-cache"), "--no-audit", "--no-fund"],
        cwd=example,
        check=True,
        capture_output=True,
        timeout=600,
    )
    shutil.rmtree(example / "node_modules")
    env = {"NODE_BASE": debian_node_image}
    store = tmp_path / "store"
    spec = f"{example}/build.py"
    imagedsl(docker_engine, "build", spec, "--store", str(store), "-t", tag, env=env)
    with serving(docker_engine, tag, 3011) as url:
        status, body = http_get(url + "/")
        assert status == 200
        assert json.loads(body) == {"message": "hello from imagedsl", "express": "4.21.2"}
        assert http_get(url + "/healthz") == (200, b"ok\n")
    assert_all_hits(docker_engine, spec, store, env)


def test_c_program_runs_from_scratch(
    docker_engine: DockerEngine, debian_gcc_image: str, tmp_path: Path, tag: str
) -> None:
    """The static binary from examples/c-scratch runs alone in a scratch image."""
    example = copy_example("c-scratch", tmp_path)
    env = {"GCC_BASE": debian_gcc_image}
    store = tmp_path / "store"
    spec = f"{example}/build.py"
    imagedsl(docker_engine, "build", spec, "--store", str(store), "-t", tag, env=env)
    ran = docker_engine.run("run", "--rm", tag)
    assert ran.stdout == "hello from a static binary built by imagedsl (Linux x86_64)\n"
    layers = docker_engine.run("image", "inspect", "--format", "{{json .RootFS.Layers}}", tag)
    assert len(json.loads(layers.stdout)) == 1  # the binary, and nothing else
    assert_all_hits(docker_engine, spec, store, env)


def test_python_app_answers_and_its_tests_pass(
    docker_engine: DockerEngine, debian_python_image: str, tmp_path: Path, tag: str
) -> None:
    """The Python app answers over HTTP using its dependency; the test target's tests pass."""
    example = copy_example("python-app", tmp_path)
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
            "-r", str(example / "requirements.txt"), "-d", str(example / "wheels"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )  # fmt: skip
    env = {"PYTHON_BASE": debian_python_image}
    store = tmp_path / "store"
    spec = f"{example}/build.py"
    imagedsl(docker_engine, "build", f"{spec}:app", "--store", str(store), "-t", tag, env=env)
    with serving(docker_engine, tag, 8080) as url:
        assert http_get(url + "/") == (200, b"hello from imagedsl (4.2 MB)\n")
    tested = imagedsl(
        docker_engine, "build", f"{spec}:test", "--store", str(store), "--progress", "plain",
        env=env,
    )  # fmt: skip
    assert_all_hits(docker_engine, f"{spec}:app", store, env)
    progress = ProgressParser()
    for line in tested.stderr.splitlines():
        progress.feed(line)
    unit_tests = progress.by_label()["[test 2/2]"]
    assert unit_tests.instruction == "RUN python3 -m unittest discover -s app -q"
    # Run now, or earlier with the same inputs (BuildKit caches successful runs only).
    assert unit_tests.status == CACHED or "OK" in unit_tests.output
    # The dependency layer is shared: the test target reused it rather than reinstalling.
    install = progress.by_label()["[deps 2/2]"]
    assert install.instruction.endswith("--no-index --find-links /wheels")
    assert install.status == CACHED

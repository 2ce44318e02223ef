"""Plan fidelity for bases: a local tag moved to other content, or to the same content, is
planned as BuildKit then builds it (BuildKit with dockerd uses the engine's own image).

Each test tags a base under a name of its own, builds ``FROM`` it with a RUN that writes a
fresh token (so nothing outside the test lends BuildKit a hit), moves the tag, and compares
``imagedsl plan --json`` with BuildKit's plain progress for that RUN. A control RUN on the
untouched busybox base must stay CACHED: when it does not (or a build fails outright),
someone emptied BuildKit's cache on this shared engine meanwhile, and the scenario is run
again from the start.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.support.docker import DockerEngine

_VERTEX = re.compile(r"#(\d+) (.*)\Z")


class Interference(Exception):
    """BuildKit's cache was emptied by someone else during the scenario (a control RUN that
    nothing changed was built again)."""


@attrs.define
class RetagProject:
    """A build file FROM ``tag`` with one RUN (and a control RUN), its store, the engine."""

    root: Path
    engine: DockerEngine
    tag: str
    control_base: str
    token: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    #: The images the builds made (removed afterwards).
    outputs: list[str] = attrs.field(factory=list)

    @property
    def build_py(self) -> Path:
        return self.root / "build.py"

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.build_py.write_text(
            "import imagedsl as dsl\n\n"
            f"control = dsl.image({self.control_base!r}).run('echo {self.token} > /control')\n"
            f"app = dsl.image({self.tag!r}).run('echo {self.token} > /token')"
            ".copy(control.path('/control'), '/control')\n"
            f"daemon = dsl.image('docker-daemon:{self.tag}').run('echo {self.token} > /token')\n"
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **({"DOCKER_HOST": self.engine.host} if self.engine.host else {})}
        return subprocess.run(
            [sys.executable, "-m", "imagedsl", *args, "--store", str(self.root / "store")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=600,
        )

    def plan(self, target: str = "app") -> dict[str, Any]:
        """``plan --json`` of a target."""
        result = self.cli("plan", f"{self.build_py}:{target}", "--json")
        assert result.returncode == 0, result.stderr
        planned: dict[str, Any] = json.loads(result.stdout)
        return planned

    def statuses(self) -> list[str]:
        """The plan's status of each step of ``app`` that makes a layer."""
        return [s["status"] for s in self.plan()["steps"] if s["kind"] != "copy"]

    def build(self, *, first: bool = False) -> str:
        """Build ``app`` with the docker backend; BuildKit's status of its RUN. Each build
        names a new image, so BuildKit runs even when the engine still holds the image an
        all-hit plan made last time (the backend skips BuildKit then)."""
        output = f"{self.tag.rpartition(':')[0]}-out:{uuid.uuid4().hex[:8]}"
        self.outputs.append(output)
        result = self.cli("build", f"{self.build_py}:app", "--progress=plain", "--tag", output)
        assert result.returncode == 0, result.stderr
        control = run_status(result.stderr, f"echo {self.token} > /control")
        if not first and control != "CACHED":
            raise Interference("the control RUN was rebuilt")
        return run_status(result.stderr, f"echo {self.token} > /token")


def run_status(output: str, command: str) -> str:
    """CACHED or DONE: what BuildKit's plain progress says of the RUN running ``command``."""
    vertex = None
    status = None
    for line in output.splitlines():
        match = _VERTEX.match(line)
        if match is None:
            continue
        if vertex is None and match[2].endswith(f"RUN {command}"):
            vertex = match[1]
        elif match[1] == vertex and (match[2] == "CACHED" or match[2].startswith("DONE")):
            status = match[2].split()[0]
    assert status is not None, output
    return status


@pytest.fixture(name="retag")
def fixture_retag(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> Iterator[Callable[[Scenario], None]]:
    """Run a scenario on a project whose base tag (unique to it) starts on the busybox image;
    again from the start if someone else's prune interferes."""
    tags: list[str] = []

    def run(scenario: Scenario) -> None:
        problems = []
        for attempt in range(3):
            tag = f"imagedsl-test/retag-{uuid.uuid4().hex[:10]}:1"
            tags.append(tag)
            docker_engine.run("tag", busybox_image, tag)
            project = RetagProject(
                tmp_path / f"attempt-{attempt}", docker_engine, tag, busybox_image
            )
            project.write()
            try:
                scenario(project)
            except Interference as error:
                problems.append(str(error))
                continue
            finally:
                tags.extend(project.outputs)
            return
        pytest.fail("BuildKit's cache was emptied by someone else, thrice:\n" + "\n".join(problems))

    yield run
    for tag in tags:
        docker_engine.run("image", "rm", "--force", tag, check=False)


Scenario = Callable[[RetagProject], None]


def image_id(engine: DockerEngine, name: str) -> str:
    """The engine's image ID of ``name``."""
    return engine.run("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()


def other_content(engine: DockerEngine, base: str, tag: str, directory: Path) -> str:
    """Build an image unlike ``base`` (one more file), tag it ``tag``; return its ID."""
    directory.mkdir()
    (directory / "Dockerfile").write_text(f"FROM {base}\nRUN echo {uuid.uuid4().hex} > /other\n")
    engine.build(directory, "--tag", tag)
    return image_id(engine, tag)


def test_retag_to_other_content(
    retag: Callable[[Scenario], None],
    busybox_image: str,
    docker_engine: DockerEngine,
) -> None:
    """A tag moved to another image: the plan misses the FROM (said once) and the RUN, and
    BuildKit rebuilds the RUN; docker-daemon: of the same tag keys the same."""

    def scenario(project: RetagProject) -> None:
        assert project.build(first=True) == "DONE"
        assert project.statuses() == ["hit", "hit", "hit", "hit"]
        moved = other_content(docker_engine, busybox_image, project.tag, project.root / "other")
        planned = project.plan()
        app = [s for s in planned["steps"] if s["stage"] == "app"]
        assert [s["status"] for s in app[:2]] == ["miss", "miss"]
        assert app[0]["reasons"] == [f"base image changed: {project.tag} is now {moved}"]
        assert app[0]["notes"] == [f"resolved to {moved} by the local engine"]
        assert app[1]["reasons"][0].startswith("parent changed: app[0] FROM ")
        assert project.plan("daemon")["steps"][0]["key"] == app[0]["key"]
        assert project.build() == "DONE"
        assert project.statuses() == ["hit", "hit", "hit", "hit"]

    retag(scenario)


def test_retag_to_the_same_content(
    retag: Callable[[Scenario], None],
    busybox_image: str,
    docker_engine: DockerEngine,
) -> None:
    """A tag moved away and back to the image it was built from: the plan hits, and BuildKit
    finds the RUN CACHED."""

    def scenario(project: RetagProject) -> None:
        assert project.build(first=True) == "DONE"
        other_content(docker_engine, busybox_image, project.tag, project.root / "other")
        assert "miss" in project.statuses()
        docker_engine.run("tag", busybox_image, project.tag)  # back to the same content
        assert image_id(docker_engine, project.tag) == image_id(docker_engine, busybox_image)
        assert project.statuses() == ["hit", "hit", "hit", "hit"]
        assert project.build() == "CACHED"

    retag(scenario)

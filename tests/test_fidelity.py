"""Plan fidelity: after an edit, ``imagedsl plan`` predicts what BuildKit then does.

Each scenario builds a small project, makes one edit, asks ``imagedsl plan --json``, builds
with ``imagedsl build --progress=plain``, and compares every step's predicted status with
BuildKit's own report: ``hit`` must be ``CACHED``, ``miss`` must be built, ``maybe`` (a COPY
--from whose source was rebuilt, and what follows it) may be either, and ``config`` steps
make no vertex. FROM vertices are listed but not compared: BuildKit reports a base image of
the local engine as DONE or CACHED whatever its cache holds (it is resolved, not built).

Every scenario starts with a RUN that writes a fresh token, so no scenario (and no earlier
test run) can lend BuildKit a cache hit that this project's ledger does not know about.

Set ``IMAGEDSL_FIDELITY_REPORT=FILE`` to get the comparison table of every scenario as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from imagedsl.backends import BuildRequest, SecretSource
from imagedsl.backends.dockerfile.buildkit import DockerfileBackend
from imagedsl.loader import load_buildfile
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from tests.support import docker
from tests.support.docker import DockerEngine
from tests.support.fidelity import buildkit_vertices

BUILD_PY = """\
import imagedsl as dsl

src = dsl.context("ctx", ignore=["*.log", "ignored/"])
base = dsl.image({base!r}).run("echo {token} > /token").workdir("/app")
tools = base.run({tool_cmd!r})
deps = (
    base.copy(src.file("requirements.txt"), "/app/")
    .arg("LEVEL", "1")
    .run(
        "cat requirements.txt /scripts/setup.sh > /deps.txt && echo level=$LEVEL >> /deps.txt",
        mounts=[dsl.bind(src.dir("scripts"), "/scripts")],
    )
)
app = (
    deps.copy(src.dir({app_dir!r}), "/app/app", exclude=["*.tmp"])
    .copy(tools.path("/out/tool.txt"), "/app/tool.txt")
    .run({app_cmd!r}, mounts=[dsl.secret("token"), dsl.cache("/cache", id={cache_id!r})])
    .env(MODE={mode!r})
    .run("echo mode=$MODE > /mode && ls /app/app > /listing")
    .cmd("cat", "/mode")
)
other = deps.run({other_cmd!r}, mounts=[dsl.cache("/cache", id={cache_id!r})])
"""

APP_CMD = "sha256sum /run/secrets/token > /token.sha && ls /cache > /cache-listing"
TOOL_CMD = "mkdir -p /out && echo tool > /out/tool.txt"


@attrs.define
class Project:
    """One scenario's build file, context, store and secret."""

    root: Path
    engine: DockerEngine
    params: dict[str, str]
    build_args: list[str] = attrs.field(factory=list)

    @property
    def build_py(self) -> Path:
        return self.root / "build.py"

    @property
    def store(self) -> Path:
        return self.root.parent / "store"

    @property
    def secret(self) -> Path:
        return self.root.parent / "token.secret"

    def write(self) -> None:
        self.build_py.write_text(BUILD_PY.format(**self.params))

    def initial_build(self, target: str = "app") -> None:
        """Build in-process (the starting point, not what is compared)."""
        self.write()
        build_args = dict(a.split("=", 1) for a in self.build_args)
        plan = load_buildfile(self.build_py).plan(
            target, store=Store(self.store), build_args=build_args
        )
        request = BuildRequest(
            build_args=build_args,
            secrets=(SecretSource.parse(f"id=token,src={self.secret}"),),
        )
        DockerfileBackend(self.engine).build(
            plan, request, store=Store(self.store), reporter=Reporter()
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **({"DOCKER_HOST": self.engine.host} if self.engine.host else {})}
        build_args = [f"--build-arg={a}" for a in self.build_args]
        return subprocess.run(
            [sys.executable, "-m", "imagedsl", *args, "--store", str(self.store), *build_args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=600,
        )


def new_project(tmp_path: Path, engine: DockerEngine, busybox_image: str) -> Project:
    """A fresh project whose first step is unique to it."""
    root = tmp_path / "project"
    for directory in ("ctx/app", "ctx/scripts", "ctx/ignored"):
        (root / directory).mkdir(parents=True)
    (root / "ctx" / "requirements.txt").write_text("flask==3.0\n")
    (root / "ctx" / "app" / "main.py").write_text("print('hello')\n")
    (root / "ctx" / "app" / "util.py").write_text("X = 1\n")
    (root / "ctx" / "scripts" / "setup.sh").write_text("echo setup\n")
    project = Project(
        root=root,
        engine=engine,
        params={
            "base": busybox_image,
            "token": uuid.uuid4().hex,
            "tool_cmd": TOOL_CMD,
            "app_dir": "app",
            "app_cmd": APP_CMD,
            "cache_id": f"fidelity-{uuid.uuid4().hex[:12]}",
            "mode": "dev",
            "other_cmd": "echo other > /other",
        },
    )
    project.secret.write_text("first secret value\n")
    return project


# -- edits -------------------------------------------------------------------------------------


def edit_source_file(project: Project) -> None:
    (project.root / "ctx" / "app" / "main.py").write_text("print('hello, world')\n")


def touch_mtime_only(project: Project) -> None:
    for path in (project.root / "ctx").rglob("*"):
        os.utime(path, (2_000_000_000, 2_000_000_000))


def rewrite_same_size_and_mtime(project: Project) -> None:
    path = project.root / "ctx" / "requirements.txt"
    before = path.stat()
    path.write_text("flask==3.1\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size


def change_env(project: Project) -> None:
    project.params["mode"] = "prod"
    project.write()


def change_build_arg(project: Project) -> None:
    project.build_args = ["LEVEL=2"]


def change_run_command(project: Project) -> None:
    project.params["app_cmd"] = APP_CMD + " && echo changed > /changed"
    project.write()


def add_ignored_files(project: Project) -> None:
    (project.root / "ctx" / "debug.log").write_text("noise\n")
    (project.root / "ctx" / "ignored" / "big.bin").write_bytes(os.urandom(4096))
    (project.root / "ctx" / "app" / "scratch.tmp").write_text("excluded by the COPY\n")


def change_base_image(project: Project) -> None:
    project.params["base"] = _OTHER_BASE
    project.write()


def rebuild_upstream_same_output(project: Project) -> None:
    project.params["tool_cmd"] = TOOL_CMD + " && echo rebuilt > /rebuilt"
    project.write()


def change_other_target(project: Project) -> None:
    project.params["other_cmd"] = "echo other, edited > /other"
    project.write()


def change_secret_value(project: Project) -> None:
    project.secret.write_text("a different secret value\n")


def change_cache_contents(project: Project) -> None:
    project.params["other_cmd"] = f"echo {uuid.uuid4().hex} > /cache/written-by-other"
    project.write()
    project.initial_build("other")


def rename_copied_directory(project: Project) -> None:
    (project.root / "ctx" / "app").rename(project.root / "ctx" / "application")
    project.params["app_dir"] = "application"
    project.write()


def edit_bind_mounted_file(project: Project) -> None:
    (project.root / "ctx" / "scripts" / "setup.sh").write_text("echo setup, edited\n")


_OTHER_BASE = "imagedsl-test/docker-backend-fidelity-base:b"

SCENARIOS: list[tuple[str, Callable[[Project], None]]] = [
    ("edit a source file", edit_source_file),
    ("touch mtime only", touch_mtime_only),
    ("rewrite a file with same size and mtime", rewrite_same_size_and_mtime),
    ("change ENV", change_env),
    ("change a --build-arg", change_build_arg),
    ("change a RUN command", change_run_command),
    ("add files the ignore rules exclude", add_ignored_files),
    ("change the base image", change_base_image),
    ("rebuild an upstream stage, identical output", rebuild_upstream_same_output),
    ("change only a stage another target uses", change_other_target),
    ("change a secret's value", change_secret_value),
    ("change a cache mount's contents", change_cache_contents),
    ("rename a copied directory, same files", rename_copied_directory),
    ("edit a bind-mounted context file", edit_bind_mounted_file),
]

#: What the edit should make the plan say, as (status of the steps, how many): a sanity check
#: that each scenario really exercises what its name says.
EXPECTED_MISSES: dict[str, int] = {
    "touch mtime only": 0,
    "add files the ignore rules exclude": 0,
    "change only a stage another target uses": 0,
    "change a secret's value": 0,
    "change a cache mount's contents": 0,
    "rename a copied directory, same files": 0,
}


@pytest.fixture(name="other_base", scope="module")
def fixture_other_base(
    docker_engine: DockerEngine, busybox_image: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A second base image: busybox with one more file."""
    # Built once per machine and kept (like the busybox base): parallel workers share it, so
    # none may remove or rebuild it while another builds on it.
    with docker.machine_lock("fidelity-other-base"):
        present = docker_engine.run("image", "inspect", _OTHER_BASE, check=False)
        if present.returncode != 0:
            context = tmp_path_factory.mktemp("other-base")
            (context / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo b > /base-b\n")
            docker_engine.build(context, "--tag", _OTHER_BASE)
    return _OTHER_BASE


@pytest.fixture(name="report", scope="module")
def fixture_report() -> Iterator[dict[str, Any]]:
    """Comparison tables of all scenarios, written out when asked to."""
    tables: dict[str, Any] = {}
    yield tables
    destination = os.environ.get("IMAGEDSL_FIDELITY_REPORT")
    if destination:
        Path(destination).write_text(json.dumps(tables, indent=2, ensure_ascii=False))


def compare(plan: dict[str, Any], statuses: dict[int, str]) -> list[dict[str, Any]]:
    """One row per step: the plan's status, BuildKit's, and whether they agree."""
    rows = []
    for index, step in enumerate(plan["steps"]):
        status = step["status"]
        buildkit = {"cached": "CACHED", "done": "DONE"}.get(statuses.get(index, ""))
        if buildkit is None:
            # Config steps and FROM scratch make no vertex; a FROM may be shown under a
            # concurrent build's name (BuildKit shares identical vertices between builds).
            assert status == "config" or step["kind"] in ("scratch", "from"), step
            continue
        assert status != "config", step
        if step["kind"] == "from":
            agrees = None
        elif status == "hit":
            agrees = buildkit == "CACHED"
        elif status == "miss":
            agrees = buildkit == "DONE"
        else:
            agrees = buildkit in ("CACHED", "DONE")
        rows.append(
            {
                "step": f"{step['stage']}[{step['index']}]",
                "instruction": step["instruction"],
                "plan": status,
                "buildkit": buildkit,
                "agrees": agrees,
            }
        )
    return rows


@pytest.mark.parametrize(
    ("name", "edit"),
    [pytest.param(name, edit, id=name.replace(" ", "-")) for name, edit in SCENARIOS],
)
def test_plan_predicts_buildkit(
    docker_engine: DockerEngine,
    busybox_image: str,
    other_base: str,
    tmp_path: Path,
    report: dict[str, Any],
    name: str,
    edit: Callable[[Project], None],
) -> None:
    """The plan's hit/miss for every step agrees with BuildKit's CACHED/built after the edit."""
    assert other_base
    for attempt in range(2):
        rows = run_scenario(tmp_path / f"attempt-{attempt}", docker_engine, busybox_image, edit)
        if not cache_was_lost(rows):
            break
    else:
        pytest.fail(
            "BuildKit's cache was emptied during the scenario, twice: is something running "
            "`docker builder prune` on this engine?"
        )
    report[name] = rows
    disagreements = [row for row in rows if row["agrees"] is False]
    assert disagreements == [], json.dumps(rows, indent=1)
    misses = sum(1 for row in rows if row["plan"] == "miss" and row["agrees"] is not None)
    if name in EXPECTED_MISSES:
        assert misses == EXPECTED_MISSES[name], rows
    else:
        assert misses > 0, rows


def run_scenario(
    tmp_path: Path, engine: DockerEngine, busybox_image: str, edit: Callable[[Project], None]
) -> list[dict[str, Any]]:
    """Build, edit, plan, build with plain progress; return the comparison rows."""
    project = new_project(tmp_path, engine, busybox_image)
    project.initial_build()
    edit(project)
    planned = project.cli("plan", f"{project.build_py}:app", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    build_args = dict(a.split("=", 1) for a in project.build_args)
    in_process = load_buildfile(project.build_py).plan(
        "app", store=Store(project.store), build_args=build_args
    )
    assert [s.key for s in in_process.steps] == [s["key"] for s in plan["steps"]]
    built = project.cli(
        "build", f"{project.build_py}:app", "--progress=plain",
        "--secret", f"id=token,src={project.secret}",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    statuses, unclaimed = buildkit_vertices(in_process, built.stderr.splitlines())
    assert [name for name in unclaimed if "] FROM " not in name] == [], unclaimed
    rows = compare(plan, statuses)
    replanned = json.loads(project.cli("plan", f"{project.build_py}:app", "--json").stdout)
    assert replanned["summary"]["miss"] == replanned["summary"]["maybe"] == 0
    return rows


def cache_was_lost(rows: list[dict[str, Any]]) -> bool:
    """Whether BuildKit rebuilt the project's first RUN although nothing it depends on changed:
    only an emptied BuildKit cache (``docker builder prune`` by someone else) does that."""
    first = next(row for row in rows if row["instruction"].startswith("RUN echo "))
    return bool(first["plan"] == "hit" and first["buildkit"] == "DONE")

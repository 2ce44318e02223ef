"""Edit scenarios: the plan predicts BuildKit, and both backends build the same image.

A :class:`Scenario` is a tiny project (a build.py body and context files), one edit, and what
the plan should say about it. :func:`run_scenario` then:

1. builds the project with the docker backend (the starting point, in-process);
2. makes the edit, and plans (every step's status);
3. builds again with BuildKit's plain progress, reads each vertex's ``CACHED``/``DONE`` and
   compares it with the plan, step by step: ``hit`` must be ``CACHED``, ``miss`` must be
   built, ``maybe`` may be either, config steps make no vertex (FROM vertices are listed, not
   compared: BuildKit resolves an engine's base image whatever its cache holds);
4. plans again: every step was recorded, so nothing misses;
5. builds the edited project with the OCI backend and compares the two images: the root
   filesystem file by file (type, mode, owner, content) and the image config, apart from the
   by-nature differences of :func:`tests.support.equivalence.differences`.

Every stage of a scenario starts with a RUN that writes a token unique to the scenario run
(``BASE`` in the body is ``dsl.image(IMAGE).run("echo TOKEN > /token")``), so no other test,
and no earlier run of this one, can lend BuildKit a cache hit the project's ledger does not
know about.

Vertices are mapped to steps by their stage and instruction text
(:class:`imagedsl.backends.dockerfile._vertices.VertexMap`), which the comparison checks: each
instruction vertex BuildKit printed maps to a step with the same keyword.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import attrs
import pytest

from imagedsl.api import Backend, BuildSession
from imagedsl.backends.dockerfile._progress import ProgressParser
from imagedsl.backends.dockerfile._vertices import VertexMap
from imagedsl.backends.dockerfile.buildkit import DockerfileBackend, _old_frontend
from imagedsl.backends.dockerfile.lowering import LoweringError, lower_to_dockerfile
from imagedsl.backends.oci.backend import OCIBackend
from imagedsl.planner import Plan
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from tests.support.docker import DockerEngine
from tests.support.equivalence import differences, export_listing, layout_listing

#: What a scenario's body starts from (before ``BASE`` and friends are replaced).
HEADER = """\
import imagedsl as dsl

src = dsl.context("ctx")
"""

#: The image config fields both backends write and the comparison reads (with the
#: top-level ``author``, which MAINTAINER sets).
CONFIG_FIELDS = (
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Shell",
    "Healthcheck",
    "OnBuild",
)


@attrs.frozen
class Symlink:
    """A context file that is a symlink to ``target``."""

    target: str


@attrs.frozen(kw_only=True)
class Scenario:
    """One edit of one small project, and what the plan should make of it."""

    name: str
    #: build.py after :data:`HEADER`; ``BASE``, ``IMAGE`` and ``TOKEN`` are replaced.
    before: str
    #: build.py after the edit (None: unchanged; the edit is to files, args or secrets).
    after: str | None = None
    #: Context files (under ``ctx/``): path -> text or bytes.
    files: Mapping[str, str | bytes | Symlink] = attrs.field(factory=dict)
    #: Further edits, on the project (files, modes, secrets).
    edit: Callable[[Project], None] | None = None
    target: str = "app"
    build_args: Mapping[str, str] = attrs.field(factory=dict)
    build_args_after: Mapping[str, str] | None = None
    platform: str | None = None
    platform_after: str | None = None
    #: Secrets by id: their values before the edit.
    secrets: Mapping[str, str] = attrs.field(factory=dict)
    #: How many steps (FROM aside) the plan should miss after the edit; None: at least one.
    misses: int | None = None
    #: How many steps the plan should call ``maybe``; None: not checked.
    maybes: int | None = None
    #: Whether to check ``misses`` and ``maybes`` (a random scenario's edit may change
    #: nothing, and nobody wrote down what it should miss: only agreement is checked).
    check_misses: bool = True
    #: RUN mount targets (Docker 20.10 leaves their empty directories in the image).
    mount_points: tuple[str, ...] = ()
    #: Whether to compare the images of the two backends.
    compare_images: bool = True
    #: Setup a scenario needs from its engine, e.g. a feature the engine may lack.
    needs: str | None = None
    #: A difference from BuildKit by nature (docs/dockerfile-backend.md): the scenario is
    #: expected to fail, for this reason.
    known_difference: str | None = None

    def render(self, text: str, image: str, token: str) -> str:
        """The build.py for this scenario's run."""
        base = f"dsl.image({image!r}).run({f'echo {token} > /token'!r})"
        body = text.replace("BASE", base).replace("IMAGE", repr(image)).replace("TOKEN", token)
        return HEADER + body + "\n"


@attrs.define
class Project:
    """A scenario's directory: build.py, ``ctx/``, its store and secrets."""

    root: Path
    scenario: Scenario
    image: str
    token: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    build_args: dict[str, str] = attrs.field(factory=dict)
    platform: str | None = None
    secrets: dict[str, str] = attrs.field(factory=dict)

    @property
    def build_py(self) -> Path:
        return self.root / "build.py"

    @property
    def context(self) -> Path:
        return self.root / "ctx"

    @property
    def store(self) -> Store:
        return Store(self.root.parent / "store")

    def write(self, text: str, image: str | None = None, path: Path | None = None) -> None:
        """Write build.py (or ``path``) from a scenario text; a new mtime each time, so that
        Python never reuses the bytecode of the previous version."""
        target = path or self.build_py
        target.write_text(self.scenario.render(text, image or self.image, self.token))
        stamp = time.time() + len(list(self.root.iterdir())) + 10 * _writes.bump()
        os.utime(target, (stamp, stamp))

    def write_files(self, files: Mapping[str, str | bytes | Symlink]) -> None:
        for name, data in files.items():
            path = self.context / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, Symlink):
                path.unlink(missing_ok=True)
                path.symlink_to(data.target)
            elif isinstance(data, bytes):
                path.write_bytes(data)
            else:
                path.write_text(data)

    def secret_sources(self) -> list[str]:
        sources = []
        for name, value in sorted(self.secrets.items()):
            path = self.root.parent / f"secret-{name}"
            path.write_text(value)
            sources.append(f"id={name},src={path}")
        return sources

    def session(self, build_py: Path | None = None, store: Store | None = None) -> BuildSession:
        return BuildSession(
            build_py or self.build_py,
            self.scenario.target,
            build_args=self.build_args,
            platform=self.platform,
            store=store or self.store,
        )


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> int:
        self.value += 1
        return self.value


_writes = _Counter()


class CapturingReporter(Reporter):
    """Keeps every line of the backend's output (BuildKit's plain progress)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step_output(self, label: str, line: str) -> None:  # noqa: ARG002
        self.lines.append(line)


@attrs.frozen
class Outcome:
    """What one scenario run found."""

    project: Project
    rows: list[dict[str, Any]]
    plan: Plan
    #: BuildResult's counts of steps built and cached (the CLI's summary line).
    built: int
    cached: int
    #: The docker backend's image (its ID).
    image: str


def docker_build(engine: DockerEngine, project: Project) -> tuple[list[str], int, int, str]:
    """Build with the docker backend, plain progress: (output lines, built, cached, image ID).

    The image is not tagged, and so never removed by the tests: Docker 20.10 removing an image
    while BuildKit builds on the same base layers for another worker is asking for trouble."""
    reporter = CapturingReporter()
    session = project.session()
    session.reporter = reporter
    outcome = session.build(
        DockerfileBackend(engine), secrets=project.secret_sources(), progress="plain"
    )
    result = outcome.result
    assert result.image is not None
    return reporter.lines, len(result.built), len(result.cached), result.image


def run_scenario(scenario: Scenario, root: Path, engine: DockerEngine, image: str) -> Outcome:
    """Steps 1-4 of the module docstring; returns the comparison rows."""
    project = Project(root / "project", scenario, image)
    project.context.mkdir(parents=True)
    project.write_files(scenario.files)
    project.build_args = dict(scenario.build_args)
    project.platform = scenario.platform
    project.secrets = dict(scenario.secrets)
    project.write(scenario.before)
    docker_build(engine, project)
    if scenario.after is not None:
        project.write(scenario.after)
    if scenario.build_args_after is not None:
        project.build_args = dict(scenario.build_args_after)
    if scenario.platform_after is not None:
        project.platform = scenario.platform_after
    if scenario.edit is not None:
        scenario.edit(project)
    planned = project.session().plan()
    lines, built, cached, image_id = docker_build(engine, project)
    rows = compare(planned, lines)
    replanned = project.session().plan()
    unsettled = [s.instruction for s in replanned.steps if s.status.value in ("miss", "maybe")]
    assert unsettled == [], f"not recorded after the build: {unsettled}"
    return Outcome(
        project=project, rows=rows, plan=planned, built=built, cached=cached, image=image_id
    )


def buildkit_vertices(plan: Plan, lines: Sequence[str]) -> tuple[dict[int, str], list[str]]:
    """Plan step -> BuildKit's final status for it, and the instruction vertices no step
    claimed (read from the plain progress with the backend's own mapping)."""
    lowered = lower_to_dockerfile(plan)
    parser = ProgressParser()
    mapping = VertexMap(lowered.expected_vertices, labelled=len(lowered.expected_vertices) > 1)
    for line in lines:
        parsed = parser.feed(line)
        vertex = parsed.vertex
        if parsed.kind == "name" and vertex is not None and vertex.number_in_stage is not None:
            mapping.add(vertex.number, vertex.stage, vertex.number_in_stage, vertex.instruction)
    statuses: dict[int, str] = {}
    unclaimed: list[str] = []
    keywords = {v.step: v.keyword for stage in lowered.expected_vertices.values() for v in stage}
    for number, vertex in parser.vertices.items():
        if vertex.number_in_stage is None:
            continue
        index = mapping.step_of(number)
        if index is None:
            unclaimed.append(vertex.name)
            continue
        assert vertex.instruction.split()[0] == keywords[index], (vertex.name, index)
    for index, number in mapping.vertex_of_step().items():
        statuses[index] = parser.vertices[number].status
    by_key = {plan.steps[i].key: s for i, s in statuses.items()}
    for index in keywords:
        if index not in statuses and plan.steps[index].key in by_key:
            statuses[index] = by_key[plan.steps[index].key]
    return statuses, unclaimed


def compare(plan: Plan, lines: Sequence[str]) -> list[dict[str, Any]]:
    """One row per step that makes a vertex: the plan's status, BuildKit's, and whether they
    agree (None where they are not compared)."""
    statuses, unclaimed = buildkit_vertices(plan, lines)
    # BuildKit shares identical vertices between concurrent builds, under the name the first
    # build gave them: a base image's FROM may come labelled by another build's Dockerfile.
    unclaimed = [name for name in unclaimed if " FROM " not in f" {name.partition('] ')[2]}"]
    assert unclaimed == [], f"BuildKit vertices no step claimed: {unclaimed}"
    rows = []
    for index, step in enumerate(plan.steps):
        status = step.status.value
        buildkit = statuses.get(index)
        if buildkit is None:
            if status == "config" or step.kind == "scratch":
                continue
            if step.kind == "from":
                continue  # named by a concurrent build: see above
            # BuildKit makes no vertex for a WORKDIR that resolves to / (no work either way).
            assert step.kind == "workdir", f"no BuildKit vertex for {step.instruction}"
            agrees = None
        elif step.kind == "from":
            agrees = None
        elif status == "hit":
            agrees = buildkit == "cached"
        elif status == "miss":
            agrees = buildkit == "done"
        else:
            agrees = buildkit in ("cached", "done")
        rows.append(
            {
                "step": f"{step.stage}[{step.index}]",
                "kind": step.kind,
                "instruction": step.instruction,
                "plan": status,
                "buildkit": buildkit,
                "agrees": agrees,
            }
        )
    return rows


def cache_was_lost(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether BuildKit rebuilt a token RUN the plan calls a hit: only an emptied BuildKit
    cache (``docker builder prune`` by someone else) does that."""
    return any(
        row["instruction"].endswith("> /token") and row["plan"] == "hit"
        and row["buildkit"] == "done"
        for row in rows
    )  # fmt: skip


def check_outcome(scenario: Scenario, outcome: Outcome) -> None:
    """Plan and BuildKit agree on every step, the edit did what the scenario says, and the
    build's summary counts what BuildKit did."""
    rows = outcome.rows
    disagreements = [row for row in rows if row["agrees"] is False]
    assert disagreements == [], json.dumps(rows, indent=1)
    misses = sum(1 for row in rows if row["plan"] == "miss" and row["kind"] != "from")
    maybes = sum(1 for row in rows if row["plan"] == "maybe")
    if scenario.check_misses:
        if scenario.misses is None:
            assert misses > 0, json.dumps(rows, indent=1)
        else:
            assert misses == scenario.misses, json.dumps(rows, indent=1)
        if scenario.maybes is not None:
            assert maybes == scenario.maybes, json.dumps(rows, indent=1)
    layer_rows = [row for row in rows if row["kind"] != "from" and row["buildkit"]]
    assert outcome.built == sum(1 for row in layer_rows if row["buildkit"] == "done"), rows
    assert outcome.cached == sum(1 for row in layer_rows if row["buildkit"] == "cached"), rows


# -- the two backends' images ---------------------------------------------------------------------


def compare_images(
    engine: DockerEngine, outcome: Outcome, docker_image: str, oci_image: str, oci_store: Store
) -> None:
    """Build the edited project with the OCI backend; assert the same files and config as
    the docker backend's image."""
    project = outcome.project
    scenario = project.scenario
    build_py = project.root / "build_oci.py"
    text = scenario.after if scenario.after is not None else scenario.before
    project.write(text, image=oci_image, path=build_py)
    layout = project.root.parent / "layout"
    project.session(build_py, store=oci_store).build(
        cast("Backend", OCIBackend(compression="none")),
        output=f"oci:{layout}:app",
        secrets=project.secret_sources(),
    )
    docker = export_listing(engine, docker_image, project.root.parent)
    ours = layout_listing(layout, "app")
    found = differences(docker, ours, mount_points=scenario.mount_points)
    assert found == {}, found
    assert docker_config(engine, docker_image) == layout_config(layout, "app")


def docker_config(engine: DockerEngine, image: str) -> dict[str, Any]:
    """The config fields of an engine's image that both backends write."""
    inspected = json.loads(engine.run("image", "inspect", "--format", "{{json .}}", image).stdout)
    config = inspected.get("Config") or {}
    fields = {field: _empty_as_none(config.get(field)) for field in CONFIG_FIELDS}
    return {**fields, "author": _empty_as_none(inspected.get("Author"))}


def layout_config(layout: Path, tag: str) -> dict[str, Any]:
    """The config fields of an image in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        m
        for m in index["manifests"]
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag
    )

    def blob(digest: str) -> dict[str, Any]:
        data = (layout / "blobs" / "sha256" / digest.partition(":")[2]).read_bytes()
        loaded: dict[str, Any] = json.loads(data)
        return loaded

    image = blob(blob(entry["digest"])["config"]["digest"])
    config = image.get("config") or {}
    fields = {field: _empty_as_none(config.get(field)) for field in CONFIG_FIELDS}
    return {**fields, "author": _empty_as_none(image.get("author"))}


def _empty_as_none(value: object) -> object:
    return None if value in (None, "", [], {}) else value


@attrs.define
class FidelityRun:
    """The ``fidelity`` fixture: runs a scenario and checks both comparisons."""

    engine: DockerEngine
    image: str
    oci_store: Path
    root: Path

    def check(self, scenario: Scenario) -> Outcome | None:
        """Run ``scenario`` (again, once, if someone emptied BuildKit's cache meanwhile)."""
        if scenario.needs is not None and not self._engine_has(scenario.needs):
            # BuildKit here cannot judge it: the build must be refused before any work,
            # naming the feature (never built without it, which would mean another build).
            with pytest.raises(LoweringError) as refused:
                run_scenario(scenario, self.root / "refused", self.engine, self.image)
            assert scenario.needs in refused.value.problem
            return None
        for attempt in range(2):
            root = self.root / f"attempt-{attempt}"
            outcome = run_scenario(scenario, root, self.engine, self.image)
            if not cache_was_lost(outcome.rows):
                break
        else:
            raise AssertionError(
                "BuildKit's cache was emptied during the scenario, twice: is something running "
                "`docker builder prune` on this engine?"
            )
        check_outcome(scenario, outcome)
        if scenario.compare_images:
            compare_images(
                self.engine,
                outcome,
                outcome.image,
                f"docker-daemon:{self.image}",
                Store(self.oci_store),
            )
        return outcome

    def _engine_has(self, feature: str) -> bool:
        """Whether the engine's Dockerfile frontend accepts ``feature``, as the backend
        decides it (Docker 20.10's built-in one lacks the Dockerfile 1.4 additions, unless
        buildx brings a newer one)."""
        del feature  # every feature a scenario needs today came with Dockerfile 1.4
        return not _old_frontend(self.engine)


def tar_bytes(files: Mapping[str, bytes]) -> bytes:
    """A small uncompressed tar of ``files`` (fixed mtimes and owners), for ADD scenarios."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_600_000_000
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def scenario_params(scenarios: Sequence[Scenario]) -> list[Any]:
    """``pytest.param`` per scenario, with its name as the id."""
    names = [s.name for s in scenarios]
    assert len(set(names)) == len(names), "scenario names must be unique"
    return [
        pytest.param(
            s,
            id=s.name.replace(" ", "-"),
            marks=[pytest.mark.xfail(reason=s.known_difference, strict=True)]
            if s.known_difference
            else [],
        )
        for s in scenarios
    ]

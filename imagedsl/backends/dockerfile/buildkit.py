"""The ``docker`` backend: build a lowered Dockerfile with BuildKit and record what it built.

:class:`DockerfileBackend` lowers the plan (:mod:`imagedsl.backends.dockerfile.lowering`),
writes the context into the store's pool of staged trees, runs ``docker buildx build`` or
``docker build`` with BuildKit, streams its progress
(:mod:`imagedsl.backends.dockerfile._progress`) and maps BuildKit's vertices back to plan
steps. It records in the ledger every step BuildKit completed (built or cached), so that the
next plan shows hits; a failed build records only the steps that completed, and reports the
failing step at its line of ``build.py``.

A step that needs a Dockerfile feature the engine's built-in frontend is known to lack is
refused before the build starts, naming the step (see docs/dockerfile-backend.md).

A no-op is cheap: the engine found last time is reused (``ENGINES`` in the store), and when
every step is a hit and the engine still holds the very image this lowered build made last
time under every asked tag (``DOCKER_IMAGES``), BuildKit is not called at all (unless
``--progress plain`` asks for BuildKit's own output).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from imagedsl.backends import BuildRequest, BuildRequestError, BuildResult, read_secrets
from imagedsl.backends._masking import masked, masks_for
from imagedsl.backends.dockerfile._progress import ProgressParser, Vertex
from imagedsl.backends.dockerfile._staging import ContextPool
from imagedsl.backends.dockerfile._vertices import VertexMap
from imagedsl.backends.dockerfile.lowering import (
    BUILTIN_FRONTEND_20_10,
    DOCKERFILE_1_4,
    DockerfileFeatures,
    LoweredDockerfile,
    LoweringError,
    lower_to_dockerfile,
)
from imagedsl.errors import BuildFailure, ImageDSLError, SourceLocation, string_tuple
from imagedsl.planner import Plan, PlannedStep, PlanStatus, record_step
from imagedsl.steps import LAYER_KINDS, FromImage
from imagedsl.store import Store, StoreArea

if TYPE_CHECKING:
    from collections.abc import Iterator

    from imagedsl.backends.engine import DockerEngine
    from imagedsl.reporting import Reporter

#: Docker 20.10's built-in Dockerfile frontend (BuildKit 0.8) lacks the features a lowered
#: Dockerfile's :class:`~imagedsl.backends.dockerfile.lowering.Requirement` names; engines
#: older than 23.0 (the first with a newer built-in frontend) are refused up front when a step
#: needs one, unless buildx brings its own BuildKit.
_FIRST_ENGINE_WITH_NEWER_FRONTEND: Final = 23
_PARSE_ERROR: Final = re.compile(r"dockerfile parse error (?:on )?line (?P<line>\d+): (?P<what>.*)")


@attrs.define
class BuildFailedError(BuildFailure):
    """BuildKit failed; ``instruction`` and ``location`` name the step when it is known."""

    message: str
    instruction: str | None = attrs.field(default=None, kw_only=True)
    output: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=string_tuple)
    location: SourceLocation | None = attrs.field(default=None, kw_only=True)

    def __str__(self) -> str:
        head = f"{self.instruction} failed: {self.message}" if self.instruction else self.message
        if not self.output:
            return head
        return head + "\n" + "\n".join(f"  | {line}" for line in self.output)


class DockerfileBackend:
    """Builds a plan with BuildKit through the docker client (the ``docker`` backend)."""

    name = "docker"
    #: Images live in the engine, not in the store: nothing to push or share from here.
    layer_media_types: frozenset[str] = frozenset()

    def __init__(self, engine: DockerEngine | None = None) -> None:
        self._engine = engine

    def engine(self, store: Store) -> DockerEngine:
        """The engine builds go to (found once per store's engine cache, unless given)."""
        from imagedsl.backends.engine import require_docker

        if self._engine is None:
            self._engine = require_docker(cache=store.area(StoreArea.ENGINES))
        return self._engine

    def build(
        self, plan: Plan, request: BuildRequest, *, store: Store, reporter: Reporter
    ) -> BuildResult:
        """Lower ``plan``, stage its context, build it, and record what BuildKit completed."""
        from imagedsl.backends.engine import require_docker

        secrets = request.secrets
        masks = masks_for(read_secrets(secrets).values())  # unreadable: refused here
        engine = self._engine or require_docker(cache=store.area(StoreArea.ENGINES))
        lowered = lower_to_dockerfile(plan, features=_features(engine))
        lowered, build_network = _for_engine(plan, lowered, engine)
        _check_engine(plan, lowered, engine)
        if engine.local:
            from imagedsl.backends.emulation import check_emulation

            check_emulation(plan)  # this machine's kernel runs BuildKit's RUN steps
        output_kind, archive, output_tag = _parse_output(request.output)
        tags = [*request.tags, *([output_tag] if output_tag else [])]
        made = _MadeImages(store, engine, plan, lowered, request, tags)
        if output_kind == "docker" and request.progress != "plain":
            # (--progress plain asks for BuildKit's own account of every step: it runs.)
            known = made.still_there()
            if known is not None:
                return _nothing_to_do(plan, reporter, tags, known)
        _check_base_triggers(plan, engine)
        pool = ContextPool(store.area(StoreArea.CONTEXTS))
        pool.stage(lowered.trees)
        with tempfile.TemporaryDirectory(prefix="imagedsl-docker-") as scratch:
            dockerfile = Path(scratch, "Dockerfile")
            dockerfile.write_text(lowered.text, encoding="utf-8")
            iidfile = Path(scratch, "iid")
            argv = [
                engine.client,
                *engine.build_command,
                "--progress=plain",
                "--file", str(dockerfile),
                "--iidfile", str(iidfile),
                "--target", lowered.target,
            ]  # fmt: skip
            if engine.buildx:
                argv.append("--load")
                argv += [f"--allow={name}" for name in sorted(request.allow)]
            if build_network is not None:
                argv += ["--network", build_network]
            for tag in tags:
                argv += ["--tag", tag]
            for name, value in request.build_args.items():
                argv += ["--build-arg", f"{name}={value}"]
            if request.platform:
                argv += ["--platform", request.platform]
            env = dict(engine.env)
            for secret in secrets:
                if secret.path is not None:
                    argv += ["--secret", f"id={secret.id},src={secret.host_path}"]
                else:
                    assert secret.env is not None
                    argv += ["--secret", f"id={secret.id},env={secret.env}"]
                    env[secret.env] = os.environ[secret.env]
            argv.append(str(pool.root))
            run = _BuildRun(plan, lowered, reporter, request.progress, masks)
            try:
                returncode = run.execute(argv, env)
            except BaseException:
                # Interrupted: what BuildKit finished is in its cache, so it is a hit.
                _record(store, plan, run)
                raise
            image_id = iidfile.read_text().strip() if iidfile.is_file() else None
        _record(store, plan, run, succeeded=returncode == 0)
        if returncode != 0:
            raise run.failure(engine)
        pool.prune(keep=[tree.name for tree in lowered.trees])
        if image_id:
            made.remember(image_id)
        image = tags[0] if tags else image_id
        if output_kind == "docker-archive":
            assert archive is not None
            engine.run("save", "--output", archive, image or "")
        return BuildResult(
            built=tuple(run.labels(built=True)),
            cached=tuple(run.labels(built=False)),
            image=image,
            digest=image_id,
        )

    def build_platforms(
        self,
        plan_for: Callable[[str], Plan],
        platforms: Sequence[str],
        request: BuildRequest,
        *,
        store: Store,
        reporter: Reporter,
    ) -> BuildResult:
        """Several platforms: see :mod:`imagedsl.backends.dockerfile.platforms`."""
        from imagedsl.backends.dockerfile.platforms import build_platforms

        return build_platforms(self, plan_for, platforms, request, store=store, reporter=reporter)


def _record(store: Store, plan: Plan, run: _BuildRun, *, succeeded: bool = False) -> None:
    durations = run.durations()
    for index in run.completed_steps(succeeded=succeeded):
        record_step(store, plan.steps[index], seconds=durations.get(index))


class _MadeImages:
    """The image id a lowered build made last time on this engine (the store's
    ``DOCKER_IMAGES`` area), to skip BuildKit when nothing changed and the image is there."""

    def __init__(
        self,
        store: Store,
        engine: DockerEngine,
        plan: Plan,
        lowered: LoweredDockerfile,
        request: BuildRequest,
        tags: Sequence[str],
    ) -> None:
        self.engine = engine
        self.plan = plan
        self.tags = tags
        what = {
            "v": 1,
            "dockerfile": lowered.text,
            "target": lowered.target,
            "keys": [step.key for step in plan.steps],
            "build_args": sorted(request.build_args.items()),
            "platform": request.platform,
            "secrets": sorted(secret.id for secret in request.secrets),
            "tags": sorted(tags),
            "engine": [engine.host, engine.client, engine.buildx, engine.server_version],
        }
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
        self.path = store.area(StoreArea.DOCKER_IMAGES) / f"{digest}.json"

    def still_there(self) -> str | None:
        """The image id, when every step is a hit and the engine has that image under every
        tag (or at all, without tags); else None."""
        if any(s.status not in (PlanStatus.HIT, PlanStatus.CONFIG) for s in self.plan.steps):
            return None
        try:
            image_id = json.loads(self.path.read_bytes())["id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(image_id, str):
            return None
        from imagedsl.backends.engine import image_ids

        names = list(self.tags) or [image_id]
        return image_id if image_ids(self.engine, names) == [image_id] * len(names) else None

    def remember(self, image_id: str) -> None:
        from imagedsl.store import atomic_write

        with contextlib.suppress(OSError):  # a cache: losing it costs one BuildKit no-op
            atomic_write(self.path, json.dumps({"id": image_id}).encode())


def _nothing_to_do(
    plan: Plan, reporter: Reporter, tags: Sequence[str], image_id: str
) -> BuildResult:
    labels = [f"{s.stage}[{s.index}]" for s in plan.steps if s.kind in LAYER_KINDS]
    for label in labels:
        reporter.step_finished(label, "cached")
    return BuildResult(
        built=(), cached=tuple(labels), image=tags[0] if tags else image_id, digest=image_id
    )


def _old_frontend(engine: DockerEngine) -> bool:
    major = _major(engine.server_version)
    return not engine.buildx and major is not None and major < _FIRST_ENGINE_WITH_NEWER_FRONTEND


def _for_engine(
    plan: Plan, lowered: LoweredDockerfile, engine: DockerEngine
) -> tuple[LoweredDockerfile, str | None]:
    """The Dockerfile for this engine, and the ``--network`` of the whole build: on an
    engine whose frontend lacks ``RUN --network``, RUN steps that all ask for no network say
    it once, for the build (``docker build --network=none``)."""
    if (
        lowered.build_network is not None
        and _old_frontend(engine)
        and any(r.feature == "RUN --network" for r in lowered.requirements)
    ):
        relowered = lower_to_dockerfile(plan, features=_features(engine), run_network_flags=False)
        return relowered, lowered.build_network
    return lowered, None


def _check_engine(plan: Plan, lowered: LoweredDockerfile, engine: DockerEngine) -> None:
    """Refuse up front a feature the engine's built-in Dockerfile frontend is known to lack."""
    if not lowered.requirements or engine.buildx:
        return
    major = _major(engine.server_version)
    if major is None or major >= _FIRST_ENGINE_WITH_NEWER_FRONTEND:
        return  # newer engines: BuildKit itself says no if it must (mapped to the step)
    requirement = lowered.requirements[0]
    step = plan.steps[requirement.step]
    raise LoweringError(
        step.instruction,
        f"needs {requirement.feature}, which the Dockerfile frontend built into Docker engine "
        f"{engine.server_version} does not accept (it has RUN --mount and COPY --chmod); "
        "build on Docker 23 or later, with docker buildx, or without this option",
        step.location,
    )


def _check_base_triggers(plan: Plan, engine: DockerEngine) -> None:
    """Refuse a base the engine holds whose ONBUILD triggers BuildKit would run against the
    staged context (COPY, ADD) or a --build-arg (ARG), which no key covers, as the OCI
    backend refuses it. (A base the engine pulls during the build is not seen here.)"""
    from imagedsl.backends.engine import inspect_images
    from imagedsl.backends.oci.triggers import check_reads_inside
    from imagedsl.bases import engine_name

    bases = {
        engine_name(step.node.step.image): step
        for step in plan.steps
        if isinstance(step.node.step, FromImage)
        and step.node.step.image.transport in ("registry", "docker-daemon")
    }
    names = list(bases)
    for name, found in zip(names, inspect_images(engine, names), strict=True):
        config = (found or {}).get("Config") or {}
        triggers = config.get("OnBuild") if isinstance(config, dict) else None
        check_reads_inside(name, triggers, bases[name].node.step.location)


def _features(engine: DockerEngine) -> DockerfileFeatures:
    """What the engine's Dockerfile frontend accepts beyond Docker 20.10's built-in one."""
    major = _major(engine.server_version)
    if engine.buildx or (major is not None and major >= _FIRST_ENGINE_WITH_NEWER_FRONTEND):
        return DOCKERFILE_1_4
    return BUILTIN_FRONTEND_20_10


def _major(version: str) -> int | None:
    match = re.match(r"(\d+)\.", version)
    return int(match.group(1)) if match else None


def _parse_output(output: str | None) -> tuple[str, str | None, str | None]:
    """(kind, archive path, tag) of ``--output``: the engine's image store or an archive."""
    if output is None:
        return "docker", None, None
    kind, _, rest = output.partition(":")
    if kind == "docker":
        return "docker", None, rest or None
    if kind == "docker-archive" and rest:
        path, _, tag = rest.partition(":")
        return "docker-archive", path, tag or None
    raise BuildRequestError(
        f"--output {output!r}: the docker backend loads the image into the engine "
        "(docker[:TAG]) or saves it as docker-archive:FILE[:TAG]; "
        "use --backend oci for OCI layouts and archives"
    )


class _BuildRun:
    """One ``docker build``: streams its progress and maps vertices back to plan steps."""

    def __init__(
        self,
        plan: Plan,
        lowered: LoweredDockerfile,
        reporter: Reporter,
        progress: str,
        masks: Sequence[str] = (),
    ) -> None:
        self.plan = plan
        #: Secret values, replaced by ``****`` in every line relayed or kept (BuildKit's own
        #: output does not mask them).
        self.masks = masks
        self.lowered = lowered
        self.reporter = reporter
        self.progress = progress
        self.masks = masks
        self.parser = ProgressParser()
        self.vertex_map = VertexMap(
            lowered.expected_vertices, labelled=len(lowered.expected_vertices) > 1
        )

    def execute(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
        with subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        ) as process:
            assert process.stdout is not None
            try:
                for raw in process.stdout:
                    self._line(masked(raw.rstrip("\n"), self.masks))
                return process.wait()
            except BaseException:
                # Ctrl-C: let the client cancel the solve (it does on SIGINT), then go.
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                raise

    def _line(self, line: str) -> None:
        line = masked(line, self.masks)
        parsed = self.parser.feed(line)
        vertex = parsed.vertex
        if parsed.kind == "name" and vertex is not None:
            position = vertex.number_in_stage
            if position is not None:
                self.vertex_map.add(vertex.number, vertex.stage, position, vertex.instruction)
        index = self._step_of(vertex)
        label = "buildkit" if index is None else self._label(index)
        if index is not None and vertex is not None:
            if parsed.kind == "name":
                self.reporter.step_started(label)
            elif parsed.kind == "status":
                self.reporter.step_finished(label, _REPORTED.get(vertex.status, vertex.status))
        if self.progress == "quiet":
            return
        if self.progress != "plain" and parsed.kind == "progress" and parsed.text.startswith("sha"):
            return
        self.reporter.step_output(label, line)

    def _step_of(self, vertex: Vertex | None) -> int | None:
        return None if vertex is None else self.vertex_map.step_of(vertex.number)

    def _label(self, index: int) -> str:
        step = self.plan.steps[index]
        return f"{step.stage}[{step.index}]"

    def vertex_status(self) -> dict[int, str]:
        """Plan step index -> the final status of its vertex (steps BuildKit showed)."""
        statuses: dict[int, str] = {}
        for index, number in sorted(self.vertex_map.vertex_of_step().items()):
            statuses[index] = self.parser.vertices[number].status
        # BuildKit shows one vertex for identical operations: share it among equal keys.
        by_key = {self.plan.steps[i].key: s for i, s in statuses.items()}
        for index in self.lowered.vertices:
            if index not in statuses and self.plan.steps[index].key in by_key:
                statuses[index] = by_key[self.plan.steps[index].key]
        return statuses

    def durations(self) -> dict[int, float]:
        """Plan step index -> seconds BuildKit took to make it (steps made now only)."""
        durations = {}
        for index, number in self.vertex_map.vertex_of_step().items():
            vertex = self.parser.vertices[number]
            if vertex.status == "done" and vertex.seconds is not None:
                durations[index] = vertex.seconds
        return durations

    def completed_steps(self, *, succeeded: bool = False) -> list[int]:
        """Steps whose results exist now: after a successful build, every step; else the
        completed vertices, everything they stand on, and the steps that make no vertex
        (config steps, FROM scratch) on top of those."""
        if succeeded:
            return list(range(len(self.plan.steps)))
        nodes = [step.node for step in self.plan.steps]
        done = {i for i, status in self.vertex_status().items() if status in ("cached", "done")}
        stack = list(done)
        while stack:
            node = nodes[stack.pop()]
            for dep in (*node.deps, *([node.parent] if node.parent is not None else [])):
                if dep not in done:
                    done.add(dep)
                    stack.append(dep)
        for node in nodes:  # topological order: a config step's parent is decided first
            if node.index in done or node.index in self.lowered.vertices:
                continue
            needs = {*node.deps, *([node.parent] if node.parent is not None else [])}
            if needs <= done:
                done.add(node.index)
        return sorted(done)

    def labels(self, *, built: bool) -> Iterator[str]:
        statuses = self.vertex_status()
        for index, status in sorted(statuses.items()):
            if (
                self.plan.steps[index].kind not in LAYER_KINDS
                or self.plan.steps[index].node.is_config
            ):
                continue
            if (status == "done") == built and status in ("done", "cached"):
                yield self._label(index)

    def failure(self, engine: DockerEngine) -> ImageDSLError:
        """The error to raise for a failed build, at the failing step when known."""
        vertex = self.parser.failed()
        if vertex is not None:
            index = self._step_of(vertex)
            step: PlannedStep | None = None if index is None else self.plan.steps[index]
            return BuildFailedError(
                vertex.error or "BuildKit reported an error",
                instruction=step.instruction if step else vertex.name,
                output=vertex.output[-15:],
                location=step.location if step else None,
            )
        for line in reversed(self.parser.build_lines):
            match = _PARSE_ERROR.search(line)
            if match is None:
                continue
            index = self.lowered.step_at_line(int(match["line"]))
            if index is not None:
                step = self.plan.steps[index]
                return LoweringError(
                    step.instruction,
                    f"the Dockerfile frontend of Docker engine {engine.server_version} rejects "
                    f"it: {match['what']}",
                    step.location,
                )
        tail = [line for line in self.parser.build_lines if line.strip()][-10:]
        return BuildFailedError(
            f"{engine.describe()} failed", output=tail or ["(no output from the docker client)"]
        )


_REPORTED: Final = {"done": "built", "cached": "cached", "error": "failed"}

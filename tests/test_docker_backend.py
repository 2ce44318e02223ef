"""The docker backend against a real engine: builds, records, failures, secrets, outputs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl import api
from imagedsl.backends import BuildRequest, BuildRequestError, SecretSource
from imagedsl.backends.dockerfile._progress import CACHED, DONE, ERROR, ProgressParser
from imagedsl.backends.dockerfile._staging import POOL_MAX_AGE, ContextPool
from imagedsl.backends.dockerfile.buildkit import BuildFailedError, DockerfileBackend
from imagedsl.backends.dockerfile.lowering import (
    LoweringError,
    lower_to_dockerfile,
    write_build_dir,
)
from imagedsl.buildstate import expand
from imagedsl.planner import PlanStatus
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from tests.support.docker import PINNED_ENGINE, DockerEngine, expect_engine

RESOURCES = Path(__file__).parent / "resources" / "docker"


class Recorder(Reporter):
    """Keeps what a backend reports."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.finished: dict[str, str] = {}

    def step_output(self, label: str, line: str) -> None:  # noqa: ARG002 - the hook's signature
        self.lines.append(line)

    def step_finished(self, label: str, status: str) -> None:
        self.finished[label] = status


@pytest.fixture(name="tag")
def fixture_tag(docker_engine: DockerEngine) -> Iterator[str]:
    """A unique image tag in this backend's namespace, removed afterwards."""
    tag = f"imagedsl-test/docker-backend-{uuid.uuid4().hex[:12]}:latest"
    yield tag
    docker_engine.run("image", "rm", "--force", tag, check=False)


@pytest.fixture(name="project")
def fixture_project(tmp_path: Path) -> Path:
    """A small context directory."""
    root = tmp_path / "project"
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.txt").write_text("main\n")
    (root / "requirements.txt").write_text("flask\n")
    (root / "notes.log").write_text("ignored\n")
    return root


def run_cli(
    *args: str, engine: DockerEngine, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m imagedsl ARGS`` against the test engine."""
    full_env = {
        **os.environ,
        **({"DOCKER_HOST": engine.host} if engine.host else {}),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "imagedsl", *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
        timeout=600,
    )


def test_build_records_steps_and_the_next_plan_hits(
    docker_engine: DockerEngine, busybox_image: str, project: Path, tmp_path: Path, tag: str
) -> None:
    """After a build every step is a hit, and the image holds what the plan described."""
    src = dsl.context(project, ignore=["*.log"])
    token = uuid.uuid4().hex
    builder = dsl.image(busybox_image).run(f"mkdir -p /out && echo {token} > /out/token")
    app = (
        dsl.image(busybox_image)
        .workdir("/app")
        .copy(src.file("requirements.txt"), ".")
        .copy(src.dir("app"), "app")
        .copy(builder.path("/out/token"), "/token")
        .env(GREETING="hello world")
        .run("cat requirements.txt app/main.txt /token > /summary")
        .cmd("cat", "/summary")
    )
    named = {"builder": builder, "app": app}
    store = Store(tmp_path / "store")
    plan = api.plan(named, "app", store=store)
    assert PlanStatus.HIT not in {s.status for s in plan.steps if s.kind != "from"}
    recorder = Recorder()
    result = DockerfileBackend(docker_engine).build(
        plan, BuildRequest(tags=(tag,)), store=store, reporter=recorder
    )
    assert result.image == tag
    assert result.digest is not None
    assert result.digest.startswith("sha256:")
    assert "app[6]" in result.built
    again = api.plan(named, "app", store=store)
    assert {s.status for s in again.steps} <= {PlanStatus.HIT, PlanStatus.CONFIG}
    ran = docker_engine.run("run", "--rm", tag)
    assert ran.stdout == f"flask\nmain\n{token}\n"
    assert any("[app 6/6] RUN cat requirements.txt" in line for line in recorder.lines)
    assert recorder.finished["app[6]"] == "built"
    run_step = next(s for s in again.steps if s.instruction.startswith("RUN cat"))
    run_record = store.get(run_step.key)
    assert run_record is not None
    assert isinstance(run_record.outputs.get("seconds"), float)  # BuildKit's DONE time


def test_cli_build_streams_plain_progress_and_plan_shows_hits(
    docker_engine: DockerEngine, busybox_image: str, project: Path, tmp_path: Path, tag: str
) -> None:
    """``imagedsl build --progress=plain`` prints BuildKit's progress; ``plan`` then hits."""
    (project / "build.py").write_text(
        textwrap.dedent(
            f"""
            import imagedsl as dsl
            src = dsl.context(".", ignore=["*.log", "build.py"])
            app = (
                dsl.image({busybox_image!r})
                .arg("FLAVOUR", "plain")
                .copy(src.dir("app"), "/app")
                .run("echo $FLAVOUR {uuid.uuid4().hex} > /flavour")
            )
            """
        )
    )
    store = str(tmp_path / "store")
    spec = f"{project}/build.py:app"
    built = run_cli(
        "build", spec, "--store", store, "-t", tag, "--progress", "plain",
        "--build-arg", "FLAVOUR=spicy", engine=docker_engine,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "#" in built.stderr
    assert "[3/3] RUN echo spicy" in built.stderr  # one stage: BuildKit shows no name
    assert "built " in built.stderr
    assert docker_engine.run("run", "--rm", tag, "cat", "/flavour").stdout.startswith("spicy ")
    planned = run_cli(
        "plan", spec, "--store", store, "--json", "--build-arg", "FLAVOUR=spicy",
        engine=docker_engine,
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    summary = json.loads(planned.stdout)["summary"]
    assert summary["miss"] == summary["maybe"] == 0
    other_value = run_cli(
        "plan", spec, "--store", store, "--json", "--build-arg", "FLAVOUR=mild",
        engine=docker_engine,
    )  # fmt: skip
    assert json.loads(other_value.stdout)["summary"]["miss"] == 1


def test_failed_run_is_reported_at_its_line_and_records_only_completed_steps(
    docker_engine: DockerEngine, busybox_image: str, project: Path, tmp_path: Path
) -> None:
    """A failing RUN names build.py and its line; steps after it are not recorded."""
    token = uuid.uuid4().hex
    (project / "build.py").write_text(
        textwrap.dedent(
            f"""\
            import imagedsl as dsl
            first = dsl.image({busybox_image!r}).run("echo {token} > /ok")
            broken = first.run("echo about to fail; exit 3")
            after = broken.run("echo never")
            """
        )
    )
    store = str(tmp_path / "store")
    spec = f"{project}/build.py:after"
    failed = run_cli("build", spec, "--store", store, "--progress", "quiet", engine=docker_engine)
    assert failed.returncode == 1
    assert "build.py:3: RUN echo about to fail; exit 3 failed" in failed.stderr
    assert "exit code: 3" in failed.stderr
    assert "| about to fail" in failed.stderr  # the step's own output, even when quiet
    planned = run_cli("plan", spec, "--store", store, "--json", engine=docker_engine)
    rows = {row["instruction"]: row["status"] for row in json.loads(planned.stdout)["steps"]}
    assert rows[f"RUN echo {token} > /ok"] == "hit"
    assert rows["RUN echo about to fail; exit 3"] == "miss"
    assert rows["RUN echo never"] == "miss"


def test_interrupted_build_records_what_completed(
    docker_engine: DockerEngine, busybox_image: str, project: Path, tmp_path: Path
) -> None:
    """Ctrl-C during a long RUN: exit 130, the steps BuildKit finished are hits, not the rest."""
    token = uuid.uuid4().hex
    (project / "build.py").write_text(
        textwrap.dedent(
            f"""\
            import imagedsl as dsl
            app = dsl.image({busybox_image!r}).run("echo {token} > /quick").run("sleep 60")
            """
        )
    )
    store = str(tmp_path / "store")
    env = {**os.environ, **({"DOCKER_HOST": docker_engine.host} if docker_engine.host else {})}
    command = [sys.executable, "-m", "imagedsl", "build", f"{project}/build.py", "--store", store]
    with subprocess.Popen(
        [*command, "--progress", "plain"], stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("#") and "sleep 60" in line:
                break  # the quick step is done: BuildKit runs the steps of a stage in order
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 130, rest
    planned = run_cli(
        "plan", f"{project}/build.py", "--store", store, "--json", engine=docker_engine
    )
    rows = {row["instruction"]: row["status"] for row in json.loads(planned.stdout)["steps"]}
    assert rows[f"RUN echo {token} > /quick"] == "hit"
    assert rows["RUN sleep 60"] == "miss"


def test_secret_values_never_leave_the_build(
    docker_engine: DockerEngine, busybox_image: str, project: Path, tmp_path: Path, tag: str
) -> None:
    """A secret reaches RUN, but not the Dockerfile, the plan, the ledger or the output."""
    value = f"s3cr3t-{uuid.uuid4().hex}"
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(value)
    (project / "build.py").write_text(
        textwrap.dedent(
            f"""
            import imagedsl as dsl
            app = dsl.image({busybox_image!r}).run(
                "echo {uuid.uuid4().hex} && sha256sum /run/secrets/token | cut -d' ' -f1 > /token.sha256"
                " && test \\"$API_KEY\\" = '' && wc -c < /run/secrets/apikey > /apikey.len",
                mounts=[dsl.secret("token", required=True), dsl.secret("apikey")],
            )
            """
        )
    )
    store = tmp_path / "store"
    spec = f"{project}/build.py:app"
    built = run_cli(
        "build", spec, "--store", str(store), "-t", tag, "--progress", "plain",
        "--secret", f"id=token,src={secret_file}", "--secret", "id=apikey,env=API_KEY",
        engine=docker_engine, env={"API_KEY": value + "-env"},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    digest = docker_engine.run("run", "--rm", tag, "cat", "/token.sha256").stdout.strip()
    assert digest == hashlib.sha256(value.encode()).hexdigest()
    length = docker_engine.run("run", "--rm", tag, "cat", "/apikey.len").stdout.strip()
    assert int(length) == len(value) + len("-env")
    lowered = run_cli("lower", spec, "--store", str(store), engine=docker_engine).stdout
    planned = run_cli("plan", spec, "--store", str(store), "--json", engine=docker_engine).stdout
    texts = {"dockerfile": lowered, "plan": planned, "output": built.stdout + built.stderr}
    for path in store.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    leaks = [where for where, text in texts.items() if value in text]
    assert leaks == []
    assert "--mount=type=secret,id=token,required=true" in lowered


class LineRecorder(Reporter):
    """Keeps every output line the backend reports."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step_output(self, label: str, line: str) -> None:  # noqa: ARG002 - the hook's signature
        self.lines.append(line)


def test_failing_run_masks_secrets_in_its_error_and_output(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RUN that prints its secrets and then fails shows them masked, in the streamed
    progress and in the error's tail of output alike (BuildKit itself masks nothing)."""
    lines = ["key-" + uuid.uuid4().hex, "line2-" + uuid.uuid4().hex]
    variable = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("TEST_SECRET_VALUE", variable)
    (tmp_path / "token").write_text("\n".join(lines) + "\n")
    stage = dsl.image(busybox_image).run(
        f'echo {uuid.uuid4().hex}; cat /run/secrets/api; echo "token=$(cat /run/secrets/env)";'
        " exit 7",
        mounts=[dsl.secret("api"), dsl.secret("env")],
    )
    secrets = (SecretSource.parse("id=api,src=" + str(tmp_path / "token")),
               SecretSource.parse("id=env,env=TEST_SECRET_VALUE"))  # fmt: skip
    store = Store(tmp_path / "store")
    recorder = LineRecorder()
    with pytest.raises(BuildFailedError) as caught:
        DockerfileBackend(docker_engine).build(
            api.plan(stage, "s", store=store),
            BuildRequest(secrets=secrets, progress="plain"),
            store=store,
            reporter=recorder,
        )
    assert "exit code: 7" in caught.value.message
    assert [line.split()[-1] for line in caught.value.output[-3:]] == ["****", "****", "token=****"]
    shown = "\n".join([str(caught.value), *caught.value.output, *recorder.lines])
    assert "token=****" in "\n".join(recorder.lines)
    for value in [*lines, variable]:
        assert value not in shown


def test_missing_secret_source_is_refused_before_building(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """A --secret whose file does not exist stops the build with a clear error."""
    stage = dsl.image(busybox_image).run("true", mounts=[dsl.secret("token")])
    store = Store(tmp_path / "store")
    request = BuildRequest(secrets=(SecretSource.parse("id=token,src=/nonexistent/token"),))
    with pytest.raises(BuildRequestError, match="no such file /nonexistent/token"):
        DockerfileBackend(docker_engine).build(
            api.plan(stage, "s", store=store), request, store=store, reporter=Reporter()
        )


def test_feature_missing_from_the_engine_is_refused_naming_the_step(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """RUN --network on Docker 20.10's built-in frontend: an error at the step, before
    building (COPY --link, heredocs, --parents and ADD --checksum are written in forms it
    accepts instead: tests/test_instruction_forms.py; RUN steps that all ask for no network
    build with ``docker build --network=none``: test_runs_without_network_build_on_docker_20)."""
    expect_engine(docker_engine, PINNED_ENGINE, "its frontend has no RUN --network")
    stage = dsl.image(busybox_image).run("true", network="host")
    store = Store(tmp_path / "store")
    with pytest.raises(LoweringError) as caught:
        DockerfileBackend(docker_engine).build(
            api.plan(stage, "s", store=store), BuildRequest(), store=store, reporter=Reporter()
        )
    assert caught.value.location is not None
    assert caught.value.location.file == __file__
    assert "RUN --network" in caught.value.problem
    assert docker_engine.server_version in caught.value.problem


def test_no_engine_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    """With no engine answering, the error says what was tried and what is missing."""
    (project / "build.py").write_text("import imagedsl as dsl\napp = dsl.scratch()\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagedsl",
            "build",
            f"{project}/build.py",
            "--store",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"},
        check=False,
        timeout=300,
    )
    assert result.returncode == 2
    assert "no Docker engine with BuildKit is usable" in result.stderr
    assert "no-engine.sock" in result.stderr


def test_words_model_agrees_with_buildkit(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path, tag: str
) -> None:
    """ENV, LABEL, WORKDIR, USER and VOLUME values with quotes, dollars, backslashes and
    Unicode reach the image config exactly as imagedsl computes them."""
    nasty = ['it\'s "quoted"', "a\\b\\\\c", "$5 and \\$6", "tab\there", "日本語 é", "${X:-x y}"]
    env = {f"V{i}": value for i, value in enumerate(nasty)}
    stage = (
        dsl.image(busybox_image)
        .env(X="ex")
        .env(env)
        .label({f"l{i}": value for i, value in enumerate(nasty)})
        .workdir("/work dir/$X")
        .user("1234:5678")
        .volume("/vol $X", "/plain")
        .run(["true"])
    )
    store = Store(tmp_path / "store")
    plan = api.plan(stage, "s", store=store)
    DockerfileBackend(docker_engine).build(
        plan, BuildRequest(tags=(tag,)), store=store, reporter=Reporter()
    )
    inspected = json.loads(docker_engine.run("image", "inspect", tag).stdout)[0]["Config"]
    image_env = dict(item.split("=", 1) for item in inspected["Env"])
    state = plan.steps[-1].node.state
    variables = state.variables
    assert {name: image_env[name] for name in env} == {name: dict(state.env)[name] for name in env}
    labels = {k: v for k, v in inspected["Labels"].items() if not k.startswith("org.imagedsl")}
    assert labels == {f"l{i}": expand(value, variables) for i, value in enumerate(nasty)}
    assert labels["l5"] == "ex"  # LABEL expands, as in a Dockerfile and the OCI backend
    assert inspected["WorkingDir"] == "/work dir/ex"
    assert inspected["User"] == "1234:5678"
    assert sorted(inspected["Volumes"]) == ["/plain", "/vol ex"]


def test_stale_copy_in_buildkit_is_fixed_by_staging(
    docker_engine: DockerEngine, busybox_image: str, project: Path, tmp_path: Path, tag: str
) -> None:
    """BuildKit alone reuses a COPY when a file is rewritten with the same size and mtime;
    through imagedsl the rebuilt image has the new content."""
    token = uuid.uuid4().hex
    source = project / "requirements.txt"
    source.write_text("aaaa\n")
    os.utime(source, (1_600_000_000, 1_600_000_000))

    def rewrite() -> None:
        source.write_text("bbbb\n")  # same size
        os.utime(source, (1_600_000_000, 1_600_000_000))

    # BuildKit on its own: the rewrite goes unnoticed.
    (project / "Dockerfile").write_text(
        f"FROM {busybox_image}\nRUN echo {token}\nCOPY requirements.txt /r.txt\n"
    )
    plain = f"{tag}-plain"
    docker_engine.build(project, "--tag", plain)
    source.write_text("aaaa\n")
    os.utime(source, (1_600_000_000, 1_600_000_000))
    rewrite()
    docker_engine.build(project, "--tag", plain)
    stale = docker_engine.run("run", "--rm", plain, "cat", "/r.txt").stdout
    docker_engine.run("image", "rm", "--force", plain, check=False)
    assert stale == "aaaa\n", "BuildKit noticed the rewrite after all: the fix may be moot"

    # Through imagedsl: the same rewrite is a miss in the plan and a rebuild in BuildKit.
    source.write_text("aaaa\n")
    os.utime(source, (1_600_000_000, 1_600_000_000))
    src = dsl.context(project)
    stage = (
        dsl.image(busybox_image)
        .run(f"echo {token}-dsl")
        .copy(src.file("requirements.txt"), "/r.txt")
    )
    store = Store(tmp_path / "store")
    backend = DockerfileBackend(docker_engine)
    backend.build(
        api.plan(stage, "s", store=store),
        BuildRequest(tags=(tag,)),
        store=store,
        reporter=Reporter(),
    )
    rewrite()
    plan = api.plan(stage, "s", store=store)
    assert plan.steps[-1].status is PlanStatus.MISS
    result = backend.build(plan, BuildRequest(tags=(tag,)), store=store, reporter=Reporter())
    assert result.built == ("s[2]",)
    assert docker_engine.run("run", "--rm", tag, "cat", "/r.txt").stdout == "bbbb\n"


def test_lowered_directory_builds_with_plain_docker(
    docker_engine: DockerEngine, busybox_image: str, project: Path, tmp_path: Path, tag: str
) -> None:
    """``lower -o DIR`` gives a directory that ``docker build DIR`` builds as is."""
    src = dsl.context(project, ignore=["*.log"])
    stage = (
        dsl.image(busybox_image)
        .workdir("/app")
        .copy(src.file("requirements.txt"), ".")
        .copy(src, "/all")
        .run("find /app /all -type f | sort > /files")
    )
    out = tmp_path / "out"
    write_build_dir(api.plan(stage, "s"), out)
    docker_engine.build(out, "--tag", tag)
    files = docker_engine.run("run", "--rm", tag, "cat", "/files").stdout.split()
    assert files == ["/all/app/main.txt", "/all/requirements.txt", "/app/requirements.txt"]


def test_docker_archive_output(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """--output docker-archive:FILE:TAG saves the built image as a loadable archive."""
    archive = tmp_path / "image.tar"
    tag = f"imagedsl-test/docker-backend-archive-{uuid.uuid4().hex[:8]}"
    stage = dsl.image(busybox_image).run(f"echo {uuid.uuid4().hex} > /x")
    store = Store(tmp_path / "store")
    request = BuildRequest(output=f"docker-archive:{archive}:{tag}")
    try:
        result = DockerfileBackend(docker_engine).build(
            api.plan(stage, "s", store=store), request, store=store, reporter=Reporter()
        )
        assert result.image == tag
    finally:
        docker_engine.run("image", "rm", "--force", tag, check=False)
    assert archive.stat().st_size > 0
    assert (
        '"RepoTags"'
        in subprocess.run(
            ["tar", "-xOf", str(archive), "manifest.json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    with pytest.raises(BuildRequestError, match="--backend oci"):
        DockerfileBackend(docker_engine).build(
            api.plan(stage, "s", store=store),
            BuildRequest(output=f"oci:{tmp_path}/layout"),
            store=store,
            reporter=Reporter(),
        )


# -- without an engine ---------------------------------------------------------------------------


def test_progress_parser_reads_buildkit_08_output() -> None:
    """Statuses, outputs and the failing vertex of a recorded Docker 20.10 build."""
    parser = ProgressParser()
    for line in (RESOURCES / "progress-failed-0.8.txt").read_text().splitlines():
        parser.feed(line)
    vertices = parser.by_label()
    assert vertices["[a 2/3]"].status == DONE
    assert vertices["[a 2/3]"].seconds is not None
    assert vertices["[b 1/2]"].seconds is None  # cached: made by an earlier build
    assert vertices["[a 3/3]"].status == ERROR
    assert vertices["[a 3/3]"].output == ["failing"]
    assert vertices["[a 3/3]"].error == (
        "executor failed running [/bin/sh -c echo failing; exit 3]: exit code: 3"
    )
    assert vertices["[b 2/2]"].status == "canceled"
    assert vertices["[b 1/2]"].status == CACHED
    failed = parser.failed()
    assert failed is not None
    assert failed.instruction == "RUN echo failing; exit 3"


def test_pool_keeps_used_trees_and_prunes_old_ones(project: Path, tmp_path: Path) -> None:
    """Trees are written once, reused, and removed when no build used them for a while."""
    src = dsl.context(project)
    lowered = lower_to_dockerfile(api.plan(dsl.scratch().copy(src.dir("app"), "/app"), "s"))
    pool = ContextPool(tmp_path / "contexts")
    pool.stage(lowered.trees, now=1000.0)
    (tree,) = lowered.trees
    staged = pool.root / tree.name / "main.txt"
    inode = staged.stat().st_ino
    pool.stage(lowered.trees, now=2000.0)
    assert staged.stat().st_ino == inode  # reused, not rewritten
    (pool.root / ".staging-x-1").mkdir()
    assert pool.prune(now=2000.0 + POOL_MAX_AGE - 1) == []
    assert not (pool.root / ".staging-x-1").exists()
    assert pool.prune(now=2000.0 + POOL_MAX_AGE + 1) == [tree.name]
    assert not staged.exists()


def test_build_failure_message_shows_step_output() -> None:
    """The error names the step and quotes the end of its output."""
    error = BuildFailedError("exit code: 2", instruction="RUN make", output=["cc: error"])
    assert str(error) == "RUN make failed: exit code: 2\n  | cc: error"
    assert error.exit_code == 1


def test_noop_build_skips_buildkit_while_the_image_is_there(
    docker_engine: DockerEngine, busybox_image: str, project: Path, tmp_path: Path, tag: str
) -> None:
    """A build with every step a hit calls no BuildKit while the engine holds its image."""
    src = dsl.context(project, ignore=["*.log"])
    app = dsl.image(busybox_image).copy(src.dir("app"), "/app").run(f"echo {uuid.uuid4().hex}")
    store = Store(tmp_path / "store")
    first = DockerfileBackend(docker_engine).build(
        api.plan(app, "app", store=store),
        BuildRequest(tags=(tag,)),
        store=store,
        reporter=Recorder(),
    )
    recorder = Recorder()
    again = DockerfileBackend(docker_engine).build(
        api.plan(app, "app", store=store), BuildRequest(tags=(tag,)), store=store, reporter=recorder
    )
    assert again.built == ()
    assert again.digest == first.digest
    assert recorder.lines == []  # BuildKit printed nothing: it did not run
    assert set(recorder.finished.values()) == {"cached"}
    docker_engine.run("image", "rm", "--force", tag)
    recorder = Recorder()
    back = DockerfileBackend(docker_engine).build(
        api.plan(app, "app", store=store), BuildRequest(tags=(tag,)), store=store, reporter=recorder
    )
    assert recorder.lines != []  # the tag was gone: BuildKit ran (from its cache)
    assert docker_engine.run("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip() == (
        back.digest
    )


def test_engine_discovery_is_kept_until_the_engine_changes(
    docker_engine: DockerEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine found once is reused without probing; a new server version probes again."""
    from imagedsl.backends import engine as engine_module

    if docker_engine.host:
        monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    cache = tmp_path / "engines"
    found = engine_module.require_docker(cache=cache)
    probes: list[str] = []
    real_probe = engine_module._buildkit_problem

    def counting_probe(engine: engine_module.DockerEngine) -> str | None:
        probes.append(engine.client)
        return real_probe(engine)

    monkeypatch.setattr(engine_module, "_buildkit_problem", counting_probe)
    assert engine_module.require_docker(cache=cache) == found
    assert probes == []
    (saved,) = cache.iterdir()
    record = json.loads(saved.read_text())
    saved.write_text(json.dumps({**record, "server_version": "0.0.1-old"}))
    assert engine_module.require_docker(cache=cache) == found
    assert probes != []
    assert json.loads(saved.read_text())["server_version"] == found.server_version


def test_runs_without_network_build_on_docker_20(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path, tag: str
) -> None:
    """RUN steps that all ask for network="none" build on Docker 20.10 with no network."""
    stage = dsl.image(busybox_image).run(
        f"ls /sys/class/net > /nets; echo {uuid.uuid4().hex}", network="none"
    )
    store = Store(tmp_path / "store")
    plan = api.plan(stage, "s", store=store)
    lowered = lower_to_dockerfile(plan)
    assert lowered.build_network == "none"
    assert "--network=none" in lowered.text
    DockerfileBackend(docker_engine).build(
        plan, BuildRequest(tags=(tag,)), store=store, reporter=Reporter()
    )
    assert docker_engine.run("run", "--rm", tag, "cat", "/nets").stdout.split() == ["lo"]
    mixed = stage.run("true")
    assert lower_to_dockerfile(api.plan(mixed, "m", store=store)).build_network is None

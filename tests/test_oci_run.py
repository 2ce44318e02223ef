"""RUN steps in the OCI backend: executed in runc over the image's layers, diffed into a layer.

Every test builds on the small busybox base of :mod:`tests.support.oci` (an OCI layout made here),
so they need root and runc but no Docker engine. Without them the tests are skipped, except
under ``IMAGEDSL_REQUIRE_DOCKER=1`` (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

import imagedsl as dsl
from imagedsl.backends import BuildRequest, SecretSource
from imagedsl.backends.oci.backend import OCIBackend, OCIBuild
from imagedsl.backends.oci.run.executor import (
    RunExecutor,
    RunInputError,
    private_parent,
    resolve_user,
)
from imagedsl.backends.oci.run.rootfs import RootfsError, extract_layer
from imagedsl.backends.oci.run.runc import (
    RunFailedError,
    RunTimeoutError,
    RuntimeUnavailableError,
    missing_requirements,
)
from imagedsl.dsl import Stage
from imagedsl.oci.blobs import BlobStore
from imagedsl.planner import Plan, PlanStatus, plan
from imagedsl.reporting import Reporter
from imagedsl.store import Store, StoreArea
from tests.support import REPO_ROOT, oci
from tests.support.oci import layer_members
from tests.support.skips import NO_ROOT, NO_TOOL, unavailable
from tests.support.waiting import flock_waiters, wait_until


@pytest.fixture(autouse=True)
def _runtime_available() -> None:
    """Root and runc, or a skip (a failure in CI)."""
    missing = missing_requirements()
    if "root" in missing:
        unavailable(NO_ROOT, "RUN steps need root")
    if missing:
        unavailable(NO_TOOL, "runc (RUN steps need it)")


@pytest.fixture(name="base", scope="module")
def fixture_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``oci:DIR:1``: busybox, /etc/passwd with root and app (1000), /tmp."""
    return oci.make_busybox_layout(tmp_path_factory.mktemp("base"))


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path) -> Store:
    """A fresh store."""
    return Store(tmp_path / "store")


class Recorder(Reporter):
    """Keeps every output line and every step's final status."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.finished: list[tuple[str, str]] = []

    def step_output(self, label: str, line: str) -> None:  # noqa: ARG002 - the hook's signature
        self.lines.append(line)

    def step_finished(self, label: str, status: str) -> None:
        self.finished.append((label, status))


def run_build(
    stage: Stage,
    store: Store,
    *,
    secrets: tuple[SecretSource, ...] = (),
    backend: OCIBackend | None = None,
    output: str | None = None,
    stages: dict[str, Stage] | None = None,
    allow: frozenset[str] = frozenset(),
) -> tuple[OCIBuild, Recorder, Plan]:
    """Plan and build ``stage`` (target ``img``), keeping the output lines."""
    named = {**(stages or {}), "img": stage}

    recorder = Recorder()
    first = plan(named, "img", store=store, project="run-test")
    request = BuildRequest(secrets=secrets, output=output, allow=allow)
    built = (backend or OCIBackend()).build_image(first, request, store=store, reporter=recorder)
    return built, recorder, first


def members(store: Store, built: OCIBuild, index: int = -1) -> dict[str, tarfile.TarInfo]:
    """The tar members of one layer of a built image, by name."""
    layer = built.image.layers[index]
    descriptor = {"mediaType": layer.media_type, "digest": layer.digest}
    blobs = store.root
    return {m.name.rstrip("/"): m for m in layer_members(blobs, descriptor)}


def output_after(recorder: Recorder, marker: str) -> list[str]:
    """The lines printed after the line ``marker``."""
    return recorder.lines[recorder.lines.index(marker) + 1 :]


def no_leftovers(store: Store) -> None:
    """Nothing of a RUN remains: no mount, no run directory, no private tmpfs directory."""
    with open("/proc/self/mountinfo") as handle:
        assert str(store.root) not in handle.read()
    runs = store.area(StoreArea.OCI_RUNS)
    assert not runs.exists() or not list(runs.iterdir())
    tag = RunExecutor(BlobStore(store), secrets=(), epoch=0, timeout=None, on_output=print)
    assert not list(private_parent().glob(tag._private_name("*")))


# -- what the command sees -------------------------------------------------------------------


def test_environment_user_workdir_and_forms(base: str, store: Store) -> None:
    """Shell form runs through SHELL, exec form as is; ENV and in-scope ARGs are set; a
    missing WORKDIR is created; USER names resolve through the image's /etc/passwd."""
    stage = (
        dsl.image(base)
        .arg("VERSION", "1.2")
        .env(GREETING="hello $VERSION")
        .workdir("/srv/app")
        .run("echo ::shell; echo $GREETING $VERSION; pwd; echo $HOME; id")
        .run(["/bin/echo", "::exec", "$GREETING"])
        .shell("/bin/sh", "-ec")
        .run("echo ::shell2; echo $0 $-")
        .user("app")
        .run("echo ::user; id; echo $HOME; touch /tmp/made-by-app")
    )
    built, recorder, _ = run_build(stage, store)
    assert output_after(recorder, "::shell")[:4] == [
        "hello 1.2 1.2",
        "/srv/app",
        "/root",
        "uid=0(root) gid=0(root)",  # as in BuildKit: no supplementary groups
    ]
    assert "::exec $GREETING" in recorder.lines  # exec form: no shell, no expansion
    shell, flags = output_after(recorder, "::shell2")[0].split()
    assert shell == "/bin/sh"
    assert "e" in flags
    assert output_after(recorder, "::user")[:2] == [
        "uid=1000(app) gid=1000(app)",
        "/home/app",
    ]
    made = members(store, built)["tmp/made-by-app"]
    assert (made.uid, made.gid, made.mode) == (1000, 1000, 0o644)
    workdir = members(store, built, 1)
    assert "srv/app" in workdir  # the WORKDIR step made it


def test_resolve_user_follows_docker() -> None:
    """USER names, numbers and groups resolve as Docker resolves them."""
    files = {
        "etc/passwd": "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        "etc/group": "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\n",
    }
    assert resolve_user("", files).uid == 0
    app = resolve_user("app", files)
    assert (app.uid, app.gid, app.groups) == (1000, 1000, (50,))
    assert (resolve_user("1000", files).gid, resolve_user("4242", files).gid) == (1000, 0)
    assert resolve_user("app:staff", files).gid == 50
    assert resolve_user("app:7", files).gid == 7
    with pytest.raises(LookupError):
        resolve_user("nobody", files)
    with pytest.raises(LookupError):
        resolve_user("app:nogroup", files)


@pytest.mark.parametrize(
    ("user", "passwd", "group", "ids"),
    [
        ("1000:1000", False, False, (1000, 1000)),
        ("root:root", False, False, (0, 0)),
        ("0:root", False, False, (0, 0)),
        ("1000", False, False, None),
        ("0", False, False, None),
        ("root", False, False, None),
        ("2000", True, False, (2000, 0)),
        ("1000", True, False, None),
        ("app", True, False, None),
        ("app:1000", True, False, None),
        ("2000:app", True, False, None),
        ("1000", True, True, (1000, 1000)),
    ],
)
def test_resolve_user_reads_files_as_buildkit_does(
    user: str, passwd: bool, group: bool, ids: tuple[int, int] | None
) -> None:
    """Two ids need no file; any other USER needs /etc/passwd, even a bare uid, and
    /etc/group once a user was found or a group is named (what BuildKit did with each of
    these, checked on Docker 20.10: ``unable to find user 1000``, ``unable to find groups for
    spec app``)."""
    files = {}
    if passwd:
        files["etc/passwd"] = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    if group:
        files["etc/group"] = "root:x:0:\napp:x:1000:\n"
    if ids is None:
        with pytest.raises(LookupError):
            resolve_user(user, files)
    else:
        owner = resolve_user(user, files)
        assert (owner.uid, owner.gid) == ids


def test_unknown_user_is_an_error_at_its_line(base: str, store: Store) -> None:
    """USER naming nobody in /etc/passwd fails the RUN before it starts."""
    with pytest.raises(RunInputError) as caught:
        run_build(dsl.image(base).user("ghost").run("true"), store)
    assert "ghost" in caught.value.problem
    assert caught.value.location is not None
    assert caught.value.location.file == __file__


# -- the layer a RUN makes -------------------------------------------------------------------


def test_layer_holds_exactly_the_change(base: str, store: Store) -> None:
    """New, changed and deleted files, hard links, symlinks, owners and modes as the command
    left them, opaque directories, the build's mtime; no mount points, no untouched dirs."""
    stage = (
        dsl.image(base)
        .run("mkdir -p /opt/old && echo a > /opt/old/a && echo b > /opt/old/b")
        .run(
            "set -e; echo new > /new; chown 1000:50 /new; chmod 4750 /new; "
            "ln /new /new-link; ln -s /new /new-sym; rm /etc/group; echo more >> /etc/passwd; "
            "rm -rf /opt/old; mkdir /opt/old; echo c > /opt/old/c; mkdir /empty; "
            "touch /tmp/x; rm /tmp/x",
            mounts=[dsl.cache("/var/cache/thing"), dsl.tmpfs("/scratch/t")],
        )
        .run("true")
    )
    built, _, _ = run_build(stage, store)
    _, manifest, config = read_image_from_store(store, built)
    assert len(manifest["layers"]) == 3  # base, two RUNs; `true` changed nothing
    assert config["history"][-1]["empty_layer"] is True
    layer = members(store, built)
    assert set(layer) == {
        "new",
        "new-link",
        "new-sym",
        "etc",
        "etc/.wh.group",
        "etc/passwd",
        "opt",
        "opt/old",
        "opt/old/.wh..wh..opq",
        "opt/old/c",
        "empty",
    }
    new = layer["new"]
    assert (new.mode, new.uid, new.gid) == (0o4750, 1000, 50)
    assert layer["new-link"].islnk()
    assert layer["new-link"].linkname == "new"
    assert layer["new-sym"].issym()
    assert layer["new-sym"].linkname == "/new"
    assert layer["etc/passwd"].size == len(oci.PASSWD) + len("more\n")
    assert {m.mtime for m in layer.values()} == {0}
    names = list(layer)
    assert names.index("etc/.wh.group") < names.index("etc/passwd")


def read_image_from_store(store: Store, built: OCIBuild) -> tuple[str, Any, Any]:
    """(digest, manifest, config) of a built image, read from the store."""
    manifest = json.loads(store.blob_path(built.image.manifest_digest).read_bytes())
    config = json.loads(store.blob_path(manifest["config"]["digest"]).read_bytes())
    return built.image.manifest_digest, manifest, config


def test_later_runs_see_earlier_changes_fresh_and_reextracted(base: str, store: Store) -> None:
    """A RUN stands on the previous RUN's layer, whether its snapshot is the previous upper
    directory or re-extracted from the layer blob; the image is the same either way."""
    first = dsl.image(base).run(
        "mkdir -p /d/sub && echo one > /d/sub/f && ln -s sub/f /d/link && rm /bin/ls"
    )
    check = "cat /d/link; test ! -e /bin/ls && echo gone; ls -a /d/sub | tr '\\n' ' '"
    built, recorder, _ = run_build(first.run(f"echo ::a; {check}"), store)
    assert output_after(recorder, "::a") == ["one", "gone", ". .. f "]
    # As a remote cache or a pruned store leaves it: layers, but no extracted snapshots.
    shutil.rmtree(store.area(StoreArea.OCI_SNAPSHOTS))
    again, recorder, planned = run_build(first.run(f"echo ::b; {check}"), store)
    assert [s.status for s in planned.steps] == [PlanStatus.HIT, PlanStatus.HIT, PlanStatus.MISS]
    assert output_after(recorder, "::b") == ["one", "gone", ". .. f "]
    assert again.image.layers[:2] == built.image.layers[:2]


def test_rebuild_hits_and_records_only_successes(base: str, store: Store) -> None:
    """A built RUN is a hit in the next plan and is not run again."""
    stage = dsl.image(base).run("echo ran; echo x > /x")
    first, recorder, planned = run_build(stage, store)
    assert "ran" in recorder.lines
    record = store.get(planned.steps[-1].key)
    assert record is not None
    assert isinstance(record.outputs["seconds"], float)  # what check's history rule reads
    second, recorder, planned = run_build(stage, store)
    assert [s.status for s in planned.steps] == [PlanStatus.HIT, PlanStatus.HIT]
    assert "ran" not in recorder.lines
    assert second.image.manifest_digest == first.image.manifest_digest
    no_leftovers(store)


# -- mounts ----------------------------------------------------------------------------------


def test_cache_mount_persists_outside_layers(base: str, store: Store) -> None:
    """A cache mount keeps its files across builds, under its id, and never in a layer."""
    cache = dsl.cache("/root/.cache/tool", id="tool", mode=0o700, uid=1000, gid=1000)
    count = (
        "n=$(cat /root/.cache/tool/n 2>/dev/null || echo 0); echo $((n+1)) > /root/.cache/tool/n"
    )
    for i in range(1, 3):
        stage = dsl.image(base).run(
            f"{count}; echo ::n; cat /root/.cache/tool/n; echo {i}", mounts=[cache]
        )
        built, recorder, _ = run_build(stage, store)
        assert output_after(recorder, "::n")[0] == str(i)
        assert len(built.image.layers) == 1  # the RUN wrote only to the cache
    found = list(store.area(StoreArea.CACHE_MOUNTS).glob("*/data"))
    assert len(found) == 1
    st = found[0].stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o700)


def test_private_cache_mount_uses_a_copy_while_locked(base: str, store: Store) -> None:
    """A private cache mount that another build holds gets a copy; writes to it are dropped."""
    import fcntl

    warm = dsl.cache("/c", id="shared-id")
    run_build(dsl.image(base).run("echo kept > /c/file", mounts=[warm]), store)
    home = next(store.area(StoreArea.CACHE_MOUNTS).iterdir())
    with open(home / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        private = dsl.cache("/c", id="shared-id", sharing="private")
        stage = dsl.image(base).run(
            "echo ::p; cat /c/file; echo dropped > /c/file", mounts=[private]
        )
        _, recorder, _ = run_build(stage, store)
    assert output_after(recorder, "::p")[0] == "kept"
    assert (home / "data" / "file").read_text() == "kept\n"


def test_secrets_never_reach_layers_records_plans_or_logs(
    base: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret is readable as a file and as a variable during the RUN, and its value is in no
    blob, record, plan or output line (lines that print it, or a line of it, are masked)."""
    lines = ["key-" + os.urandom(8).hex(), "line2-" + os.urandom(8).hex()]
    variable = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("TEST_SECRET_VALUE", variable)
    (tmp_path / "token").write_text("\n".join(lines) + "\n")
    stage = dsl.image(base).run(
        "echo ::s; cat /run/secrets/api; echo $TOKEN; cat /run/secrets/api > /copy-ok; "
        "stat -c '%a %u' /run/secrets/api; rm /copy-ok; echo done > /done",
        mounts=[dsl.secret("api"), dsl.secret("env-one", env="TOKEN"), dsl.secret("absent")],
    )
    secrets = (SecretSource.parse("id=api,src=" + str(tmp_path / "token")),
               SecretSource.parse("id=env-one,env=TEST_SECRET_VALUE"))  # fmt: skip
    built, recorder, planned = run_build(
        stage, store, secrets=secrets, output=f"oci:{tmp_path / 'out'}"
    )
    assert output_after(recorder, "::s")[:4] == ["****", "****", "****", "400 0"]
    plan_text = json.dumps(planned.to_json())
    for value in [*lines, variable]:
        assert not any(value in line for line in recorder.lines)
        assert value not in plan_text
    needles = [value.encode() for value in [*lines, variable]]
    for root in (store.root, tmp_path / "out"):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if data[:2] == b"\x1f\x8b":
                    import gzip

                    data += gzip.decompress(data)
                assert not any(needle in data for needle in needles), path
    assert set(members(store, built)) == {"done"}  # no mount point, no secret file
    no_leftovers(store)


def test_failing_run_masks_secrets_in_its_error_and_output(
    base: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RUN that prints its secrets and then fails shows them masked, in the streamed output
    and in the error's tail of output alike."""
    lines = ["key-" + os.urandom(8).hex(), "line2-" + os.urandom(8).hex()]
    variable = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("TEST_SECRET_VALUE", variable)
    (tmp_path / "token").write_text("\n".join(lines) + "\n")
    stage = dsl.image(base).run(
        'echo ::s; cat /run/secrets/api; echo "token=$TOKEN"; exit 7',
        mounts=[dsl.secret("api"), dsl.secret("env-one", env="TOKEN")],
    )
    secrets = (SecretSource.parse("id=api,src=" + str(tmp_path / "token")),
               SecretSource.parse("id=env-one,env=TEST_SECRET_VALUE"))  # fmt: skip
    recorder = Recorder()
    planned = plan({"img": stage}, "img", store=store, project="run-test")
    with pytest.raises(RunFailedError) as caught:
        OCIBackend().build_image(
            planned, BuildRequest(secrets=secrets), store=store, reporter=recorder
        )
    assert caught.value.status == 7
    assert list(caught.value.output[-3:]) == ["****", "****", "token=****"]
    assert output_after(recorder, "::s") == ["****", "****", "token=****"]
    shown = "\n".join([str(caught.value), *caught.value.output, *recorder.lines])
    for value in [*lines, variable]:
        assert value not in shown
    no_leftovers(store)


def test_required_secret_missing_fails_before_running(base: str, store: Store) -> None:
    """A required secret that was not given is an error naming it; nothing runs."""
    stage = dsl.image(base).run("echo should-not-run", mounts=[dsl.secret("key", required=True)])
    with pytest.raises(RunInputError) as caught:
        run_build(stage, store)
    assert "'key'" in caught.value.problem


def test_bind_mounts_from_context_and_stage(base: str, store: Store, tmp_path: Path) -> None:
    """Context files and another stage's path are mounted (read-only unless asked), one file as
    that file; writes to a read-write bind are dropped; none of it lands in the layer."""
    ctx = tmp_path / "ctx"
    (ctx / "conf").mkdir(parents=True)
    (ctx / "conf" / "a.txt").write_text("from context\n")
    (ctx / "single.txt").write_text("one file\n")
    src = dsl.context(ctx)
    builder = dsl.image(base).run("mkdir -p /out && echo built > /out/artifact")
    stage = dsl.image(base).run(
        "echo ::b; cat /mnt/conf/a.txt /mnt/single /mnt/stage/artifact; "
        "(echo x > /mnt/conf/new) 2>/dev/null || echo read-only; echo y > /mnt/rw/new && echo rw-ok; "
        "echo made > /result",
        mounts=[
            dsl.bind(src.dir("conf"), "/mnt/conf"),
            dsl.bind(src.file("single.txt"), "/mnt/single"),
            dsl.bind(builder.path("/out"), "/mnt/stage"),
            dsl.bind(src.dir("conf"), "/mnt/rw", readwrite=True),
        ],
    )
    built, recorder, _ = run_build(stage, store, stages={"builder": builder})
    assert output_after(recorder, "::b") == [
        "from context",
        "one file",
        "built",
        "read-only",
        "rw-ok",
    ]
    assert set(members(store, built)) == {"result"}
    assert sorted(p.name for p in (ctx / "conf").iterdir()) == ["a.txt"]


def test_network_modes(base: str, store: Store) -> None:
    """``none`` gives a new network namespace with loopback only; the default a namespace of
    its own with ``lo`` and ``eth0`` (behind NAT); ``host``, allowed, the host's interfaces."""
    interfaces = (
        "echo ::net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '"
    )
    _, isolated, _ = run_build(dsl.image(base).run(interfaces, network="none"), store)
    assert output_after(isolated, "::net") == ["lo "]
    _, own, _ = run_build(dsl.image(base).run(interfaces), store)
    assert output_after(own, "::net") == ["eth0 lo "]
    _, shared, _ = run_build(
        dsl.image(base).run(interfaces, network="host"), store, allow=frozenset({"network.host"})
    )
    seen = set(output_after(shared, "::net")[0].split())
    host = {
        line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]
    }
    assert {"lo"} < seen
    assert {name for name in host if not name.startswith("veth")} <= seen
    no_leftovers(store)


# -- failures, timeouts, interrupts ----------------------------------------------------------


def test_failing_command_reports_line_status_and_output(base: str, store: Store) -> None:
    """A failing RUN raises with its build-file line, its exit status and its last lines; the
    plan still shows it as a miss and nothing of it is left behind."""
    stage = dsl.image(base).run("echo first; for i in $(seq 1 30); do echo line $i; done; exit 3")
    with pytest.raises(RunFailedError) as caught:
        run_build(stage, store)
    error = caught.value
    assert error.status == 3
    assert error.output[-1] == "line 30"
    assert len(error.output) == 20
    assert error.location is not None
    assert error.location.file == __file__
    assert "exit code 3" in str(error)
    again = plan({"img": stage}, "img", store=store, project="run-test")
    assert again.steps[-1].status is PlanStatus.MISS
    assert not list(store.area(StoreArea.OCI_LAYERS).rglob("*.json"))
    no_leftovers(store)


def test_timeout_kills_the_container_and_cleans_up(base: str, store: Store) -> None:
    """A RUN longer than the time limit is killed within the limit; mounts and temporary
    directories are gone and no process of it survives."""
    marker = f"sleep {4000 + os.getpid() % 1000}"
    stage = dsl.image(base).run(f"echo started; {marker}", mounts=[dsl.cache("/c")])
    with pytest.raises(RunTimeoutError) as caught:
        run_build(stage, store, backend=OCIBackend(run_timeout=1.0))
    assert caught.value.output == ("started",)
    assert caught.value.timeout == 1.0
    assert _processes_running(marker) == []
    no_leftovers(store)


def _processes_running(command: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if command in cmdline and "pytest" not in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize(
    "signum",
    [pytest.param(signal.SIGINT, id="ctrl-c"), pytest.param(signal.SIGTERM, id="sigterm")],
)
def test_interrupt_kills_the_container_and_cleans_up(
    base: str, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (a cancelled job) to ``imagedsl build`` kills the running RUN,
    removes its mounts and temporary state, records nothing, and exits 130."""
    marker = f"sleep {5000 + os.getpid() % 1000}"
    build_file = tmp_path / "build.py"
    build_file.write_text(
        "import imagedsl as dsl\n"
        f"img = dsl.image({base!r}).run('echo started; {marker}', mounts=[dsl.cache('/c')])\n"
    )
    store = tmp_path / "store"
    with subprocess.Popen(
        [sys.executable, "-m", "imagedsl", "build", f"{build_file}:img", "--backend", "oci",
         "--store", str(store)],
        stderr=subprocess.PIPE,
        text=True,
    ) as process:  # fmt: skip
        assert process.stderr is not None
        line = process.stderr.readline()
        deadline = time.monotonic() + 30
        while "started" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
        assert "started" in line
        assert _processes_running(marker)
        process.send_signal(signum)
        assert process.wait(timeout=20) == 130
        assert "interrupted" in process.stderr.read()
    assert _processes_running(marker) == []
    no_leftovers(Store(store))
    planned = subprocess.run(
        [sys.executable, "-m", "imagedsl", "plan", f"{build_file}:img", "--store", str(store),
         "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(planned.stdout)["steps"][-1]["status"] == "miss"


def test_missing_root_or_runc_is_reported_before_any_work(
    base: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without root, or without runc, a plan with a RUN to execute fails before any work,
    naming what is missing and pointing to the docker backend."""
    stage = dsl.image(base).copy(dsl.context(Path(__file__).parent), "/t").run("true")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("IMAGEDSL_RUNC", "/nonexistent/runc")
    with pytest.raises(RuntimeUnavailableError) as caught:
        run_build(stage, store)
    assert caught.value.missing == ("root", "runc")
    assert "--backend docker" in str(caught.value)
    assert caught.value.location is not None
    assert not store.area(StoreArea.BLOBS).exists()
    monkeypatch.undo()
    built, _, _ = run_build(stage.cmd("x"), store)  # a plan whose RUN is a hit needs neither
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    again, _, _ = run_build(stage.cmd("x"), store)
    assert again.image.manifest_digest == built.image.manifest_digest


# -- snapshotters and extraction -------------------------------------------------------------


def test_copy_snapshotter_gives_the_same_image(
    base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where overlay mounts cannot be used, copying the layers gives the same layers."""
    stage = (
        dsl.image(base)
        .run("mkdir -p /a/b && echo 1 > /a/b/f && chmod 600 /a/b/f && rm /bin/cat && ln -s x /a/l")
        .run("rm -rf /a/b && echo 2 > /a/g && chown 1000 /a/g && echo 3 >> /etc/passwd")
    )
    overlay, _, _ = run_build(stage, Store(tmp_path / "overlay"))
    monkeypatch.setenv("IMAGEDSL_OCI_SNAPSHOTTER", "copy")
    copied, _, _ = run_build(stage, Store(tmp_path / "copy"))
    assert copied.image.layers == overlay.image.layers


def test_extraction_never_writes_outside_the_snapshot(tmp_path: Path) -> None:
    """A layer whose entries would reach outside the root through a symlink is refused by the
    extractor itself, and nothing outside the destination is written."""
    outside = tmp_path / "outside"
    outside.mkdir()
    layer = oci.tar_bytes(
        [
            oci.member("escape", kind=tarfile.SYMTYPE, linkname=str(outside)),
            oci.member("escape/pwned", data=b"x"),
        ]
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    import io

    with pytest.raises(RootfsError):
        extract_layer(io.BytesIO(layer), dest, layer="sha256:test")
    assert list(outside.iterdir()) == []


@pytest.fixture(name="stale_run")
def fixture_stale_run(store: Store) -> Path:
    """A run directory a killed build left (an hour old, nobody holding its lock)."""
    path = store.area(StoreArea.OCI_RUNS) / "deadbeef"
    (path / "upper").mkdir(parents=True)
    (path / "lock").touch()
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    return path


def test_leftovers_of_killed_runs_are_swept(base: str, store: Store, stale_run: Path) -> None:
    """The next RUN removes run directories whose build is gone."""
    run_build(dsl.image(base).run("true"), store)
    assert not stale_run.exists()


def test_locked_cache_mount_waits_for_its_lock(base: str, store: Store) -> None:
    """A ``locked`` cache mount is used by one RUN at a time: the build waits while another
    holder keeps the lock, and goes on once it is released."""
    import fcntl
    import threading

    locked = dsl.cache("/c", id="one-at-a-time", sharing="locked")
    run_build(dsl.image(base).run("echo 1 > /c/n", mounts=[locked]), store)
    home = next(store.area(StoreArea.CACHE_MOUNTS).iterdir())
    done = threading.Event()

    def build_in_background() -> None:
        run_build(dsl.image(base).run("echo 2 > /c/n", mounts=[locked]), store)
        done.set()

    with open(home / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        worker = threading.Thread(target=build_in_background)
        worker.start()
        # The marker: the build is blocked in flock on the mount's lock (a build that ignored
        # the lock would finish instead, and this wait would fail).
        wait_until(lambda: flock_waiters(home / "lock") == 1, "the build to wait for the lock")
        assert not done.is_set()
        assert (home / "data" / "n").read_text() == "1\n"
    worker.join(30)
    assert done.is_set()
    assert (home / "data" / "n").read_text() == "2\n"


_CONCURRENT = """
import imagedsl as dsl
from tests.support import oci
from imagedsl.store import Store
stage = dsl.image({base!r}).run("mkdir -p /out && echo same > /out/f", mounts=[dsl.cache("/c")])
built, _ = oci.build({{"img": stage}}, Store({store!r}))
print(built.image.manifest_digest)
"""


def test_concurrent_runs_share_one_store(base: str, tmp_path: Path) -> None:
    """Builds running the same RUN at once in one store both finish, with the same image."""
    store = tmp_path / "store"
    script = _CONCURRENT.format(base=base, store=str(store))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    digests = {process.communicate(timeout=120)[0].strip() for process in processes}
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert len(digests) == 1
    no_leftovers(Store(store))

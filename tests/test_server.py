"""Plan servers (imagedsl._client, imagedsl._server): real ``python -m imagedsl`` processes, a
real server started as users start it (a second plan soon after the first), and what a served
run sees and prints compared with the same run in the client's own process.

Each test has a private runtime directory, so its server is its own; the suite's other tests
run with ``IMAGEDSL_SERVER=0`` (conftest.py)."""

from __future__ import annotations

import codecs
import json
import marshal
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from imagedsl import _client, _watch
from tests.support.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

#: The console script, as users run it (``python -m imagedsl`` puts the working directory on
#: ``sys.path``, so each directory would have a server of its own).
IMAGEDSL = str(Path(sys.executable).with_name("imagedsl"))

BUILD = """\
import json, os, sys, time
import imagedsl as dsl

probe = os.environ.get("PROBE_FILE")
if probe:
    mask = os.umask(0)
    os.umask(mask)
    with open(probe, "a", encoding="utf-8") as out:
        record = {"pid": os.getpid(), "cwd": os.getcwd(), "value": os.environ.get("PROBE"),
                  "umask": mask, "argv": sys.argv[1:], "stdout": sys.stdout.encoding}
        out.write(json.dumps(record) + "\\n")
sleep = os.environ.get("PROBE_SLEEP")
if sleep:
    with open(sleep, "w", encoding="utf-8") as marker:
        marker.write(str(os.getpid()))
    time.sleep(300)

src = dsl.context("ctx")
app = dsl.scratch().copy(src, "/app").env(GREETING="héllo").entrypoint("/app/run")
"""


class Project:
    """A build file and its context, a store, and a runtime directory of its own."""

    def __init__(self, root: Path, runtime: Path) -> None:
        self.root = root
        self.runtime = runtime
        self.probe = root / "probe.jsonl"
        (root / "ctx").mkdir()
        for i in range(40):
            (root / "ctx" / f"f{i:02d}.txt").write_text(f"file {i}\n")
        (root / "build.py").write_text(BUILD)
        self.env = {
            **os.environ,
            "IMAGEDSL_SERVER": "1",
            "IMAGEDSL_RUNTIME_DIR": str(runtime),
            "IMAGEDSL_STORE": str(root / "store"),
            "PROBE_FILE": str(self.probe),
        }

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [IMAGEDSL, *args],
            cwd=self.root,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, **env: str) -> tuple[int, str, str, bool]:
        """(exit code, stdout, stderr, whether a server ran it: the build file ran in
        another process than the one started)."""
        process = self.start(*args, **env)
        out, err = process.communicate(timeout=120)
        records = self.records()
        served = bool(records) and records[-1]["pid"] != process.pid
        return process.returncode, out, err, served

    def records(self) -> list[dict[str, object]]:
        if not self.probe.exists():
            return []
        return [json.loads(line) for line in self.probe.read_text().splitlines()]

    def stop(self) -> subprocess.CompletedProcess[str]:
        """``imagedsl server stop`` for this project's runtime directory."""
        return subprocess.run(
            [IMAGEDSL, "server", "stop"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def sockets(self) -> list[Path]:
        return sorted(self.runtime.glob("*.sock"))

    def serve(self) -> None:
        """Plan twice here (the second starts a server), and wait for it to listen."""
        for _ in range(2):
            code, _, err, served = self.run("plan")
            assert (code, served) == (0, False), err
        wait_until(lambda: bool(self.sockets()), "the plan server's socket")


@pytest.fixture(name="project")
def fixture_project(tmp_path: Path) -> Iterator[Project]:
    # A short directory of its own: a socket's path must fit in 108 bytes.
    runtime = Path(tempfile.mkdtemp(prefix="ids-", dir="/tmp"))
    runtime.chmod(0o700)
    project = Project(tmp_path, runtime)
    try:
        yield project
    finally:
        project.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def test_one_plan_starts_no_server(project: Project) -> None:
    """A single run (as in CI) leaves nothing behind but its mark."""
    code, out, err, served = project.run("plan")
    assert (code, served) == (0, False), err
    assert "plan for build.py:app" in out
    assert project.sockets() == []


def test_served_plans_print_what_local_plans_print(project: Project) -> None:
    project.serve()
    for args in (("plan",), ("plan", "--json"), ("check",), ("plan", "build.py:nothing")):
        local = project.run(*args, IMAGEDSL_SERVER="0")
        served = project.run(*args)
        assert (served[3], local[3]) == (True, False), args
        assert served[:3] == local[:3], args
    # The unknown target: exit 2 and the error, from the server as from the client.
    assert local[0] == 2
    assert "nothing" in local[2]


def test_a_served_run_has_the_clients_directory_environment_arguments_and_umask(
    project: Project,
) -> None:
    project.serve()
    process = subprocess.Popen(
        [IMAGEDSL, "plan", "../build.py:app"],
        cwd=project.root / "ctx",
        env={**project.env, "PROBE": "the client's value", "PYTHONIOENCODING": "latin-1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        umask=0o027,
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    record = project.records()[-1]
    assert record["pid"] != process.pid
    assert record["cwd"] == str(project.root / "ctx")
    assert record["value"] == "the client's value"
    assert record["umask"] == 0o027
    assert record["argv"] == ["plan", "../build.py:app"]
    assert codecs.lookup(str(record["stdout"])).name == "iso8859-1"
    assert "GREETING=h\xe9llo".encode("latin-1") in out


def test_a_changed_module_retires_the_server(project: Project, tmp_path: Path) -> None:
    """A module the server loaded changes on disk (an upgrade, say): the request is run by
    the client, and the server leaves."""
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "sitecustomize.py").write_text("# loaded by every interpreter here\n")
    project.env["PYTHONPATH"] = str(extra)
    project.serve()
    assert project.run("plan")[3]
    (extra / "sitecustomize.py").write_text("# changed: the server's copy is stale\n")
    code, _, err, served = project.run("plan")
    assert (code, served) == (0, False), err
    wait_until(lambda: not project.sockets(), "the stale server to leave")


def test_ctrl_c_reaches_the_served_run(project: Project, tmp_path: Path) -> None:
    project.serve()
    marker = tmp_path / "sleeping"
    process = project.start("plan", PROBE_SLEEP=str(marker))
    wait_until(lambda: marker.exists() and marker.read_text() != "", "the run to start")
    child = int(marker.read_text())
    assert child != process.pid
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted" in err
    wait_until(lambda: not _alive(child), "the served run to end")


def test_a_killed_client_takes_its_run_with_it(project: Project, tmp_path: Path) -> None:
    project.serve()
    marker = tmp_path / "sleeping"
    process = project.start("plan", PROBE_SLEEP=str(marker))
    wait_until(lambda: marker.exists() and marker.read_text() != "", "the run to start")
    child = int(marker.read_text())
    process.kill()
    process.communicate(timeout=60)
    wait_until(lambda: not _alive(child), "the orphaned run to be stopped")
    assert project.run("plan")[3]  # the server goes on serving


def test_runs_at_once_are_served_at_once(project: Project) -> None:
    project.serve()
    processes = [project.start("plan", PROBE=str(i)) for i in range(4)]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], outputs
    assert len({out for out, _ in outputs}) == 1
    by_value = {r["value"]: r["pid"] for r in project.records()[-4:]}
    assert set(by_value) == {"0", "1", "2", "3"}
    assert all(by_value[str(i)] != p.pid for i, p in enumerate(processes))


def test_an_idle_server_leaves(project: Project) -> None:
    project.env["IMAGEDSL_SERVER_IDLE"] = "0.5"
    project.serve()
    wait_until(lambda: not project.sockets(), "the idle server to leave")
    assert not project.run("plan")[3]


def test_server_stop_and_the_switch(project: Project) -> None:
    project.serve()
    assert not project.run("plan", IMAGEDSL_SERVER="0")[3]
    stopped = project.stop()
    assert (stopped.returncode, stopped.stdout) == (0, "stopped 1 plan server\n")
    wait_until(lambda: not project.sockets(), "the stopped server's socket to go")
    assert not project.run("plan")[3]


@pytest.mark.parametrize(
    ("mode", "link", "usable"),
    [(0o700, False, True), (0o755, False, False), (0o777, False, False), (0o700, True, False)],
)
def test_a_runtime_directory_others_can_enter_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int, link: bool, usable: bool
) -> None:
    real = tmp_path / "runtime"
    real.mkdir()
    real.chmod(mode)
    given = tmp_path / "link" if link else real
    if link:
        given.symlink_to(real)
    monkeypatch.setenv("IMAGEDSL_RUNTIME_DIR", str(given))
    assert (_client.runtime_directory() == str(given)) is usable


def _plans_agree(project: Project) -> str:
    """A served plan prints what a plan in the client's own process prints; that output."""
    served = project.run("plan")
    local = project.run("plan", IMAGEDSL_SERVER="0")
    assert (served[3], local[3]) == (True, False), (served, local)
    assert served[:3] == local[:3]
    return served[1]


def _build(project: Project) -> None:
    """Build the image (OCI layout): later plans' misses name the files that changed."""
    built = subprocess.run(
        [IMAGEDSL, "build", "build.py", "--backend", "oci", "--output", "oci:out:t"],
        cwd=project.root,
        env={**project.env, "PROBE_FILE": ""},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr


def _missed_files(plan: str) -> list[str]:
    return sorted(line.strip()[2:] for line in plan.splitlines() if line.strip().startswith("- "))


def test_watched_plans_see_every_kind_of_edit(project: Project) -> None:
    """A server's plans take unchanged directories as last listed (imagedsl._watch): after
    each kind of edit, a served plan still prints exactly what a plan listing everything
    prints."""
    ctx = project.root / "ctx"
    (ctx / "sub" / "deep").mkdir(parents=True)
    (ctx / "sub" / "deep" / "d.txt").write_text("deep\n")
    (ctx / "other").mkdir()
    (ctx / "other" / "o.txt").write_text("other\n")
    _build(project)
    project.serve()
    _plans_agree(project)  # lists everything, watching

    def edit_in_place() -> None:
        with (ctx / "sub" / "deep" / "d.txt").open("r+b") as f:  # same size: only contents
            f.write(b"DEEP")

    def replace_with_link() -> None:
        shutil.rmtree(ctx / "other")
        (ctx / "other").symlink_to("sub")

    edits = [
        (edit_in_place, ["sub/deep/d.txt changed"]),
        (lambda: (ctx / "f03.txt").write_text("longer content now\n"), ["f03.txt changed"]),
        (lambda: (ctx / "sub" / "new.txt").write_text("new\n"), ["added sub/new.txt"]),
        (lambda: (ctx / "f04.txt").unlink(), ["removed f04.txt"]),
        (lambda: (ctx / "f05.txt").chmod(0o755), ["f05.txt mode changed: 644 -> 755"]),
        (lambda: (ctx / "sub" / "deep").rename(ctx / "sub" / "moved"), None),
        (replace_with_link, None),
    ]
    for edit, expected in edits:
        edit()
        plan = _plans_agree(project)
        if expected is not None:
            assert set(expected) <= set(_missed_files(plan)), plan


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_edits_are_planned_alike_served_and_not(
    project: Project, tmp_path: Path, seed: int
) -> None:
    """Random edits of every kind (contents, files and directories made, removed and moved,
    modes, symlinks, hard links written from outside): after each, a served plan (watching)
    prints what a plan that lists everything prints."""
    rng = random.Random(seed)
    ctx = project.root / "ctx"
    outside = tmp_path / "outside"
    outside.mkdir()
    for d in ("a", "a/b", "c"):
        (ctx / d).mkdir(parents=True, exist_ok=True)
        (ctx / d / "x.txt").write_text(f"{d}\n")
    project.serve()
    _plans_agree(project)

    def files() -> list[Path]:
        return sorted(p for p in ctx.rglob("*") if p.is_file() and not p.is_symlink())

    def dirs() -> list[Path]:
        return [ctx, *sorted(p for p in ctx.rglob("*") if p.is_dir() and not p.is_symlink())]

    def fresh(parent: Path) -> Path:
        return parent / f"n{rng.randrange(1 << 30):x}"

    def rewrite() -> None:
        path = rng.choice(files())
        with path.open("r+b") as f:  # same size: only the contents and times change
            data = f.read()
            f.seek(0)
            f.write(bytes(reversed(data)) if data else b"")

    def grow() -> None:
        rng.choice(files()).write_text(f"{rng.random()}\n")

    def create() -> None:
        fresh(rng.choice(dirs())).write_text("new\n")

    def delete() -> None:
        rng.choice(files()).unlink()

    def make_tree() -> None:
        made = fresh(rng.choice(dirs()))
        (made / "deep").mkdir(parents=True)
        (made / "deep" / "f.txt").write_text("deep\n")

    def remove_tree() -> None:
        below = dirs()[1:]
        if below:
            shutil.rmtree(rng.choice(below))

    def move() -> None:
        source = rng.choice(files() + dirs()[1:])
        target = fresh(rng.choice([d for d in dirs() if source not in d.parents and d != source]))
        source.rename(target)

    def mode() -> None:
        path = rng.choice(files())
        path.chmod(path.stat().st_mode ^ 0o111)

    def link() -> None:
        target = os.path.relpath(rng.choice(files() + dirs()), ctx)
        place = fresh(ctx)
        place.symlink_to(os.path.relpath(ctx / target, place.parent))

    def hard_link() -> None:
        name = f"h{rng.randrange(1 << 30):x}"
        (outside / name).write_text("linked\n")
        os.link(outside / name, fresh(rng.choice(dirs())))
        _plans_agree(project)
        (outside / name).write_text("written from outside, longer\n")

    edits = [rewrite, grow, create, delete, make_tree, remove_tree, move, mode, link, hard_link]
    for _ in range(12):
        if not files():
            create()
        rng.choice(edits)()
        _plans_agree(project)


def test_a_file_written_through_another_link_is_seen(project: Project, tmp_path: Path) -> None:
    """A write through a hard link outside the context reaches no watch of the context's:
    a directory holding a file with other links is listed every time."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shared.txt").write_text("one\n")
    os.link(outside / "shared.txt", project.root / "ctx" / "shared.txt")
    _build(project)
    project.serve()
    _plans_agree(project)
    (outside / "shared.txt").write_text("two, longer\n")
    assert "shared.txt changed" in _missed_files(_plans_agree(project))


def test_a_context_whose_link_points_elsewhere_is_listed_again(project: Project) -> None:
    """The context is reached through a symlink that is then pointed at another directory
    (no event reaches any watch): the root's identity is checked on every plan."""
    real = project.root / "ctx"
    other = project.root / "ctx-other"
    shutil.copytree(real, other)
    (other / "f00.txt").write_text("elsewhere\n")
    real.rename(project.root / "ctx-real")
    (project.root / "ctx").symlink_to("ctx-real")
    _build(project)
    project.serve()
    _plans_agree(project)
    (project.root / "ctx").unlink()
    (project.root / "ctx").symlink_to("ctx-other")
    assert "f00.txt changed" in _missed_files(_plans_agree(project))


def test_a_copied_directory_replaced_with_its_parent_is_listed_again(project: Project) -> None:
    """A COPY of a directory in the context scans from that directory; when a directory on
    the way to it is replaced, no watch of the scan hears of it: the scan's own directory is
    checked on every plan."""
    (project.root / "ctx" / "a" / "b").mkdir(parents=True)
    (project.root / "ctx" / "a" / "b" / "f.txt").write_text("first\n")
    header = BUILD.rpartition("src = ")[0]
    (project.root / "build.py").write_text(
        header + 'app = dsl.scratch().copy(dsl.context("ctx").dir("a/b"), "/app")\n'
    )
    _build(project)
    project.serve()
    _plans_agree(project)
    (project.root / "ctx" / "a").rename(project.root / "ctx" / "a.old")
    (project.root / "ctx" / "a" / "b").mkdir(parents=True)
    (project.root / "ctx" / "a" / "b" / "f.txt").write_text("second, longer\n")
    assert any("f.txt changed" in line for line in _missed_files(_plans_agree(project)))


def test_what_inotify_cannot_see_is_the_documented_limit(project: Project) -> None:
    """A write through a shared memory mapping brings no inotify event: a watched plan
    takes the directory as it was (docs/getting-started.md says so), while a server started
    with IMAGEDSL_WATCH=0 lists it, as a plan in the client's own process does. (This is
    also what shows that a watched plan reuses what it listed.)"""
    target = project.root / "ctx" / "f07.txt"
    with target.open("r+b") as f:
        mapped = mmap.mmap(f.fileno(), 0)
    _build(project)
    project.serve()
    _plans_agree(project)
    mapped[:4] = b"FILE"
    mapped.flush()
    served, local = project.run("plan"), project.run("plan", IMAGEDSL_SERVER="0")
    assert "f07.txt changed" in _missed_files(local[1])
    assert "f07.txt changed" not in _missed_files(served[1])
    assert project.stop().returncode == 0
    project.env["IMAGEDSL_WATCH"] = "0"
    mapped[:4] = b"MORE"
    mapped.flush()
    mapped.close()
    project.serve()
    assert "f07.txt changed" in _missed_files(_plans_agree(project))


def test_a_watcher_keeps_the_newest_listings_within_its_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a server keeps of its plans' listings is bounded by count and bytes; the scans
    reported longest ago go first, and a scan reported again is the newest."""
    watcher = _watch.Watcher()
    monkeypatch.setattr(_watch, "_MAX_BYTES", 1000)

    def report(key: str, size: int) -> bytes:
        listed: dict[str, _watch.Listed] = {"": (1, b"x" * size, b"signature", [], True)}
        return marshal.dumps(({key: ((1, 2), listed)}, ["/store/stat/part"]))

    try:
        for i in range(3):
            watcher.take(report(f"k{i}", 400), i)
        assert list(watcher.baselines) == ["k1", "k2"]
        assert list(watcher.pending) == ["/store/stat/part"]
        monkeypatch.setattr(_watch, "_MAX_BASELINES", 1)
        watcher.take(report("k1", 10), 5)
        assert list(watcher.baselines) == ["k1"]
        assert watcher.baselines["k1"][0] == 5
        watcher.take(b"not a report", 6)  # a child killed mid-report gives nothing
        assert list(watcher.baselines) == ["k1"]
    finally:
        os.close(watcher.fd)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"

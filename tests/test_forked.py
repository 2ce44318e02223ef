"""Jobs in forked processes (imagedsl._forked), and the file hashing that uses them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from imagedsl import _cores, _filehash
from imagedsl._cores import fork_is_safe
from imagedsl._filehash import BIG_FILE, hash_file, hash_files
from imagedsl._forked import ForkedJobs, WorkerDied
from imagedsl.errors import ContextError, InputError, exit_code_of
from tests.support.cli import imagedsl
from tests.support.waiting import wait_until


def _children() -> list[str]:
    listed = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return listed.read_text().split() if listed.exists() else []


@attrs.define
class _Refused(InputError):
    what: str
    why: str

    def __str__(self) -> str:
        return f"{self.what}: {self.why}"


class _Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a} and {b}")


def test_results_come_back_in_any_order_asked() -> None:
    """Each job runs in a child (not here), once; results are asked for in any order."""
    parent = os.getpid()
    jobs = [lambda i=i: (i * i, os.getpid()) for i in range(9)]
    with ForkedJobs(jobs, 3) as forked:
        results = {i: forked.result(i) for i in (8, 0, 5, 1, 2, 3, 4, 6, 7)}
    assert {i: square for i, (square, _) in results.items()} == {i: i * i for i in range(9)}
    pids = {pid for _, pid in results.values()}
    assert parent not in pids
    assert 1 <= len(pids) <= 3
    assert not _children()


def test_a_job_s_exception_is_raised_where_its_result_is_asked_for() -> None:
    """An error keeps its type and data; one that cannot be pickled becomes a RuntimeError
    that names it; the other jobs still give their results."""

    def refuse() -> int:
        raise _Refused("layer app/x", "changed since it was planned")

    def odd() -> int:
        raise _Unpicklable(1, 2)

    with ForkedJobs([lambda: 1, refuse, odd, lambda: 4], 2) as forked:
        with pytest.raises(_Refused) as raised:
            forked.result(1)
        assert (raised.value.what, raised.value.why) == (
            "layer app/x",
            "changed since it was planned",
        )
        with pytest.raises(RuntimeError, match="_Unpicklable: 1 and 2"):
            forked.result(2)
        assert (forked.result(0), forked.result(3)) == (1, 4)
    assert not _children()


def test_a_child_that_dies_is_reported_and_reaped() -> None:
    """A child that ends without a result (killed, or ``os._exit``) fails the build with an
    error of the environment (exit status 1) saying how it ended."""

    def killed() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with ForkedJobs([lambda: os._exit(3), killed], 2) as forked:
        with pytest.raises(WorkerDied, match=r"exited with status 3") as raised:
            forked.result(0)
        assert exit_code_of(raised.value) == 1
        with pytest.raises(WorkerDied, match=r"was killed by signal 9"):
            forked.result(1)
    assert not _children()
    # One child answers a job, then dies on the next: the answer is kept.
    with ForkedJobs([lambda: 1, killed, lambda: 3, lambda: 4], 1) as alone:
        assert alone.result(0) == 1
        for job in (1, 2, 3):
            with pytest.raises(WorkerDied, match="signal 9"):
                alone.result(job)
    assert not _children()
    # Both children die; the jobs never handed out fail too, rather than wait forever.
    jobs: list[Callable[[], object]] = [killed, killed, *(lambda n=n: n for n in range(4))]
    with ForkedJobs(jobs, 2) as every:
        for job in (5, 0, 1, 2, 3, 4):
            with pytest.raises(WorkerDied):
                every.result(job)
    assert not _children()


def test_closing_stops_a_running_job_and_runs_its_cleanup(tmp_path: Path) -> None:
    """Closing while a job runs stops it (SIGTERM) rather than waiting for it to finish; its
    ``finally`` blocks run (so a temporary file it was writing is removed), and no child is
    left behind."""
    started, finished, cleaned = (tmp_path / name for name in ("started", "finished", "cleaned"))

    def slow() -> None:
        try:
            started.write_text("yes")
            time.sleep(3600)
            finished.write_text("yes")
        finally:
            cleaned.write_text("yes")

    forked = ForkedJobs([slow], 2)
    wait_until(started.exists, "the job to start")
    forked.close()
    assert cleaned.read_text() == "yes"
    assert not finished.exists()
    assert not _children()


def test_forking_only_when_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread (whose locks a child would inherit held), a single worker, one core, or
    IMAGEDSL_FORK=0 mean no fork."""
    monkeypatch.delenv("IMAGEDSL_FORK", raising=False)
    monkeypatch.setattr(_cores, "cores", lambda: 2)
    assert threading.active_count() == 1, "this test needs to run alone in its process"
    assert fork_is_safe(2)
    assert not fork_is_safe(1)
    monkeypatch.setenv("IMAGEDSL_FORK", "0")
    assert not fork_is_safe(2)
    monkeypatch.delenv("IMAGEDSL_FORK")
    monkeypatch.setattr(_cores, "cores", lambda: 1)
    assert not fork_is_safe(2)
    monkeypatch.setattr(_cores, "cores", lambda: 2)
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert not fork_is_safe(2)
    finally:
        release.set()
        other.join()
    assert fork_is_safe(2)


def test_no_process_to_be_had(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the system refuses a process (EAGAIN) after the first, the one forked is waited
    for, no pipe is left open, and the work is done on threads: the same digests."""
    real_fork = os.fork
    forks = [0]

    def second_refused() -> int:
        forks[0] += 1
        if forks[0] > 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    open_before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fork", second_refused)
    assert ForkedJobs.start([lambda: 1, lambda: 2], 2) is None
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert not _children()
    monkeypatch.setattr(_filehash, "cores", lambda: 2)
    monkeypatch.setattr(_cores, "cores", lambda: 2)
    files = []
    for i in range(100):
        (tmp_path / f"f{i}").write_bytes(os.urandom(i * 101))
        files.append((f"f{i}", i * 101))
    forks[0] = 0
    digests = list(hash_files(str(tmp_path), files, lambda *_: None))
    assert forks[0] == 2
    assert digests == [hash_file(str(tmp_path / name), size) for name, size in files]
    assert not _children()


def test_a_forked_child_hashes_big_files_on_its_own_thread() -> None:
    """blake3's shared pool of threads does not survive a fork: a child must not use it."""
    assert _filehash._threads != 1
    with ForkedJobs([lambda: _filehash._threads], 2) as forked:
        assert forked.result(0) == 1
    assert _filehash._threads != 1


@pytest.mark.parametrize("fork", ["1", "0"])
def test_hashing_many_files_on_processes_or_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork: str
) -> None:
    """Processes or threads, the digests are each file's, in order, with progress after each
    batch; a file that cannot be read is a ContextError naming it."""
    monkeypatch.setenv("IMAGEDSL_FORK", fork)
    monkeypatch.setattr(_filehash, "cores", lambda: 2)
    files = []
    for i in range(300):
        data = os.urandom(i * 37) if i != 7 else os.urandom(BIG_FILE + 5)
        (tmp_path / f"f{i}").write_bytes(data)
        files.append((f"f{i}", len(data)))
    progress: list[tuple[int, int]] = []
    digests = list(hash_files(str(tmp_path), files, lambda n, b: progress.append((n, b))))
    assert digests == [hash_file(str(tmp_path / name), size) for name, size in files]
    assert len(progress) > 1
    assert progress[-1] == (len(files), sum(size for _, size in files))
    assert not _children()

    (tmp_path / "f200").unlink()
    with pytest.raises(ContextError, match="cannot read f200"):
        list(hash_files(str(tmp_path), files, lambda *_: None))
    assert not _children()


_SLOW_DRIVER = """
import os, sys, time
from imagedsl.backends.oci import layer
finish = layer.LayerStream.finish

def stalled(self):
    # A part half written (its temporary blob holds bytes) when the interrupt comes.
    with open(os.environ["READY"], "a") as ready:
        ready.write(f"{os.getpid()}\\n")
    time.sleep(60)
    return finish(self)

layer.LayerStream.finish = stalled
from imagedsl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("whole_group", [True, False], ids=["ctrl-c", "kill-int"])
def test_an_interrupted_build_leaves_no_worker_and_no_partial_blob(
    tmp_path: Path, whole_group: bool
) -> None:
    """Ctrl-C (SIGINT to the whole process group) or SIGINT to the command alone, while
    forked processes write the parts of a split COPY: the command exits 130, its workers
    are gone (none left running or unreaped), no temporary blob is left in the store, and
    the next build makes the same image as a build from an empty store."""
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "model.bin").write_bytes(os.urandom(2 << 20))
    for i in range(200):
        (ctx / "src" / f"mod{i}.py").write_text(f"VALUE = {i}\n" * 50)
    (tmp_path / "build.py").write_text(
        "import imagedsl as dsl\n"
        "app = dsl.scratch().copy(dsl.context('ctx'), '/app', layers='auto')\n"
    )
    (tmp_path / "slow.py").write_text(_SLOW_DRIVER)
    store = tmp_path / "store"

    def argv(out: Path) -> list[str]:
        return ["build", "build.py:app", "--backend", "oci", "--progress", "quiet",
                "--output", f"oci:{out}:app"]  # fmt: skip

    stderr = _interrupted(
        tmp_path, [*argv(tmp_path / "out"), "--store", str(store)], whole_group=whole_group
    )
    assert "interrupted" in stderr
    leftovers = [p.name for p in store.rglob("*") if p.name.startswith(".incoming.")]
    assert leftovers == []
    assert not (tmp_path / "out" / "index.json").exists()

    for again, again_store in (
        (argv(tmp_path / "out"), store),
        (argv(tmp_path / "out2"), tmp_path / "store2"),
    ):
        done = imagedsl(*again, cwd=tmp_path, store=again_store)
        assert done.returncode == 0, done.stderr
    index, fresh = (json.loads((tmp_path / o / "index.json").read_text()) for o in ("out", "out2"))
    assert index["manifests"][0]["digest"] == fresh["manifests"][0]["digest"]


def _interrupted(tmp_path: Path, argv: list[str], *, whole_group: bool) -> str:
    """Run ``tmp_path/slow.py ARGV`` (a driver whose forked workers stall, each noting its
    pid in ``tmp_path/ready``); once two workers stall, send SIGINT to the whole process
    group (Ctrl-C) or to the command alone. The command must exit 130 without a traceback,
    and its workers must be gone (neither running nor unreaped). Returns its stderr."""
    ready = tmp_path / "ready"
    env = {**os.environ, "READY": str(ready), "IMAGEDSL_FORK": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "slow.py"), *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_until(lambda: len(_pids(ready)) == 2 or proc.poll() is not None, "both workers")
    workers = _pids(ready)
    assert len(workers) == 2, proc.communicate(timeout=5)
    if whole_group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # neither running nor a zombie: reaped
    return stderr


def _pids(ready: Path) -> list[int]:
    return [int(line) for line in ready.read_text().split()] if ready.exists() else []


_SLOW_HASHING = """
import os, sys, time
from imagedsl import _filehash
hash_batch = _filehash._hash_batch

def stalled(root, files):
    if os.getpid() != int(os.environ["PARENT"]):  # in a worker: stall with a batch half done
        with open(os.environ["READY"], "a") as ready:
            ready.write(f"{os.getpid()}\\n")
        time.sleep(3600)
    return hash_batch(root, files)

_filehash._hash_batch = stalled
os.environ["PARENT"] = str(os.getpid())
from imagedsl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_workers_hash_a_cold_context(tmp_path: Path) -> None:
    """Ctrl-C while forked processes hash a cold context: exit 130, no worker left running or
    unreaped, and the next plan hashes what it must and plans as a fresh store does."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for i in range(300):
        (ctx / f"f{i}.txt").write_text(f"file {i}\n" * 40)
    (tmp_path / "build.py").write_text(
        "import imagedsl as dsl\napp = dsl.scratch().copy(dsl.context('ctx'), '/app')\n"
    )
    (tmp_path / "slow.py").write_text(_SLOW_HASHING)
    argv = ["plan", "--json", "build.py"]
    _interrupted(tmp_path, [*argv, "--store", str(tmp_path / "store")], whole_group=True)
    keys = []
    for store in ("store", "fresh"):
        done = imagedsl(*argv, cwd=tmp_path, store=tmp_path / store)
        assert done.returncode == 0, done.stderr
        keys.append([step["key"] for step in json.loads(done.stdout)["steps"]])
    assert keys[0] == keys[1]

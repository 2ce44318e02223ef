"""Independent jobs run in forked child processes, each child taking the next job when it is
done with one: for work whose Python part (per file: arranging entries, tar headers, the layer
index) would hold the GIL and leave threads waiting on each other.

The jobs are closures over the parent's state, which the children see as it was when they were
forked: nothing is sent to them but a job's number, and they send back its result (marshalled
when it is plain data, else pickled) or its exception. A child never returns into the parent's
code: it leaves with ``os._exit``, so no ``atexit`` handler, buffered output or ``finally`` of
the parent runs twice.

Forking is only safe while no other thread runs (a lock another thread holds stays held in the
child): callers ask :func:`~imagedsl._cores.fork_is_safe` first, and use threads otherwise.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, Generic, TypeVar

import attrs

from imagedsl.errors import EnvironmentFailure

T = TypeVar("T")

_LENGTH: Final = struct.Struct("<Q")
_STOP: Final = 0xFFFFFFFF
_SIGTERM: Final = 15  # signal.SIGTERM on Linux (importing signal costs a warm plan 0.5 ms)
_MARSHALLED: Final = b"M"
_PICKLED: Final = b"P"
#: Jobs handed to a child before its first is done.
_QUEUED: Final = 2


@attrs.define
class WorkerDied(EnvironmentFailure):
    """A forked worker ended without sending the result of the job it was running (killed:
    by the kernel's out-of-memory killer, say). ``status``: its exit status, or minus the
    signal that ended it."""

    pid: int
    status: int

    def __str__(self) -> str:
        how = (
            f"was killed by signal {-self.status}"
            if self.status < 0
            else f"exited with status {self.status}"
        )
        return f"a worker process ({self.pid}) {how} before it finished its part of the build"


class ForkedJobs(Generic[T]):
    """Runs ``jobs`` in up to ``workers`` forked children; :meth:`result` gives one's result.

    Jobs are handed out in the order given, each child holding up to :data:`_QUEUED` at a
    time (so it never waits for this process to hand it the next), so results asked for in
    that order arrive about as soon as they can. Call :meth:`close` when done (or on failure:
    it stops the children and waits for them).
    """

    def __init__(self, jobs: Sequence[Callable[[], T]], workers: int) -> None:
        self._jobs = jobs
        self._next = 0
        self._results: dict[int, tuple[bool, Any]] = {}
        self._died: WorkerDied | None = None
        #: Per child: [pid, task pipe, result pipe, the jobs it was handed, oldest first].
        self._children: list[list[Any]] = []
        try:
            for _ in range(max(1, min(workers, len(jobs)))):
                self._fork()
            for _ in range(_QUEUED):
                for child in self._children:
                    self._assign(child)
        except BaseException:
            self.close()
            raise

    @classmethod
    def start(cls, jobs: Sequence[Callable[[], T]], workers: int) -> ForkedJobs[T] | None:
        """The jobs started; None when the system refuses a pipe or a process (``EAGAIN``,
        ``ENOMEM``): the caller then does the work some other way."""
        try:
            return cls(jobs, workers)
        except OSError:
            return None

    def _fork(self) -> None:
        task_read, task_write = os.pipe()
        try:
            result_read, result_write = os.pipe()
        except OSError:
            os.close(task_read)
            os.close(task_write)
            raise
        try:
            pid = os.fork()
        except OSError:
            for fd in (task_read, task_write, result_read, result_write):
                os.close(fd)
            raise
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            status = 1
            try:
                os.close(task_write)
                os.close(result_read)
                for other in self._children:  # the pipes of children forked before
                    os.close(other[1])
                    os.close(other[2])
                import signal

                signal.signal(signal.SIGTERM, _stop_child)
                signal.signal(signal.SIGINT, _stop_child)
                _serve(self._jobs, task_read, result_write)
                status = 0
            finally:
                os._exit(status)
        os.close(task_read)
        os.close(result_write)
        self._children.append([pid, task_write, result_read, []])

    def _assign(self, child: list[Any]) -> None:
        """Hand ``child`` the next job, if there is one and it is alive."""
        if self._next < len(self._jobs) and child[0]:
            try:
                os.write(child[1], _LENGTH.pack(self._next))
            except BrokenPipeError:  # it has died (its own job killed it, say)
                self._lost(child)
                return
            child[3].append(self._next)
            self._next += 1

    def _lost(self, child: list[Any]) -> None:
        """A child died: take the results it sent before, reap it; every other job it held
        fails with :class:`WorkerDied`."""
        while child[3] and (message := _receive(child[2])) is not None:
            self._results[child[3].pop(0)] = _decoded(message)
        pid, status = os.waitpid(child[0], 0)
        child[0] = 0
        died = self._died = WorkerDied(pid, os.waitstatus_to_exitcode(status))
        self._results.update((lost, (False, died)) for lost in child[3])
        child[3] = []

    def result(self, job: int) -> T:
        """The result of ``job`` (waiting for it); the exception it raised is raised here."""
        while job not in self._results:
            busy = {child[2]: child for child in self._children if child[3]}
            if not busy:  # every child died before this job was handed out
                assert self._died is not None, f"job {job} was never handed out"
                raise self._died
            ready, _, _ = select.select(list(busy), [], [])
            for fd in ready:
                child = busy[fd]
                message = _receive(fd)
                if message is None:  # it died: so did every job it held
                    self._lost(child)
                    continue
                self._results[child[3].pop(0)] = _decoded(message)
                self._assign(child)
        ok, value = self._results.pop(job)
        if not ok:
            raise value
        result: T = value
        return result

    def close(self) -> None:
        """Let the children go and wait for them; one still running a job is stopped first
        (SIGTERM, on which it removes what it was writing)."""
        for child in self._children:
            if child[0] and child[3]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child[0], _SIGTERM)
            with contextlib.suppress(OSError):  # it has gone already
                os.write(child[1], _LENGTH.pack(_STOP))
            os.close(child[1])
            os.close(child[2])
            if child[0]:
                os.waitpid(child[0], 0)
                child[0] = 0
        self._children = []

    def __enter__(self) -> ForkedJobs[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _stop_child(_signum: int, _frame: object) -> None:  # pragma: no cover - in the child
    """The first SIGTERM or SIGINT (Ctrl-C reaches the whole process group, and the parent
    then sends SIGTERM) unwinds the job, running its cleanup; later ones must not interrupt
    that cleanup (a temporary blob would be left behind), so they are ignored."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(1)


def _serve(
    jobs: Sequence[Callable[[], object]], tasks: int, results: int
) -> None:  # pragma: no cover - in the child
    while True:
        header = _read_exactly(tasks, _LENGTH.size)
        if header is None:
            return
        (job,) = _LENGTH.unpack(header)
        if job == _STOP:
            return
        try:
            reply = _encoded(jobs[job]())
        except Exception as error:
            reply = _pickled_error(error)
        os.write(results, _LENGTH.pack(len(reply)))
        view = memoryview(reply)
        while view:
            view = view[os.write(results, view) :]


def _encoded(result: object) -> bytes:  # pragma: no cover - in the child
    """A result as a message: marshalled when it is plain data (lists of digests, listings:
    the parent then never imports pickle, which a warm plan would pay for), else pickled."""
    try:
        return _MARSHALLED + marshal.dumps(result)  # type: ignore[arg-type]
    except ValueError:
        import pickle

        return _PICKLED + pickle.dumps((True, result))


def _decoded(message: bytes) -> tuple[bool, Any]:
    """(whether the job succeeded, its result or exception) from a message."""
    if message[:1] == _MARSHALLED:
        return True, marshal.loads(message[1:])
    import pickle

    ok_and_value: tuple[bool, Any] = pickle.loads(message[1:])
    return ok_and_value


def _pickled_error(error: Exception) -> bytes:  # pragma: no cover - in the child
    """The exception, pickled so that it unpickles (or a RuntimeError naming it)."""
    import pickle

    try:
        reply = pickle.dumps((False, error))
        pickle.loads(reply)
    except Exception:
        reply = pickle.dumps((False, RuntimeError(f"{type(error).__name__}: {error}")))
    return _PICKLED + reply


def _receive(fd: int) -> bytes | None:
    """One message from a child, or None when it closed its end first."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    return _read_exactly(fd, _LENGTH.unpack(header)[0])


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts = []
    while size:
        part = os.read(fd, min(size, 1 << 20))
        if not part:
            return None
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


__all__ = ["ForkedJobs", "WorkerDied"]

"""The plan server: imagedsl imported once, a forked child per ``plan`` or ``check``.

Started by :mod:`imagedsl._client` (detached, in its own session) with the client's
interpreter, flags and ``sys.path``, it imports what a plan needs, records the stat values of
every module file it loaded, and listens on a Unix socket in the user's private runtime
directory. For each request it checks that

- the peer is this user (``SO_PEERCRED``), the protocol and the client's identity (interpreter,
  ``sys.path``, flags) are its own;
- no module it loaded has changed on disk since (an upgrade, an edit of an editable install);

then forks. The child takes the client's three streams (passed as file descriptors), working
directory, environment, umask and locale, and runs :func:`imagedsl.cli.main` as the client
would have; the server sends the child's pid, then its wait status when it ends, and kills it
(SIGTERM) if the client goes away first. A request that fails a check is refused (the client
runs the command itself) and a changed module makes the server leave.

While it waits, the server unmarshals the stat-cache files its last child read or wrote
(:func:`imagedsl._statcache.preparse`): the next child finds each value by the digest it
checks anyway, instead of unmarshalling it on the plan's time.

The server leaves after :func:`~imagedsl._client.idle_seconds` with no request and no child,
when its socket is removed or replaced, or on a ``stop`` request (``imagedsl server stop``).
It never runs a request's code in its own process: children see the server's memory as it was
after the imports, so nothing a run does (its caches, the modules a build file imports) can
reach another run.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any, Final

from imagedsl import _client, _statcache, _watch

#: What a plan or check imports, loaded before the server forks its first child.
PRELOAD: Final = (
    "imagedsl",
    "imagedsl.cli",
    "imagedsl.api",
    "imagedsl.loader",
    "imagedsl.planner",
    "imagedsl.graph",
    "imagedsl.treehash",
    "imagedsl._statcache",
    "imagedsl._forked",
    "imagedsl.check",
    "imagedsl.check.engine",
    "imagedsl._terminal",
    "imagedsl.lockfile",
    "imagedsl.check.sarif",
    "shutil",
    "locale",
)
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
_REQUEST_SECONDS: Final = 10.0  # a client has this long to send its request
_TICK_SECONDS: Final = 30.0  # how often an idle server looks at its socket


def serve(path: str, identity: tuple[Any, ...]) -> None:
    """Listen on ``path`` until idle; requests must come from a process of ``identity``
    (:func:`imagedsl._client.identity`)."""
    if _client.identity() != identity:
        return  # started with other flags or paths than the client's: it would refuse all
    try:  # children are waited for through pidfds (Linux 5.3)
        os.close(os.pidfd_open(os.getpid()))
    except (OSError, AttributeError):
        return
    for name in PRELOAD:
        __import__(name)
    from imagedsl import _arguments

    for command in _client.SERVED:
        _arguments.parser(command)
    _watch.start()
    server = _Server(path, identity, _module_files())
    with server.listening():
        gc.collect()
        gc.freeze()  # the children never copy the imports' pages to update reference counts
        server.run()


def stop_all(directory: str) -> int:
    """Ask every server in ``directory`` to leave; how many were asked."""
    asked = 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".sock"):
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            try:
                sock.connect(os.path.join(directory, name))
                sock.sendall(_client.framed((_client.PROTOCOL, "stop")))
                sock.recv(1)
            except OSError:
                continue
            asked += 1
    return asked


def _module_files() -> dict[str, tuple[int, int, int]]:
    """Each loaded module's file: (inode, size, mtime_ns)."""
    found: dict[str, tuple[int, int, int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path not in found:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                found[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


class _Server:
    def __init__(
        self, path: str, identity: tuple[Any, ...], files: dict[str, tuple[int, int, int]]
    ) -> None:
        self.path = path
        self.identity = identity
        self.files = files
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.inode = 0
        #: Per running child's pidfd: (pid, the client's connection).
        self.children: dict[int, tuple[int, socket.socket]] = {}
        #: Per running child's pidfd: the pipe its report comes through (what its scans
        #: listed, for the watcher), the bytes read so far, and the count it was forked at.
        self.reports: dict[int, tuple[int, bytearray, int]] = {}
        #: Connections whose client went away (their children are being stopped).
        self.abandoned: set[int] = set()
        self.accepting = True
        self.watcher = _watch.WATCHER

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """Bound to a fresh name, then renamed over ``path`` (a client never connects to a
        half-made socket); unlinked on the way out if it is still ours."""
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        self.listener.bind(temporary)
        os.chmod(temporary, 0o600)
        self.listener.listen(64)
        os.rename(temporary, self.path)
        self.inode = os.stat(self.path).st_ino
        try:
            yield
        finally:
            self._close_listener()

    def run(self) -> None:
        idle = _client.idle_seconds()
        last = time.monotonic()
        while self.accepting or self.children:
            waiting = [*self.children] + [
                conn.fileno()
                for _, conn in self.children.values()
                if conn.fileno() not in self.abandoned
            ]
            reports = {fd: pidfd for pidfd, (fd, _, _) in self.reports.items() if fd >= 0}
            waiting += reports
            watcher = self.watcher
            if watcher is not None:
                waiting.append(watcher.fd)
            if self.accepting:
                waiting.append(self.listener.fileno())
            timeout = min(_TICK_SECONDS, max(0.0, last + idle - time.monotonic()))
            if watcher is not None and watcher.pending:
                timeout = 0.0  # stat-cache files to unmarshal, one per round, while idle
            ready, _, _ = select.select(waiting, [], [], timeout)
            if not ready and watcher is not None and watcher.pending:
                _preparse_one(watcher)
                continue
            if ready:
                last = time.monotonic()
            elif not self.children and time.monotonic() - last >= idle:
                break
            elif not self._still_ours():
                self._close_listener()
            self._handle(set(ready), reports)

    def _handle(self, ready: set[int], reports: dict[int, int]) -> None:
        """What the descriptors ``ready`` ask for, in an order where none is closed before
        it is handled and none is made (by accepting) before the old ones are done."""
        watcher = self.watcher
        if watcher is not None and watcher.fd in ready:
            watcher.drain()
        for fd, pidfd in reports.items():
            if fd in ready and self.reports.get(pidfd, (-1,))[0] == fd:
                self._read_report(pidfd)
        for pid, conn in list(self.children.values()):
            if conn.fileno() in ready:
                self._client_went_away(pid, conn)
        for pidfd in [fd for fd in self.children if fd in ready]:
            self._reap(pidfd)
        if self.accepting and self.listener.fileno() in ready:
            self._accept()

    def _still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _close_listener(self) -> None:
        if self.accepting and self._still_ours():
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.accepting = False
        self.listener.close()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        fds: list[int] = []
        try:
            conn.settimeout(_REQUEST_SECONDS)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            if _PEERCRED.unpack(creds)[1] != os.getuid():
                raise ConnectionError("another user's process")
            request, fds = _read_request(conn)
            if request[:2] == (_client.PROTOCOL, "stop"):
                conn.sendall(_client.ENDED)
                self._close_listener()
                conn.close()
                return
            if not self._acceptable(request, fds):
                conn.sendall(_client.REFUSED)
                conn.close()
                return
            self._start(request, fds, conn)
        except (OSError, ValueError, TypeError, EOFError):
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _start(self, request: tuple[Any, ...], fds: list[int], conn: socket.socket) -> None:
        """Fork the child that runs ``request``. It waits for a go-ahead, sent once the
        child is ours to reap and its client has its pid: a request either runs here or, if
        anything fails before that, in the client, never in both."""
        watcher = self.watcher
        report_read, report_write = os.pipe() if watcher is not None else (-1, -1)
        go_read, go_write = os.pipe()
        if watcher is not None:
            watcher.forking()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            self.listener.close()
            for pidfd, (_, other) in self.children.items():
                os.close(pidfd)
                other.close()
            for report, _, _ in self.reports.values():
                if report >= 0:
                    os.close(report)
            for fd in (report_read, go_write):
                if fd >= 0:
                    os.close(fd)
            if os.read(go_read, 1) != b"g":
                os._exit(1)  # the server gave up on this request: the client runs it
            os.close(go_read)
            _run_child(request, fds, conn, report_write)
        for fd in (report_write, go_read):
            if fd >= 0:
                os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            os.close(go_write)  # the child leaves without running anything
            if report_read >= 0:
                os.close(report_read)
            os.waitpid(pid, 0)
            raise
        self.children[pidfd] = (pid, conn)
        if watcher is not None:
            os.set_blocking(report_read, False)
            self.reports[pidfd] = (report_read, bytearray(), watcher.forked_at)
        with contextlib.suppress(OSError):  # the child does it too: whichever is first
            os.setpgid(pid, pid)
        try:
            conn.settimeout(None)
            conn.sendall(_client.STARTED + pid.to_bytes(4, "little"))
            os.write(go_write, b"g")
        except OSError:
            self.abandoned.add(conn.fileno())  # no go-ahead: the child leaves; reaped later
        finally:
            os.close(go_write)

    def _acceptable(self, request: tuple[Any, ...], fds: list[int]) -> bool:
        """Whether the request may run here: a run request of our protocol and identity, with
        three streams, while every module we loaded is as it was."""
        if request[:2] != (_client.PROTOCOL, "run") or len(request) != 8 or len(fds) != 3:
            return False
        if tuple(request[2]) != self.identity:
            return False
        if _module_files() != self.files:
            self._close_listener()  # an upgrade or an edit: a new server will load the new code
            return False
        return True

    def _read_report(self, pidfd: int) -> None:
        """Read what a child's report pipe holds; at its end, give the report to the
        watcher (an exit without a whole report gives nothing)."""
        fd, data, forked_at = self.reports[pidfd]
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
                data.clear()
            if not chunk:
                break
            data += chunk
        os.close(fd)
        self.reports[pidfd] = (-1, data, forked_at)
        if self.watcher is not None and data:
            self.watcher.take(bytes(data), forked_at)

    def _reap(self, pidfd: int) -> None:
        """A child ended: its status to its client, then its report (whose end is in its
        pipe by now) to the watcher, before the next request is accepted."""
        pid, conn = self.children.pop(pidfd)
        self.abandoned.discard(conn.fileno())
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 1 << 8
        with contextlib.suppress(OSError):
            conn.sendall(_client.ENDED + status.to_bytes(4, "little"))
        conn.close()
        if pidfd in self.reports:
            if self.reports[pidfd][0] >= 0:
                self._read_report(pidfd)
            del self.reports[pidfd]
        os.close(pidfd)

    def _client_went_away(self, pid: int, conn: socket.socket) -> None:
        """A client's connection became readable: a client sends nothing after its request,
        so it closed (killed, say). Its child's process group is stopped; the reaping
        follows."""
        self.abandoned.add(conn.fileno())
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)


def _preparse_one(watcher: _watch.Watcher) -> None:
    """Unmarshal one stat-cache file a plan used, unless it is as when last unmarshalled."""
    path = next(iter(watcher.pending))
    del watcher.pending[path]
    try:
        with open(path, "rb") as file:
            st = os.fstat(file.fileno())
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            if watcher.parsed.get(path) == identity:
                return
            data = file.read()
    except OSError:
        return
    _statcache.preparse(data)
    watcher.parsed[path] = identity


def _read_request(conn: socket.socket) -> tuple[tuple[Any, ...], list[int]]:
    """The request, unmarshalled, and the file descriptors that came with it."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < 8:
        data += _exactly(conn, 8 - len(data))
    size = int.from_bytes(data[:8], "little")
    if size > 1 << 26:
        raise ValueError("request too large")
    body = data[8:] + _exactly(conn, size - (len(data) - 8))
    request = marshal.loads(body)
    if not isinstance(request, tuple):
        raise ValueError("not a request")
    return request, list(fds)


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = _client.receive(conn, size)
    if len(data) < size:
        raise EOFError("the client closed its connection mid-request")
    return data


def _run_child(request: tuple[Any, ...], fds: list[int], conn: socket.socket, report: int) -> None:
    """In the forked child: become the client's process and run its command, then send the
    watcher's report (what its scans listed) if it succeeded; never returns."""
    code = 1
    try:
        conn.close()
        _, _, _, words, cwd, environ, umask, streams = request
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            if fd > 2:
                os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        os.setpgid(0, 0)  # a group of its own, as a terminal's foreground job: the client
        # forwards its signals to the group (to the forked listers and writers too)
        os.chdir(cwd)
        os.umask(umask)
        os.environ.clear()
        os.environ.update(environ)
        time.tzset()
        with contextlib.suppress(Exception):
            import locale

            locale.setlocale(locale.LC_CTYPE, "")
        _reopen_streams(streams)
        sys.argv = ["imagedsl", *words]
        from imagedsl.cli import main

        code = main(words)
    except SystemExit as leaving:
        code = leaving.code if isinstance(leaving.code, int) else 1
    except BaseException:  # the child must reach os._exit, whatever happened
        with contextlib.suppress(Exception):
            import traceback

            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if report >= 0:
            with contextlib.suppress(Exception):
                if code == 0 and _watch.WATCHER is not None:
                    _write_all(report, _watch.WATCHER.report())
                os.close(report)
        os._exit(code)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _reopen_streams(streams: list[tuple[str | None, str | None]]) -> None:
    """``sys.stdin``, ``sys.stdout`` and ``sys.stderr`` on descriptors 0-2, with the client's
    encodings and error handlers, buffered as Python buffers them (line by line on a terminal,
    and always for stderr)."""
    made = []
    for fd, (encoding, errors) in enumerate(streams):
        made.append(
            open(  # noqa: SIM115 - they live as long as the process
                fd,
                "r" if fd == 0 else "w",
                encoding=encoding or "utf-8",
                errors=errors or "strict",
                closefd=False,
                buffering=-1,
            )
        )
        if fd > 0:
            made[-1].reconfigure(line_buffering=fd == 2 or os.isatty(fd))
    sys.stdin, sys.stdout, sys.stderr = made

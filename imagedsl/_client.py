"""The ``imagedsl`` command's front door: a plan handed to a running plan server, or run here.

A warm ``imagedsl plan`` spends half its time importing imagedsl (and attrs, networkx,
blake3). A plan server (:mod:`imagedsl._server`) has them imported already: this module
connects to it, passes the command line, working directory, environment, ``sys.path``, umask
and the three standard streams (as file descriptors), and waits for the exit status of the
child it forks for the run. The child runs exactly what this process would run
(:func:`imagedsl.cli.main`), with this process's streams, directory and environment.

Only ``plan`` and ``check`` go to a server: they read the build file, the context and the
store, and write only the store's caches (atomically), as a run here would. A server is
started when plans come often (a second local plan within :data:`IDLE_SECONDS` of the last);
it leaves after :data:`IDLE_SECONDS` without a request, when a module it has loaded changes
on disk, or on ``imagedsl server stop``. ``IMAGEDSL_SERVER=0`` turns all of this off.

This module imports nothing beyond what the interpreter has loaded at startup but the
C modules it needs (``_socket``, ``_blake2``): ``socket`` imports ``enum`` and ``selectors``,
``hashlib`` OpenSSL, about 30 ms together, a quarter of what a served plan costs; signals
are set through ``_signal``, which the interpreter loads at startup. If anything here fails,
the command runs in this process.
"""

from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Sequence
    from typing import Any

#: Commands a server may run (they write nothing but the store's caches).
SERVED = frozenset({"plan", "check"})
#: A server leaves after this long without a request (``IMAGEDSL_SERVER_IDLE`` sets another);
#: a second local plan within it of the last starts one.
IDLE_SECONDS = 900.0
#: What a request and a server agree on; a server refuses requests of another version.
PROTOCOL = 1
#: Replies: the run started (with the child's pid); the request was refused (run it here);
#: the run ended (with its wait status).
STARTED, REFUSED, ENDED = b"R", b"N", b"X"
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


def main() -> int:
    """The console script and ``python -m imagedsl``."""
    words = sys.argv[1:]
    command = next((word for word in words if not word.startswith("-")), None)
    served = command in SERVED and enabled()
    if served:
        try:
            code = forward(words)
        except KeyboardInterrupt:  # Ctrl-C before any run started
            print("interrupted", file=sys.stderr)
            return 130
        if code is not None:
            return code
    from imagedsl.cli import main as run_here

    code = run_here(words)
    if served:
        import contextlib

        with contextlib.suppress(OSError, ValueError):  # a server is only an optimisation
            _after_local_run()
    return code


def enabled() -> bool:
    """Whether plan servers are used: on Linux (a server waits for its children through
    pidfds), unless ``IMAGEDSL_SERVER=0`` turns them off."""
    return sys.platform == "linux" and not switched_off("IMAGEDSL_SERVER")


def switched_off(variable: str) -> bool:
    """Whether an on/off environment variable (on unless set) is ``0``, ``off``, ``no`` or
    ``false``."""
    return os.environ.get(variable, "1").strip().lower() in {"0", "off", "no", "false"}


def runtime_directory(create: bool = True) -> str | None:
    """Where this user's servers listen: ``IMAGEDSL_RUNTIME_DIR``, else
    ``$XDG_RUNTIME_DIR/imagedsl``, else ``/tmp/imagedsl-UID``. None unless it is a directory
    (not a link) of this user that no one else may enter: a socket in a directory others can
    write to could be another user's impostor."""
    given = os.environ.get("IMAGEDSL_RUNTIME_DIR")
    if given:
        path = given
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = os.path.join(os.environ["XDG_RUNTIME_DIR"], "imagedsl")
    else:
        path = f"/tmp/imagedsl-{os.getuid()}"
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    private = st.st_uid == os.getuid() and (st.st_mode & 0o170077) == 0o040000
    return path if private else None


def identity() -> tuple[str, list[str], str]:
    """What a server must share with this process to run its command as it would: the
    interpreter, the module search path, the interpreter's flags (``-O``, ``-B``, UTF-8
    mode, ...)."""
    return sys.executable, list(sys.path), repr(sys.flags)


def socket_path(directory: str) -> str | None:
    """The socket of the server for this process's :func:`identity`, in ``directory``."""
    from _blake2 import blake2b

    name = blake2b(marshal.dumps(identity(), 2), digest_size=12).hexdigest()
    path = os.path.join(directory, f"{name}.sock")
    return path if len(path.encode()) <= _MAX_SOCKET_PATH else None


def forward(words: Sequence[str]) -> int | None:
    """Run the command in a server; its exit code, or None when no server took it."""
    try:
        import _socket
    except ImportError:  # pragma: no cover - CPython has it
        return None
    directory = runtime_directory(create=False)
    path = socket_path(directory) if directory else None
    if path is None or not all(_is_open(fd) for fd in (0, 1, 2)):
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    relay = _SignalRelay()
    try:
        sock.connect(path)
        pid = _send_request(sock, words)
        if pid is None:
            return None
        relay.to(pid)
        return _wait(sock)
    except (OSError, ValueError):  # no server, or one that answered nonsense: run it here
        return None
    finally:
        sock.close()
        relay.close()


class _SignalRelay:
    """From construction on, the signals a terminal or a supervisor sends this process
    (SIGINT, SIGTERM, SIGHUP, SIGQUIT) go to the served run's process group once its pid is
    known; one that came before is sent then, or, if no run started, to this process again
    when the relay closes (with the handlers it replaced back)."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")

    def __init__(self) -> None:
        # The C module behind ``signal``: loaded at startup, where ``signal`` imports enum.
        self._signal: Any = sys.modules.get("_signal") or __import__("signal")
        self._pid: int | None = None
        self._pending: list[int] = []
        self._started = False
        self._before = {
            number: self._signal.signal(number, self._relay)
            for number in (getattr(self._signal, name) for name in self.SIGNALS)
        }

    def _relay(self, signum: int, _frame: object) -> None:
        if self._pid is None:
            self._pending.append(signum)
            return
        try:
            os.killpg(self._pid, signum)  # the child leads a process group of its own
        except OSError:
            return  # it has ended

    def to(self, pid: int) -> None:
        self._pid, self._started = pid, True
        for signum in self._pending:
            self._relay(signum, None)

    def close(self) -> None:
        for number, handler in self._before.items():
            self._signal.signal(number, handler)
        if not self._started:
            for signum in self._pending:
                os.kill(os.getpid(), signum)


def _send_request(sock: _socket.socket, words: Sequence[str]) -> int | None:
    """Send the request (the three streams with its first bytes); the child's pid, or None
    if the server refused it."""
    import _socket

    umask = os.umask(0o022)
    os.umask(umask)
    streams = [
        (getattr(s, "encoding", None), getattr(s, "errors", None))
        for s in (sys.stdin, sys.stdout, sys.stderr)
    ]
    data = framed(
        (PROTOCOL, "run", identity(), list(words), os.getcwd(), dict(os.environ), umask, streams)
    )
    fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))
    sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    sock.sendall(data[sent:])
    if receive(sock, 1) != STARTED:
        return None
    return int.from_bytes(receive(sock, 4), "little")


def _wait(sock: _socket.socket) -> int:
    """The exit code a shell would show for the served run's wait status, once the server
    reports it."""
    reply, status = receive(sock, 1), receive(sock, 4)
    if reply != ENDED or len(status) != 4:
        print("error: the imagedsl plan server went away before the run ended", file=sys.stderr)
        return 1
    code = os.waitstatus_to_exitcode(int.from_bytes(status, "little"))
    return code if code >= 0 else 128 - code


def framed(request: tuple[Any, ...]) -> bytes:
    """A request as it goes to a server: its length (8 bytes), then the request marshalled."""
    body = marshal.dumps(request)
    return len(body).to_bytes(8, "little") + body


def receive(sock: _socket.socket, size: int) -> bytes:
    """``size`` bytes, or fewer if the other end closed first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _after_local_run() -> None:
    """Start a server if the last local plan (of this identity) was recent: plans are coming
    often. A single run (in CI, say) never starts one."""
    directory = runtime_directory()
    path = socket_path(directory) if directory and enabled() else None
    if path is None:
        return
    import time

    mark = f"{path[: -len('.sock')]}.last"
    try:
        last: float | None = os.stat(mark).st_mtime
    except OSError:
        last = None
    try:
        with open(mark, "w"):
            pass
    except OSError:
        return
    if last is not None and time.time() - last < IDLE_SECONDS:
        start_server(path)


def idle_seconds() -> float:
    """How long a server waits for a request before it leaves (``IMAGEDSL_SERVER_IDLE``)."""
    try:
        return max(0.0, float(os.environ.get("IMAGEDSL_SERVER_IDLE", IDLE_SECONDS)))
    except ValueError:
        return IDLE_SECONDS


def start_server(path: str) -> None:
    """Start a server for this process's identity, detached (its own session, no streams);
    it is ready when its socket appears."""
    import subprocess

    flags = sys.flags  # as the client's (a server of other flags would refuse every request)
    options = ["-O"] * flags.optimize + ["-B"] * flags.dont_write_bytecode
    options += ["-b"] * flags.bytes_warning
    if flags.isolated:
        options.append("-I")
    else:
        options += ["-E"] * flags.ignore_environment + ["-s"] * flags.no_user_site
        options += ["-P"] * getattr(flags, "safe_path", False)
    for option, flag in (
        ("utf8", "utf8_mode"),
        ("dev", "dev_mode"),
        ("warn_default_encoding", "warn_default_encoding"),
    ):
        if getattr(flags, flag, 0):
            options += ["-X", option]
    if getattr(flags, "int_max_str_digits", -1) != -1:
        options += ["-X", f"int_max_str_digits={flags.int_max_str_digits}"]
    # The server's module search path is the client's, set before it imports imagedsl.
    code = (
        "import sys, marshal; identity = marshal.loads(bytes.fromhex(sys.argv[2])); "
        "sys.path[:] = identity[1]; "
        "from imagedsl._server import serve; serve(sys.argv[1], identity)"
    )
    subprocess.Popen(
        [sys.executable, *options, "-c", code, path, marshal.dumps(identity()).hex()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        start_new_session=True,
    )

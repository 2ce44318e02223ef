"""Running one RUN step's process in an OCI runtime (runc), and what can go wrong doing it.

The OCI backend prepares a root filesystem and the mounts a RUN asks for (see
:mod:`imagedsl.backends.oci.run.executor`); this module turns them into an OCI runtime
``config.json``, runs ``runc run`` in a private state directory, streams the process's output
line by line, and makes sure that whatever happens (the command fails, a timeout, Ctrl-C) the
container is killed and deleted before control returns.

The container is set up as BuildKit sets up a RUN: Docker's default capabilities, new PID,
IPC, UTS and mount namespaces, hostname ``buildkitsandbox``, ``/proc``, ``/dev`` (tmpfs with
``pts``, ``shm`` and ``mqueue``), ``/sys`` and the cgroup tree read-only, BuildKit's masked and
read-only ``/proc`` paths, ``/etc/hosts`` and ``/etc/resolv.conf`` bind-mounted read-only, and
Docker's default seccomp profile (:mod:`~imagedsl.backends.oci.run.seccomp`). The network is a
namespace behind NAT that the executor made (``default``, see
:mod:`~imagedsl.backends.oci.run.network`), a new empty namespace (``none``), or the host's
(``host``, with the ``network.host`` entitlement).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from imagedsl.backends import BuildRequestError
from imagedsl.errors import BuildFailure, EnvironmentFailure, SourceLocation, string_tuple

#: An explicit runc binary (otherwise ``runc`` on PATH, or in the sbin directories).
RUNC_ENV: Final = "IMAGEDSL_RUNC"
#: Seconds a RUN may take before it is killed (unset: no limit).
TIMEOUT_ENV: Final = "IMAGEDSL_RUN_TIMEOUT"
HOSTNAME: Final = "buildkitsandbox"
#: How many of a failing command's last output lines its error shows.
TAIL_LINES: Final = 20
HOSTS: Final = f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
#: Docker's (and BuildKit's) default capability set.
CAPABILITIES: Final = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)
MASKED_PATHS: Final = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
)
READONLY_PATHS: Final = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
_KILL_GRACE: Final = 10.0
_READ_CHUNK: Final = 1 << 16


class RuntimeUnavailableError(EnvironmentFailure, BuildRequestError):
    """RUN steps must execute here but cannot: ``missing`` names what the machine lacks
    (``root``, ``runc``); ``instruction`` is the first RUN that needs them."""

    def __init__(self, missing: Sequence[str], instruction: str, stage: str) -> None:
        self.missing = tuple(missing)
        self.instruction = instruction
        self.stage = stage
        super().__init__(self._message())

    def _message(self) -> str:
        reasons = {
            "root": f"root (this process runs as uid {os.geteuid()})",
            "runc": f"runc (not on PATH, nor in /usr/sbin; set ${RUNC_ENV} to use another)",
        }
        lacking = ", ".join(reasons.get(m, m) for m in self.missing)
        return (
            f"{self.stage}: {self.instruction}: the OCI backend runs RUN steps in runc as root, "
            f"and this machine lacks {lacking}; build with --backend docker instead"
        )

    def __str__(self) -> str:
        return self._message()


@attrs.define
class RunFailedError(BuildFailure):
    """A RUN step's command did not succeed: ``status`` is its exit status, ``output`` the
    last lines it printed (secret values masked). Nothing was recorded for the step."""

    instruction: str
    stage: str
    status: int
    output: tuple[str, ...] = attrs.field(converter=string_tuple)
    location: SourceLocation | None = attrs.field(default=None)

    def _head(self) -> str:
        return f"{self.stage}: {self.instruction} failed with exit code {self.status}"

    def __str__(self) -> str:
        if not self.output:
            return self._head()
        return self._head() + "\n" + "\n".join(f"  | {line}" for line in self.output)


class RunTimeoutError(RunFailedError):
    """A RUN step ran longer than its time limit and was killed."""

    def __init__(
        self,
        instruction: str,
        stage: str,
        timeout: float,
        output: Sequence[str],
        location: SourceLocation | None = None,
    ) -> None:
        super().__init__(instruction, stage, -1, output, location)
        self.timeout = timeout

    def _head(self) -> str:
        return (
            f"{self.stage}: {self.instruction} did not finish within {self.timeout:g} s "
            f"(${TIMEOUT_ENV}) and was killed"
        )


def find_runc() -> str | None:
    """The runc binary: ``$IMAGEDSL_RUNC``, else ``runc`` on PATH or in the sbin directories."""
    explicit = os.environ.get(RUNC_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("runc") or shutil.which("runc", path="/usr/local/sbin:/usr/sbin:/sbin")


def missing_requirements() -> tuple[str, ...]:
    """What this machine lacks to run RUN steps: ``root`` and/or ``runc`` (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if find_runc() is None:
        missing.append("runc")
    return tuple(missing)


def timeout_from_env() -> float | None:
    """``$IMAGEDSL_RUN_TIMEOUT`` in seconds, or None."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BuildRequestError(
            f"{TIMEOUT_ENV} must be a number of seconds, not {text!r}"
        ) from None
    if value <= 0:
        raise BuildRequestError(f"{TIMEOUT_ENV} must be positive, not {text!r}")
    return value


@attrs.frozen(kw_only=True)
class MountSpec:
    """One mount of the container, in the OCI runtime spec's terms."""

    destination: str
    type: str
    source: str
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``mounts[]`` entry."""
        entry: dict[str, Any] = {
            "destination": self.destination,
            "type": self.type,
            "source": self.source,
        }
        if self.options:
            entry["options"] = list(self.options)
        return entry


def bind(source: str | Path, destination: str, *, readonly: bool) -> MountSpec:
    """A bind mount of a host file or directory."""
    options = ("rbind", "ro" if readonly else "rw", "nosuid", "nodev")
    return MountSpec(destination=destination, type="bind", source=str(source), options=options)


#: The mounts every RUN gets before its own, as BuildKit gives them.
SYSTEM_MOUNTS: Final = (
    MountSpec(
        destination="/proc", type="proc", source="proc", options=("nosuid", "noexec", "nodev")
    ),
    MountSpec(
        destination="/dev",
        type="tmpfs",
        source="tmpfs",
        options=("nosuid", "strictatime", "mode=755", "size=65536k"),
    ),
    MountSpec(
        destination="/dev/pts",
        type="devpts",
        source="devpts",
        options=("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
    ),
    MountSpec(
        destination="/dev/shm",
        type="tmpfs",
        source="shm",
        options=("nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
    ),
    MountSpec(
        destination="/dev/mqueue",
        type="mqueue",
        source="mqueue",
        options=("nosuid", "noexec", "nodev"),
    ),
    MountSpec(
        destination="/sys",
        type="sysfs",
        source="sysfs",
        options=("nosuid", "noexec", "nodev", "ro"),
    ),
    MountSpec(
        destination="/sys/fs/cgroup",
        type="cgroup",
        source="cgroup",
        options=("nosuid", "noexec", "nodev", "relatime", "ro"),
    ),
)


@attrs.frozen(kw_only=True)
class ContainerSpec:
    """Everything the runtime config of one RUN holds."""

    rootfs: str
    args: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(eq=False, repr=False)
    cwd: str
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    #: ``host``: the host's network namespace; ``default``: the namespace at
    #: ``network_namespace`` (a new, empty one without it); ``none``: a new, empty one.
    network: str = "default"
    network_namespace: str | None = None
    mounts: tuple[MountSpec, ...] = ()
    #: The resolved ``linux.seccomp`` (None: no filter, the explicit opt-out).
    seccomp: Mapping[str, Any] | None = attrs.field(default=None, eq=False, repr=False)


def runtime_config(spec: ContainerSpec) -> dict[str, Any]:
    """The OCI runtime ``config.json`` for ``spec``."""
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if spec.network != "host":
        if spec.network == "default" and spec.network_namespace is not None:
            namespaces.append({"type": "network", "path": spec.network_namespace})
        else:
            namespaces.append({"type": "network"})
    caps = list(CAPABILITIES)
    user: dict[str, Any] = {"uid": spec.uid, "gid": spec.gid}
    if spec.additional_gids:
        user["additionalGids"] = list(spec.additional_gids)
    linux: dict[str, Any] = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if spec.seccomp is not None:
        linux["seccomp"] = dict(spec.seccomp)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": user,
            "args": list(spec.args),
            "env": [f"{name}={value}" for name, value in spec.env.items()],
            "cwd": spec.cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": False,
        },
        "root": {"path": spec.rootfs, "readonly": False},
        "hostname": HOSTNAME,
        "mounts": [m.to_json() for m in (*SYSTEM_MOUNTS, *spec.mounts)],
        "linux": linux,
    }


@attrs.frozen(kw_only=True)
class RunOutcome:
    """How a container's process ended: its exit status and the last lines it printed."""

    status: int
    tail: tuple[str, ...]


class Runc:
    """``runc`` with a private state directory (``--root``), so nothing it leaves can
    collide with other users of runc on the machine."""

    def __init__(self, binary: str, state: Path) -> None:
        self.binary = binary
        self.state = state

    def _command(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state), *args]

    def run(
        self,
        bundle: Path,
        container_id: str,
        *,
        on_line: Callable[[str], None],
        timeout: float | None,
        on_timeout: Callable[[tuple[str, ...]], BaseException],
    ) -> RunOutcome:
        """Run the bundle's container in the foreground, streaming its output to
        ``on_line``. A timeout kills it and raises ``on_timeout(tail)``; any exception (Ctrl-C
        included) kills it too, and so does SIGTERM (a cancelled CI job), which then raises
        KeyboardInterrupt. The container is always deleted before this returns."""
        with _sigterm_interrupts():
            return self._run(bundle, container_id, on_line, timeout, on_timeout)

    def _run(
        self,
        bundle: Path,
        container_id: str,
        on_line: Callable[[str], None],
        timeout: float | None,
        on_timeout: Callable[[tuple[str, ...]], BaseException],
    ) -> RunOutcome:
        self.state.mkdir(parents=True, exist_ok=True)
        tail: deque[str] = deque(maxlen=TAIL_LINES)

        def emit(raw: bytes) -> None:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            tail.append(line)
            on_line(line)

        # Its own session: a terminal's Ctrl-C reaches us alone, and we decide what to kill.
        process = subprocess.Popen(
            self._command("run", "--bundle", str(bundle), container_id),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        finished = False
        try:
            assert process.stdout is not None
            deadline = None if timeout is None else time.monotonic() + timeout
            timed_out = not _pump(process.stdout.fileno(), emit, deadline)
            if timed_out:
                self._kill(container_id, process)
                raise on_timeout(tuple(tail))
            status = process.wait()
            finished = True
        finally:
            if not finished:
                self._kill(container_id, process)
            if process.stdout is not None:
                process.stdout.close()
            self._delete(container_id)
        return RunOutcome(status=status, tail=tuple(tail))

    def _kill(self, container_id: str, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the container's init (its PID namespace goes with it), then reap runc."""
        if process.poll() is not None:
            return
        subprocess.run(
            self._command("kill", container_id, "KILL"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        try:
            process.wait(_KILL_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()  # runc itself hangs (e.g. still creating the container)
            process.wait()

    def _delete(self, container_id: str) -> None:
        subprocess.run(
            self._command("delete", "--force", container_id),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )

    def write_bundle(self, bundle: Path, spec: ContainerSpec) -> None:
        """Write ``config.json`` (mode 0600: it may hold secret environment values)."""
        bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = bundle / "config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(runtime_config(spec), handle)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While a container runs, SIGTERM raises KeyboardInterrupt (in the main thread only,
    where Python delivers signals), so the container is killed and everything cleaned up
    instead of the process dying with the container still running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:  # noqa: ARG001 - a handler's signature
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _pump(fd: int, emit: Callable[[bytes], None], deadline: float | None) -> bool:
    """Read ``fd`` to its end, calling ``emit`` per line; False if ``deadline`` came first."""
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait == 0.0:
                return False
            if not selector.select(wait):
                continue
            chunk = os.read(fd, _READ_CHUNK)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                emit(line)
    if pending:
        emit(pending)
    return True


__all__ = [
    "ContainerSpec",
    "MountSpec",
    "RunFailedError",
    "RunOutcome",
    "RunTimeoutError",
    "Runc",
    "RuntimeUnavailableError",
    "find_runc",
    "missing_requirements",
    "runtime_config",
    "timeout_from_env",
]

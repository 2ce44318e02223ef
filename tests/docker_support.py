"""Real Docker engine, base image and registry for the tests (no pytest needed here).

- :func:`find_docker` finds a client + engine pair that answers and can build with BuildKit.
  ``/usr/local/bin/docker`` on our machines is a 28.x client without buildx (its legacy
  builder is deprecated), while Debian's ``/usr/bin/docker`` 20.10 builds with BuildKit when
  ``DOCKER_BUILDKIT=1``, so every candidate client is probed with a real (tiny) build.
- :func:`ensure_busybox_image` makes a tiny base image from the host's static busybox, since no
  public registry is reachable; it is rebuilt only when busybox or the recipe changed.
- :func:`start_registry` runs Debian's ``docker-registry`` on a free loopback port.

``.ci/run`` starts an engine at :data:`CI_DOCKER_HOST`; see ``/work/shared/ENVIRONMENT.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import TracebackType

#: The engine socket ``.ci/run`` starts when no other engine answers.
CI_DOCKER_HOST = "unix:///tmp/imagedsl-ci/dockerd/docker.sock"
#: Clients tried besides ``docker`` on PATH (Debian's 20.10 client has built-in BuildKit).
EXTRA_DOCKER_CLIENTS = ("/usr/bin/docker",)
DEFAULT_BUSYBOX_TAG = "imagedsl-test/busybox:latest"
BUSYBOX_SHA256_LABEL = "org.imagedsl.test.busybox-sha256"
BUSYBOX_RECIPE_LABEL = "org.imagedsl.test.recipe-sha256"

_PROBE_TIMEOUT = 60.0
_DEFAULT_TIMEOUT = 600.0


class DockerCommandError(subprocess.CalledProcessError):
    """A docker command failed; unlike its base class, the message includes the output."""

    def __str__(self) -> str:
        out = "\n".join(
            f"{name}:\n{_tail(text)}"
            for name, text in (("stdout", self.stdout), ("stderr", self.stderr))
            if text
        )
        return f"{super().__str__()}\n{out}".rstrip()


@attrs.frozen
class DockerEngine:
    """A docker client that talks to an engine which answered and built with BuildKit."""

    client: str
    """Absolute path of the docker client binary."""
    env: dict[str, str] = attrs.field(repr=False, hash=False)
    """Full environment for subprocesses (DOCKER_HOST if needed, DOCKER_BUILDKIT=1)."""
    buildx: bool
    """Whether ``docker buildx build`` is used (else ``docker build`` with DOCKER_BUILDKIT=1)."""
    host: str | None = None
    """DOCKER_HOST used, or None for the client's default."""
    server_version: str = ""

    def run(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = _DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS`` and capture text output; raise DockerCommandError if check."""
        return _run([self.client, *args], env=self.env, check=check, input=input, timeout=timeout)

    @property
    def build_command(self) -> tuple[str, ...]:
        """``("buildx", "build")`` or ``("build",)``: the BuildKit build sub-command."""
        return ("buildx", "build") if self.buildx else ("build",)

    def build(
        self,
        context: str | os.PathLike[str],
        *args: str,
        load: bool = True,
        check: bool = True,
        timeout: float | None = _DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """BuildKit-build CONTEXT with extra ARGS (e.g. ``"-t", tag``), plain progress.

        The progress (``#1 [internal] load build definition ...``) is on stderr. With buildx,
        ``load`` adds ``--load`` so the image lands in the engine's image store whatever the
        builder driver is; pass ``load=False`` together with your own ``--output``.
        """
        extra = ("--load",) if self.buildx and load else ()
        return self.run(
            *self.build_command,
            "--progress=plain",
            *extra,
            *args,
            os.fspath(context),
            check=check,
            timeout=timeout,
        )

    def describe(self) -> str:
        how = "docker buildx build" if self.buildx else "docker build with DOCKER_BUILDKIT=1"
        return (
            f"{self.client} -> engine {self.server_version or '?'} at "
            f"{self.host or 'the default host'} ({how})"
        )


def find_docker(notes: list[str] | None = None) -> DockerEngine | None:
    """Find a docker client + engine that answers ``info`` and can BuildKit-build, or None.

    Clients: ``docker`` on PATH and :data:`EXTRA_DOCKER_CLIENTS`, those with a working buildx
    first. Hosts: ``$DOCKER_HOST`` if set (only that); otherwise the client's default, then
    :data:`CI_DOCKER_HOST`. Why candidates were rejected is appended to ``notes``.
    """
    problems: dict[tuple[str, str], list[str]] = {}  # (where, problem) -> clients
    found = _find_docker(problems)
    if notes is not None:
        notes.extend(
            f"{', '.join(clients)} at {where}: {problem}"
            for (where, problem), clients in problems.items()
        )
    return found


def _find_docker(problems: dict[tuple[str, str], list[str]]) -> DockerEngine | None:
    clients = _docker_clients()
    if not clients:
        problems["PATH", "no docker client (looked for `docker` on PATH and /usr/bin/docker)"] = []
        return None
    env_host = os.environ.get("DOCKER_HOST")
    hosts: list[str | None] = [env_host] if env_host else [None, CI_DOCKER_HOST]
    for host in hosts:
        where = host or "the default host"
        for client, buildx in clients:
            engine = DockerEngine(client=client, env=_docker_env(host), buildx=buildx, host=host)
            info = _probe(engine, "version", "--format", "{{.Server.Version}}")
            if info.returncode != 0 or not info.stdout.strip():
                problem = f"engine did not answer: {_last_line(info)}"
                problems.setdefault((where, problem), []).append(client)
                continue
            engine = attrs.evolve(engine, server_version=info.stdout.strip())
            build_problem = _buildkit_problem(engine)
            if build_problem is None:
                return engine
            problem = f"BuildKit build failed: {build_problem}"
            problems.setdefault((where, problem), []).append(client)
    return None


def _docker_clients() -> list[tuple[str, bool]]:
    """Distinct docker clients as (path, has working buildx), buildx ones first."""
    seen: set[str] = set()
    found: list[tuple[str, bool]] = []
    for candidate in (shutil.which("docker"), *EXTRA_DOCKER_CLIENTS):
        if candidate is None or not os.access(candidate, os.X_OK):
            continue
        real = os.path.realpath(candidate)
        if real in seen:
            continue
        seen.add(real)
        path = os.path.abspath(candidate)
        buildx = _probe_cmd([path, "buildx", "version"], _docker_env(None)).returncode == 0
        found.append((path, buildx))
    return sorted(found, key=lambda item: not item[1])


def _docker_env(host: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["DOCKER_BUILDKIT"] = "1"
    env["BUILDKIT_PROGRESS"] = "plain"
    env["DOCKER_CLI_HINTS"] = "false"
    if host is None:
        env.pop("DOCKER_HOST", None)
    else:
        env["DOCKER_HOST"] = host
    return env


def _buildkit_problem(engine: DockerEngine) -> str | None:
    """Build a one-file image from scratch into a local dir: None if BuildKit works."""
    with tempfile.TemporaryDirectory(prefix="imagedsl-docker-probe-") as tmp:
        context, out = Path(tmp, "context"), Path(tmp, "out")
        context.mkdir()
        (context / "probe.txt").write_text("ok\n")
        (context / "Dockerfile").write_text("FROM scratch\nCOPY probe.txt /probe.txt\n")
        try:
            result = engine.build(
                context, "--output", f"type=local,dest={out}", load=False, check=False,
                timeout=_PROBE_TIMEOUT,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"timed out after {_PROBE_TIMEOUT:.0f}s"
        if result.returncode != 0:
            return _last_line(result)
        if not (out / "probe.txt").is_file():
            return "the build succeeded but wrote no output (legacy builder?)"
    return None


def _probe(engine: DockerEngine, *args: str) -> subprocess.CompletedProcess[str]:
    return _probe_cmd([engine.client, *args], engine.env)


def _probe_cmd(cmd: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return _run(cmd, env=env, check=False, timeout=_PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(cmd), 255, "", str(exc))


def _run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = _DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(cmd),
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise DockerCommandError(result.returncode, list(cmd), result.stdout, result.stderr)
    return result


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    """The most telling line of a failed command: its last error line, else its last line."""
    lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if "error" in line.lower() or "cannot" in line.lower()]
    return (errors or lines or [f"exit status {result.returncode}"])[-1]


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --- busybox base image ------------------------------------------------------------------------

_BUSYBOX_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p -m 1777 /tmp"]
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["/bin/sh"]
"""


class BusyboxUnavailable(RuntimeError):
    """No static busybox binary on this machine (Debian: ``apt-get install busybox-static``)."""


def ensure_busybox_image(
    engine: DockerEngine,
    tag: str = DEFAULT_BUSYBOX_TAG,
    busybox: str | os.PathLike[str] = "/bin/busybox",
) -> str:
    """Make sure TAG is a tiny image of the host's static busybox; return the reference.

    The image is ``FROM scratch`` with ``/bin/busybox`` and its applets linked into ``/bin``
    (``sh``, ``echo``, ``cat`` ...), plus ``/tmp``. It is reused when its labels record the same
    busybox sha256 and recipe, so only the first call on a machine builds.
    """
    path = Path(busybox)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BusyboxUnavailable(f"cannot read {path} ({exc}); install busybox-static") from exc
    if _elf_needs_interpreter(data):
        raise BusyboxUnavailable(
            f"{path} is dynamically linked and cannot run in a scratch image; "
            "install busybox-static instead of busybox"
        )
    busybox_sha = hashlib.sha256(data).hexdigest()
    recipe_sha = hashlib.sha256(_BUSYBOX_DOCKERFILE.encode()).hexdigest()
    with _file_lock(Path(tempfile.gettempdir(), "imagedsl-test-busybox-image.lock")):
        labels = _image_labels(engine, tag)
        if (
            labels.get(BUSYBOX_SHA256_LABEL) == busybox_sha
            and labels.get(BUSYBOX_RECIPE_LABEL) == recipe_sha
        ):
            return tag
        with tempfile.TemporaryDirectory(prefix="imagedsl-busybox-") as context:
            target = Path(context, "busybox")
            target.write_bytes(data)
            target.chmod(0o755)
            Path(context, "Dockerfile").write_text(_BUSYBOX_DOCKERFILE)
            engine.build(
                context,
                "--tag", tag,
                "--label", f"{BUSYBOX_SHA256_LABEL}={busybox_sha}",
                "--label", f"{BUSYBOX_RECIPE_LABEL}={recipe_sha}",
            )  # fmt: skip
    return tag


def _image_labels(engine: DockerEngine, ref: str) -> dict[str, str]:
    result = engine.run("image", "inspect", "--format", "{{json .Config.Labels}}", ref, check=False)
    if result.returncode != 0:
        return {}
    labels = json.loads(result.stdout or "null")
    return dict(labels) if isinstance(labels, dict) else {}


def _elf_needs_interpreter(data: bytes) -> bool:
    """True if DATA is an ELF executable with a PT_INTERP program header (dynamically linked)."""
    if data[:4] != b"\x7fELF" or len(data) < 64:
        return False  # not ELF: let the build say what is wrong
    order = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # 64-bit
        (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    else:
        (phoff,) = struct.unpack_from(order + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x2A)
    pt_interp = 3
    return any(
        struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] == pt_interp
        for i in range(phnum)
        if phoff + (i + 1) * phentsize <= len(data)
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialize builds across processes (pytest-xdist workers) on this machine."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- registry ----------------------------------------------------------------------------------


class RegistryUnavailable(RuntimeError):
    """No ``docker-registry`` binary (Debian: ``apt-get install docker-registry``)."""


def find_registry_binary() -> str | None:
    """Debian's distribution registry: ``docker-registry`` on PATH or in /usr/bin."""
    found = shutil.which("docker-registry")
    if found:
        return found
    fallback = "/usr/bin/docker-registry"
    return fallback if os.access(fallback, os.X_OK) else None


# Loopback requests must never go through an http(s)_proxy from the environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@attrs.define
class RegistryServer:
    """A running ``docker-registry serve`` on 127.0.0.1; stop it with :meth:`stop` or ``with``.

    Plain HTTP: Docker treats 127.0.0.0/8 registries as insecure automatically; for skopeo pass
    ``--dest-tls-verify=false``.
    """

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    _log: IO[bytes] = attrs.field(repr=False)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the prefix for image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET URL+PATH: (status, body), also for error statuses."""
        try:
            with _NO_PROXY_OPENER.open(self.url + path, timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {self.url}{path} -> {status}: {body[:500]!r}")
        return json.loads(body)

    def catalog(self) -> list[str]:
        """Repository names, from ``GET /v2/_catalog`` (the registry caps a page at 1000)."""
        return list(self.get_json("/v2/_catalog?n=1000").get("repositories") or [])

    def tags(self, repository: str) -> list[str]:
        return list(self.get_json(f"/v2/{repository}/tags/list").get("tags") or [])

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the registry and wait for it (kill after TIMEOUT); idempotent."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_registry(
    workdir: Path, *, binary: str | None = None, timeout: float = 20.0
) -> RegistryServer:
    """Start a registry with storage in WORKDIR/storage (delete enabled) on a free port.

    Returns once ``GET /v2/`` answers. Raises RegistryUnavailable without the binary, and
    RuntimeError (with the log tail) if it does not come up.
    """
    binary = binary or find_registry_binary()
    if binary is None:
        raise RegistryUnavailable(
            "looked for docker-registry on PATH and in /usr/bin; install Debian's docker-registry"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "storage").mkdir(exist_ok=True)
    for _attempt in range(5):
        port = _free_port()
        config = workdir / "config.yml"
        config.write_text(_registry_config(workdir / "storage", port))
        log = (workdir / "registry.log").open("ab")
        try:
            process = subprocess.Popen(
                [binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        server = RegistryServer(process=process, port=port, workdir=workdir, log=log)
        try:
            if _wait_until_up(server, timeout):
                return server
        except BaseException:
            server.stop()
            raise
        tail = server.log_tail()
        server.stop()
        if "address already in use" not in tail:
            raise RuntimeError(
                f"docker-registry did not answer on {server.url}/v2/ within {timeout:.0f}s; "
                f"log {server.log_path}:\n{tail}"
            )
    raise RuntimeError("docker-registry: no free port found after 5 attempts")


def _wait_until_up(server: RegistryServer, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            status, _body = server.get("/v2/", timeout=2.0)
        except OSError:
            status = 0
        if status == 200:
            return True
        time.sleep(0.05)
    return False


def _registry_config(storage: Path, port: int) -> str:
    # JSON is YAML; json.dumps quotes the paths safely.
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "imagedsl-test-registry"},
    }
    return json.dumps(config, indent=2) + "\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

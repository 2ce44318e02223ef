"""Finding a Docker engine that can build with BuildKit, and running its client.

``docker buildx build`` is preferred when buildx works; otherwise a client with built-in
BuildKit (``docker build`` with ``DOCKER_BUILDKIT=1``). Machines often carry a new client
without buildx (its legacy builder cannot do what we need) next to an older one that can, so
every candidate is probed with a real, tiny build. ``$DOCKER_HOST`` is honoured, which is also
how a remote engine is used; a buildx builder (``docker buildx use``) is honoured by buildx.

Probing costs about a second, so what it found can be kept in the store
(``require_docker(cache=...)``), per what it depends on: ``$DOCKER_HOST`` and
``$DOCKER_CONTEXT``, each candidate client binary and plugin directory (by path, size, mtime
and inode), and the engine's server version, which is asked again on every use (over the
engine's socket, in milliseconds): a new client, a new buildx or an upgraded engine probe again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from imagedsl.backends import BuildRequestError
from imagedsl.engine_api import CI_DOCKER_HOST

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Clients tried besides ``docker`` on PATH (Debian's 20.10 client has built-in BuildKit).
EXTRA_DOCKER_CLIENTS = ("/usr/bin/docker",)

_PROBE_TIMEOUT = 60.0
_DEFAULT_TIMEOUT = 3600.0


class DockerCommandError(subprocess.CalledProcessError):
    """A docker command failed; unlike its base class, the message includes the output."""

    def __str__(self) -> str:
        out = "\n".join(
            f"{name}:\n{tail_lines(text)}"
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
    def local(self) -> bool:
        """Whether builds run on this machine's kernel: the engine's own BuildKit reached by
        a unix socket (a buildx builder may be anywhere)."""
        return not self.buildx and (self.host is None or self.host.startswith("unix://"))

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


def find_docker(notes: list[str] | None = None, *, buildkit: bool = True) -> DockerEngine | None:
    """Find a docker client + engine that answers ``info`` and can BuildKit-build, or None.

    Clients: ``docker`` on PATH and :data:`EXTRA_DOCKER_CLIENTS`, those with a working buildx
    first. Hosts: ``$DOCKER_HOST`` if set (only that); otherwise the client's default, then
    :data:`CI_DOCKER_HOST`. Why candidates were rejected is appended to ``notes``. With
    ``buildkit=False`` an engine that answers is enough (for ``save``, ``load``, ``inspect``):
    neither buildx nor a probe build is tried.
    """
    problems: dict[tuple[str, str], list[str]] = {}  # (where, problem) -> clients
    found = _find_docker(problems, buildkit=buildkit)
    if notes is not None:
        notes.extend(
            f"{', '.join(clients)} at {where}: {problem}"
            for (where, problem), clients in problems.items()
        )
    return found


def _find_docker(
    problems: dict[tuple[str, str], list[str]], *, buildkit: bool = True
) -> DockerEngine | None:
    clients = _docker_clients(probe_buildx=buildkit)
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
            if not buildkit:
                return engine
            build_problem = _buildkit_problem(engine)
            if build_problem is None:
                return engine
            problem = f"BuildKit build failed: {build_problem}"
            problems.setdefault((where, problem), []).append(client)
    return None


def _docker_clients(*, probe_buildx: bool = True) -> list[tuple[str, bool]]:
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
        buildx = (
            probe_buildx
            and _probe_cmd([path, "buildx", "version"], _docker_env(None)).returncode == 0
        )
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


def tail_lines(text: str, lines: int = 30) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def require_docker(*, buildkit: bool = True, cache: Path | None = None) -> DockerEngine:
    """The engine to use, or a :class:`BuildRequestError` saying what is missing
    (``buildkit=False``: any engine that answers; see :func:`find_docker`).

    With ``cache`` (a directory, the store's ``ENGINES`` area), an engine found before for the
    same environment, clients and server version is used without probing it again."""
    cache_file = None
    if cache is not None:
        cache_file = cache / f"{_discovery_identity(buildkit)}.json"
        cached = _cached_engine(cache_file)
        if cached is not None:
            return cached
    notes: list[str] = []
    engine = find_docker(notes, buildkit=buildkit)
    if engine is not None and cache_file is not None:
        _save_engine(cache_file, engine)
    if engine is None:
        details = "; ".join(notes) or "no docker client found"
        if not buildkit:
            raise BuildRequestError(f"no Docker engine answered: {details}")
        raise BuildRequestError(
            "no Docker engine with BuildKit is usable (need `docker buildx`, or a docker client "
            f"with built-in BuildKit, and a running engine): {details}"
        )
    return engine


# -- the discovery cache -----------------------------------------------------------------------

#: Where the docker client looks for plugins (buildx among them), besides ``~/.docker``.
_PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)
_CACHE_VERSION = 1


def _discovery_identity(buildkit: bool) -> str:
    """A digest of everything discovery depends on, short of the engine's answer."""
    config = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    paths = [
        shutil.which("docker") or "",
        *EXTRA_DOCKER_CLIENTS,
        *_PLUGIN_DIRS,
        os.path.join(config, "cli-plugins"),
        os.path.join(config, "config.json"),
    ]
    seen: list[list[object]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            seen.append([path, None])
        else:
            seen.append([path, os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino])
    facts = {
        "v": _CACHE_VERSION,
        "buildkit": buildkit,
        "host": os.environ.get("DOCKER_HOST"),
        "context": os.environ.get("DOCKER_CONTEXT"),
        "paths": seen,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def _cached_engine(path: Path) -> DockerEngine | None:
    """The engine saved at ``path`` if its engine still answers with the same version."""
    try:
        saved = json.loads(path.read_bytes())
        client, buildx, host = saved["client"], saved["buildx"], saved["host"]
        version = saved["server_version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(client, str) or not isinstance(version, str) or not version:
        return None
    engine = DockerEngine(
        client=client, env=_docker_env(host), buildx=bool(buildx), host=host, server_version=version
    )
    return engine if server_version(engine) == version else None


def _save_engine(path: Path, engine: DockerEngine) -> None:
    from imagedsl.store import atomic_write

    record = {
        "client": engine.client,
        "buildx": engine.buildx,
        "host": engine.host,
        "server_version": engine.server_version,
    }
    with contextlib.suppress(OSError):  # a cache: failing to keep it costs a probe next time
        atomic_write(path, json.dumps(record, sort_keys=True).encode())


def server_version(engine: DockerEngine) -> str:
    """The engine's version as it answers now ("" if it does not): over its unix socket
    when it has one (a few milliseconds), else through the client."""
    if engine.host is not None and engine.host.startswith("unix://"):
        answer = _unix_get(engine.host.removeprefix("unix://"), "/version")
        if answer is not None:
            try:
                version = json.loads(answer).get("Version")
            except (ValueError, AttributeError):
                version = None
            return version if isinstance(version, str) else ""
    result = _probe(engine, "version", "--format", "{{.Server.Version}}")
    return result.stdout.strip() if result.returncode == 0 else ""


def _unix_get(socket_path: str, url: str, timeout: float = 5.0) -> bytes | None:
    """The body of an HTTP GET over a unix socket when it answers 200, else None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(f"GET {url} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        return None
    return body


def inspect_images(engine: DockerEngine, names: Sequence[str]) -> list[dict[str, Any] | None]:
    """What the engine says of each image name (a tag or an id) now, None where it has no
    such image: over the engine's unix socket when it has one, else through the client."""
    if engine.host is not None and engine.host.startswith("unix://"):
        found: list[dict[str, Any] | None] = []
        for name in names:
            answer = _unix_get(
                engine.host.removeprefix("unix://"),
                f"/images/{urllib.parse.quote(name, safe='/:@')}/json",
            )
            try:
                value = None if answer is None else json.loads(answer)
            except ValueError:
                value = None
            found.append(value if isinstance(value, dict) else None)
        return found
    result = engine.run("image", "inspect", *names, check=False)
    try:
        listed = json.loads(result.stdout or "[]")
    except ValueError:
        listed = None
    if result.returncode == 0 and isinstance(listed, list) and len(listed) == len(names):
        return [item if isinstance(item, dict) else None for item in listed]
    if len(names) > 1:  # some are missing: ask for each
        return [inspect_images(engine, [name])[0] for name in names]
    return [None] * len(names)


def image_ids(engine: DockerEngine, names: Sequence[str]) -> list[str | None]:
    """The image id each name (a tag or an id) has in the engine now, None where it has none."""
    found = []
    for image in inspect_images(engine, names):
        value = image.get("Id") if image is not None else None
        found.append(value if isinstance(value, str) else None)
    return found

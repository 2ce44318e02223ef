"""Real Docker engine, base image and registry for the tests (no pytest needed here).

- :func:`find_docker` (from :mod:`imagedsl.backends.engine`, the product's own engine finder)
  finds a client + engine pair that answers and can build with BuildKit.
- :func:`ensure_busybox_image` makes a tiny base image from the host's static busybox, since no
  public registry is reachable; it is rebuilt only when busybox or the recipe changed.
- :func:`start_registry` runs Debian's ``docker-registry`` on a free loopback port.
- :func:`ensure_debian_image` makes a Debian minbase image with some packages (mmdebstrap),
  the stand-in for public bases such as ``python:3.12-slim`` that cannot be pulled here. The
  root filesystem tar is cached on disk by the recipe that made it, and the image is imported
  only when the engine lacks one with that recipe's label.

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

from imagedsl.backends.engine import (
    DockerCommandError,
    DockerEngine,
    find_docker,
    tail_lines,
)
from imagedsl.engine_api import CI_DOCKER_HOST

__all__ = [
    "CI_DOCKER_HOST",
    "DEBIAN_GCC",
    "DEBIAN_GO",
    "DEBIAN_NODE",
    "DEBIAN_PYTHON",
    "BaseUnavailable",
    "DebianBase",
    "DockerCommandError",
    "DockerEngine",
    "RegistryServer",
    "RegistryUnavailable",
    "ensure_busybox_image",
    "ensure_debian_image",
    "find_docker",
    "host_tool",
    "http_get",
    "serving",
    "start_registry",
]

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

DEFAULT_BUSYBOX_TAG = "imagedsl-test/busybox:latest"
BUSYBOX_SHA256_LABEL = "org.imagedsl.test.busybox-sha256"
BUSYBOX_RECIPE_LABEL = "org.imagedsl.test.recipe-sha256"


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


def machine_lock(name: str) -> contextlib.AbstractContextManager[None]:
    """A lock shared by every test process on this machine (xdist workers, other checkouts)."""
    directory = base_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return _file_lock(directory / f"{name}.lock")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialize builds across processes (pytest-xdist workers) on this machine."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- Debian bases (mmdebstrap) ------------------------------------------------------------------

DEBIAN_RECIPE_LABEL = "org.imagedsl.test.debian-recipe-sha256"
_DEBIAN_SUITE = "bookworm"
#: Documentation is left out: smaller tars, faster imports, same programs.
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)


class BaseUnavailable(RuntimeError):
    """A Debian base image could not be made (no mmdebstrap, no Debian mirror, ...)."""


@attrs.frozen
class DebianBase:
    """A Debian minbase image with ``packages``, tagged ``tag`` in the engine."""

    tag: str
    packages: tuple[str, ...]
    cmd: str = "/bin/sh"


DEBIAN_PYTHON = DebianBase("imagedsl-test/debian-python:bookworm", ("python3", "python3-pip"))
DEBIAN_NODE = DebianBase("imagedsl-test/debian-node:bookworm", ("nodejs", "npm"))
DEBIAN_GCC = DebianBase("imagedsl-test/debian-gcc:bookworm", ("gcc", "libc6-dev"))
#: Debian's Go: cross-compiles for every GOARCH with no C toolchain (CGO_ENABLED=0).
DEBIAN_GO = DebianBase("imagedsl-test/debian-go:bookworm", ("golang-go",))


def base_cache_dir() -> Path:
    """Where test bases are cached between runs: $IMAGEDSL_TEST_CACHE, else the user cache."""
    explicit = os.environ.get("IMAGEDSL_TEST_CACHE")
    if explicit:
        return Path(explicit)
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "imagedsl-test"


def ensure_debian_image(
    engine: DockerEngine, base: DebianBase, cache_dir: Path | None = None
) -> str:
    """Make sure ``base.tag`` is a Debian minbase image with ``base.packages``; return it.

    The recipe (suite, variant, packages, dpkg options, mmdebstrap version) is hashed; the
    rootfs tar is cached as ``<cache>/<name>-<hash>.tar`` and the engine's image carries the
    hash as a label, so the tar is made once per machine and imported once per engine.
    """
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise BaseUnavailable("no mmdebstrap on PATH (Debian: apt-get install mmdebstrap)")
    version = subprocess.run(
        [mmdebstrap, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    recipe = {
        "suite": _DEBIAN_SUITE,
        "variant": "minbase",
        "include": sorted(base.packages),
        "dpkgopt": list(_DPKG_EXCLUDES),
        "mmdebstrap": version,
        "cmd": base.cmd,
    }
    recipe_sha = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    cache = cache_dir or base_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    name = base.tag.rsplit("/", 1)[-1].replace(":", "-")
    with _file_lock(Path(tempfile.gettempdir(), f"imagedsl-test-{name}.lock")):
        if _image_labels(engine, base.tag).get(DEBIAN_RECIPE_LABEL) == recipe_sha:
            return base.tag
        tar = cache / f"{name}-{recipe_sha[:16]}.tar"
        if not tar.is_file():
            _mmdebstrap(mmdebstrap, base, tar)
        engine.run(
            "import",
            "--change", f"LABEL {DEBIAN_RECIPE_LABEL}={recipe_sha}",
            "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change", f'CMD ["{base.cmd}"]',
            str(tar),
            base.tag,
        )  # fmt: skip
    return base.tag


def _mmdebstrap(mmdebstrap: str, base: DebianBase, tar: Path) -> None:
    partial = tar.with_name(f".{tar.name}.{os.getpid()}.partial")
    command = [
        mmdebstrap,
        "--variant=minbase",
        "--format=tar",
        f"--include={','.join(base.packages)}",
        *(f"--dpkgopt={option}" for option in _DPKG_EXCLUDES),
        _DEBIAN_SUITE,
        str(partial),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        raise BaseUnavailable(f"{' '.join(command)} took more than 15 minutes") from None
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BaseUnavailable(
            f"{' '.join(command)} failed ({result.returncode}):\n{tail_lines(result.stderr)}"
        )
    os.replace(partial, tar)


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
            return tail_lines(self.log_path.read_text(errors="replace"), lines)
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


# --- containers that serve HTTP -----------------------------------------------------------------


@contextlib.contextmanager
def serving(engine: DockerEngine, tag: str, port: int) -> Iterator[str]:
    """Run ``tag`` detached with ``port`` published on loopback; yield its base URL."""
    container = engine.run("run", "--detach", "--publish", f"127.0.0.1::{port}", tag).stdout.strip()
    try:
        mapping = engine.run("port", container, f"{port}/tcp").stdout.split()[0]
        yield f"http://{mapping}"
    finally:
        engine.run("rm", "--force", container, check=False)


def http_get(url: str, *, timeout: float = 60.0) -> tuple[int, bytes]:
    """GET ``url`` (never through a proxy), retrying until the server answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _NO_PROXY_OPENER.open(url, timeout=5) as response:
                return int(response.status), bytes(response.read())
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


#: The engine version CI runs (Debian 12's docker.io) and that version-bound tests pin.
PINNED_ENGINE = "20.10"


def expect_engine(engine: DockerEngine, version: str, why: str) -> None:
    """Fail loudly unless ``engine`` is Docker ``version`` with its built-in BuildKit: the
    calling test pins that version's behaviour (``why``) and must be revisited for another."""
    import pytest  # this module is also used outside pytest

    if engine.buildx or not engine.server_version.startswith(version + "."):
        pytest.fail(
            f"this test pins Docker {version}'s built-in BuildKit ({why}), but the engine is "
            f"{engine.server_version}{' with buildx' if engine.buildx else ''}: check the "
            "behaviour on this engine and update the test",
            pytrace=False,
        )


def host_tool(name: str) -> str:
    """A host tool an example needs to fill its offline cache: fail in CI (where
    IMAGEDSL_REQUIRE_DOCKER=1), skip elsewhere."""
    from tests.support.skips import require_tool  # this module is also used outside pytest

    return require_tool(name, "needed on the host to prepare the example's offline cache")

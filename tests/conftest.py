"""Shared fixtures. Real-Docker ones come first; append your own fixtures below them.

Docker fixtures (helpers in ``tests/docker.py``):

- ``docker_engine`` (session): a :class:`DockerEngine` that answered and BuildKit-built.
- ``busybox_image`` (session): reference of a tiny busybox image on that engine.
- ``registry`` (function): a fresh ``docker-registry`` on 127.0.0.1 with its own storage.
- ``debian_python_image``, ``debian_node_image``, ``debian_gcc_image`` (session): Debian
  minbase images made with mmdebstrap (python3 + pip, nodejs + npm, gcc + libc6-dev), the
  local stand-ins for public bases; cached on disk and in the engine by their recipe.

Tests using ``docker_engine`` or ``busybox_image`` get the ``docker`` marker automatically, so
``-m "not docker"`` deselects them. Every test that lacks an engine, a registry binary, a tool
or root goes through :mod:`tests.support.skips`: skipped, with a banner at the end saying so;
with ``IMAGEDSL_REQUIRE_DOCKER=1`` (``.ci/run`` sets it) failed instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from tests.support import docker, skips
from tests.support import docker as docker_support
from tests.support import fidelity as fidelity_support
from tests.support.skips import unavailable

# Tests assert behaviour, never speed (benchmarks/ measure it): no per-example deadline, which
# a machine busy with other builds would turn into a failure of a correct test.
settings.register_profile("imagedsl", deadline=None)
settings.load_profile("imagedsl")

if TYPE_CHECKING:
    from collections.abc import Iterator

_DOCKER_FIXTURES = frozenset(
    {
        "docker_engine",
        "busybox_image",
        "debian_python_image",
        "debian_node_image",
        "debian_gcc_image",
        "debian_go_image",
    }
)


def pytest_configure() -> None:
    """The ``imagedsl`` processes tests start run in those processes: a plan server
    (imagedsl._server) started by one test would serve others. tests/test_server.py turns
    servers on for its own processes, each test with a runtime directory of its own."""
    os.environ["IMAGEDSL_SERVER"] = "0"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use the Docker fixtures with ``docker`` (declared in pyproject.toml)."""
    for item in items:
        if _DOCKER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(name="docker_engine", scope="session")
def fixture_docker_engine() -> docker.DockerEngine:
    """A docker client + engine with BuildKit (see docker.find_docker)."""
    notes: list[str] = []
    engine = docker.find_docker(notes)
    if engine is None:
        hint = 'start one with: eval "$(.ci/run --setup-only)"'
        unavailable(skips.NO_DOCKER, "; ".join([*notes, hint]))
    return engine


@pytest.fixture(name="busybox_image", scope="session")
def fixture_busybox_image(docker_engine: docker.DockerEngine) -> str:
    """``imagedsl-test/busybox:latest``: scratch + static busybox, built once per machine."""
    try:
        return docker.ensure_busybox_image(docker_engine)
    except docker.BusyboxUnavailable as exc:
        unavailable("no static busybox for the base image", str(exc))


def _debian_image(engine: docker.DockerEngine, base: docker.DebianBase) -> str:
    try:
        return docker.ensure_debian_image(engine, base)
    except docker.BaseUnavailable as exc:
        unavailable(f"no Debian base image {base.tag}", str(exc))


@pytest.fixture(name="debian_python_image", scope="session")
def fixture_debian_python_image(docker_engine: docker.DockerEngine) -> str:
    """A Debian bookworm minbase with python3 and pip (stands in for python:3.12-slim)."""
    return _debian_image(docker_engine, docker.DEBIAN_PYTHON)


@pytest.fixture(name="debian_node_image", scope="session")
def fixture_debian_node_image(docker_engine: docker.DockerEngine) -> str:
    """A Debian bookworm minbase with nodejs and npm (stands in for node:20-bookworm-slim)."""
    return _debian_image(docker_engine, docker.DEBIAN_NODE)


@pytest.fixture(name="debian_gcc_image", scope="session")
def fixture_debian_gcc_image(docker_engine: docker.DockerEngine) -> str:
    """A Debian bookworm minbase with gcc and libc6-dev (stands in for gcc:13)."""
    return _debian_image(docker_engine, docker.DEBIAN_GCC)


@pytest.fixture(name="debian_go_image", scope="session")
def fixture_debian_go_image(docker_engine: docker.DockerEngine) -> str:
    """A Debian bookworm minbase with golang-go (cross-compiles with CGO_ENABLED=0)."""
    return _debian_image(docker_engine, docker.DEBIAN_GO)


@pytest.fixture(name="run_runtime")
def fixture_run_runtime() -> None:
    """Root and runc for RUN steps, or a skip (a failure under IMAGEDSL_REQUIRE_DOCKER=1)."""
    skips.require_run_runtime()


@pytest.fixture(name="registry")
def fixture_registry(tmp_path: Path) -> Iterator[docker.RegistryServer]:
    """A fresh registry on a free 127.0.0.1 port; push to ``f"{registry.host}/name:tag"``."""
    try:
        server = docker.start_registry(tmp_path / "registry")
    except docker.RegistryUnavailable as exc:
        unavailable(skips.NO_REGISTRY, str(exc))
    with server:
        yield server


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """Say loudly, after the short summary, how many tests were skipped for want of Docker."""
    yield
    counts = dict.fromkeys(skips.PREFIXES, 0)
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
        reason = reason.removeprefix("Skipped: ")
        for prefix in counts:
            if reason.startswith(prefix):
                counts[prefix] += 1
    for prefix, count in counts.items():
        if count:
            terminalreporter.write_sep(
                "!",
                f"{count} test{'s' if count != 1 else ''} SKIPPED because {prefix}; CI runs "
                f"them (set {skips.REQUIRE_ENV}=1 to fail instead)",
                red=True,
                bold=True,
            )


@pytest.fixture(name="fidelity_oci_store", scope="session")
def fixture_fidelity_oci_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store per worker for the OCI builds of the edit scenarios (bases imported once)."""
    return tmp_path_factory.mktemp("fidelity-oci-store")


@pytest.fixture(name="fidelity")
def fixture_fidelity(
    docker_engine: docker_support.DockerEngine,
    busybox_image: str,
    fidelity_oci_store: Path,
    tmp_path: Path,
) -> fidelity_support.FidelityRun:
    """Runs one edit scenario (see tests/support/fidelity.py)."""
    return fidelity_support.FidelityRun(
        engine=docker_engine, image=busybox_image, oci_store=fidelity_oci_store, root=tmp_path
    )

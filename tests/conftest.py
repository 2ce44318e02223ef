"""Shared fixtures. Real-Docker ones come first; append your own fixtures below them.

Docker fixtures (helpers in ``tests/docker_support.py``):

- ``docker_engine`` (session): a :class:`DockerEngine` that answered and BuildKit-built.
- ``busybox_image`` (session): reference of a tiny busybox image on that engine.
- ``registry`` (function): a fresh ``docker-registry`` on 127.0.0.1 with its own storage.
- ``debian_python_image``, ``debian_node_image``, ``debian_gcc_image`` (session): Debian
  minbase images made with mmdebstrap (python3 + pip, nodejs + npm, gcc + libc6-dev), the
  local stand-ins for public bases; cached on disk and in the engine by their recipe.

Tests using ``docker_engine`` or ``busybox_image`` get the ``docker`` marker automatically, so
``-m "not docker"`` deselects them. When no engine (or registry binary) is available they are
skipped and a banner at the end says so; with ``IMAGEDSL_REQUIRE_DOCKER=1`` (``.ci/run`` sets
it) they fail instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

# pytest's default import mode already puts tests/ on sys.path; this also covers importlib mode.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

import docker_support
import fidelity_support

if TYPE_CHECKING:
    from collections.abc import Iterator

REQUIRE_DOCKER_ENV = "IMAGEDSL_REQUIRE_DOCKER"
_DOCKER_FIXTURES = frozenset(
    {
        "docker_engine",
        "busybox_image",
        "debian_python_image",
        "debian_node_image",
        "debian_gcc_image",
    }
)
# Skip reasons start with one of these; the summary banner counts them.
_NO_DOCKER = "no Docker engine answered"
_NO_REGISTRY = "no docker-registry binary was found"


def _unavailable(what: str, details: str) -> NoReturn:
    """Fail under IMAGEDSL_REQUIRE_DOCKER=1, else skip (loudly: see the summary hook)."""
    if os.environ.get(REQUIRE_DOCKER_ENV) == "1":
        pytest.fail(f"{what} ({REQUIRE_DOCKER_ENV}=1): {details}", pytrace=False)
    pytest.skip(f"{what}: {details}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests that use the Docker fixtures with ``docker`` (declared in pyproject.toml)."""
    for item in items:
        if _DOCKER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(name="docker_engine", scope="session")
def fixture_docker_engine() -> docker_support.DockerEngine:
    """A docker client + engine with BuildKit (see docker_support.find_docker)."""
    notes: list[str] = []
    engine = docker_support.find_docker(notes)
    if engine is None:
        hint = 'start one with: eval "$(.ci/run --setup-only)"'
        _unavailable(_NO_DOCKER, "; ".join([*notes, hint]))
    return engine


@pytest.fixture(name="busybox_image", scope="session")
def fixture_busybox_image(docker_engine: docker_support.DockerEngine) -> str:
    """``imagedsl-test/busybox:latest``: scratch + static busybox, built once per machine."""
    try:
        return docker_support.ensure_busybox_image(docker_engine)
    except docker_support.BusyboxUnavailable as exc:
        _unavailable("no static busybox for the base image", str(exc))


def _debian_image(engine: docker_support.DockerEngine, base: docker_support.DebianBase) -> str:
    try:
        return docker_support.ensure_debian_image(engine, base)
    except docker_support.BaseUnavailable as exc:
        _unavailable(f"no Debian base image {base.tag}", str(exc))


@pytest.fixture(name="debian_python_image", scope="session")
def fixture_debian_python_image(docker_engine: docker_support.DockerEngine) -> str:
    """A Debian bookworm minbase with python3 and pip (stands in for python:3.12-slim)."""
    return _debian_image(docker_engine, docker_support.DEBIAN_PYTHON)


@pytest.fixture(name="debian_node_image", scope="session")
def fixture_debian_node_image(docker_engine: docker_support.DockerEngine) -> str:
    """A Debian bookworm minbase with nodejs and npm (stands in for node:20-bookworm-slim)."""
    return _debian_image(docker_engine, docker_support.DEBIAN_NODE)


@pytest.fixture(name="debian_gcc_image", scope="session")
def fixture_debian_gcc_image(docker_engine: docker_support.DockerEngine) -> str:
    """A Debian bookworm minbase with gcc and libc6-dev (stands in for gcc:13)."""
    return _debian_image(docker_engine, docker_support.DEBIAN_GCC)


@pytest.fixture(name="registry")
def fixture_registry(tmp_path: Path) -> Iterator[docker_support.RegistryServer]:
    """A fresh registry on a free 127.0.0.1 port; push to ``f"{registry.host}/name:tag"``."""
    try:
        server = docker_support.start_registry(tmp_path / "registry")
    except docker_support.RegistryUnavailable as exc:
        _unavailable(_NO_REGISTRY, str(exc))
    with server:
        yield server


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """Say loudly, after the short summary, how many tests were skipped for want of Docker."""
    yield
    counts = {_NO_DOCKER: 0, _NO_REGISTRY: 0}
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
                f"them (set {REQUIRE_DOCKER_ENV}=1 to fail instead)",
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
    """Runs one edit scenario (see tests/fidelity_support.py)."""
    return fidelity_support.FidelityRun(
        engine=docker_engine, image=busybox_image, oci_store=fidelity_oci_store, root=tmp_path
    )

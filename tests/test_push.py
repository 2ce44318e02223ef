"""``imagedsl push`` and ``build --push`` against a real registry; docker and skopeo read it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl.registry.push import destinations
from imagedsl.store import Store
from tests.support import docker, oci
from tests.support import registry as rs
from tests.support.skips import NO_REGISTRY, require_tool, unavailable

USER = "builder"
PASSWORD = "s3cret-that-must-not-leak"
HELLO = "#!/bin/sh\necho hello from an imagedsl image\n"
BUILD_FILE = """\
import imagedsl as dsl

src = dsl.context(".")
app = dsl.image({base!r}).copy(src.file("hello.sh"), "/usr/local/bin/").cmd("/usr/local/bin/hello.sh")
"""


def imagedsl(
    *args: str, cwd: Path, store: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m imagedsl ARGS`` with its own store."""
    return subprocess.run(
        [sys.executable, "-m", "imagedsl", *args],
        cwd=cwd,
        env={**os.environ, "IMAGEDSL_STORE": str(store), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(name="layout", scope="module")
def fixture_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout holding the busybox base under tag 1 (written by the test helpers)."""
    directory = tmp_path_factory.mktemp("layout")
    oci.make_busybox_layout(directory)
    return directory


def project_on(base: str, root: Path) -> Path:
    """A project whose image prints HELLO, on ``base``."""
    root.mkdir(parents=True)
    (root / "hello.sh").write_text(HELLO)
    (root / "hello.sh").chmod(0o755)
    (root / "build.py").write_text(BUILD_FILE.format(base=base))
    return root


def test_push_a_layout_under_several_tags_and_repositories(
    registry: docker.RegistryServer, layout: Path, tmp_path: Path
) -> None:
    """Bare -t values are tags of REF's repository, full ones other repositories (mounted)."""
    result = imagedsl(
        "push", f"oci:{layout}:1", f"{registry.host}/app:1",
        "-t", "2", "-t", f"{registry.host}/mirror:3",
        cwd=tmp_path, store=tmp_path / "store",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    digest, _, _ = oci.read_image(layout, "1")
    assert result.stdout.splitlines() == [
        f"{registry.host}/app:1@{digest}",
        f"{registry.host}/mirror:3@{digest}",
    ]
    assert sorted(registry.tags("app")) == ["1", "2"]
    assert registry.tags("mirror") == ["3"]
    assert "  pushed " in result.stderr
    assert " mounted " in result.stderr


def test_push_an_oci_archive(registry: docker.RegistryServer, layout: Path, tmp_path: Path) -> None:
    """An oci-archive written by the OCI backend pushes to the same manifest digest."""
    store = Store(tmp_path / "store")
    archive = tmp_path / "image.tar"
    outcome, _ = oci.build(
        {"a": dsl.image(f"oci:{layout}:1").workdir("/srv")},
        store,
        output=f"oci-archive:{archive}:v1",
    )
    result = imagedsl(
        "push", f"oci-archive:{archive}:v1", f"{registry.host}/archived",
        cwd=tmp_path, store=tmp_path / "store",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip() == f"{registry.host}/archived:latest@{outcome.image.manifest_digest}"
    )


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        pytest.param("oci:{layout}:nope", "has not exactly tag 'nope'; it holds ['1']", id="tag"),
        pytest.param("oci:{empty}", "is not an OCI layout", id="not-layout"),
        pytest.param("docker-archive:{empty}", "expected oci:DIR[:TAG]", id="transport"),
        pytest.param("oci-archive:{empty}/x.tar", "is not a file", id="no-archive"),
    ],
)
def test_push_refuses_what_it_cannot_read(
    layout: Path, tmp_path: Path, source: str, problem: str
) -> None:
    """A bad source is a usage error (exit 2) that says what is wrong, before any network."""
    text = source.format(layout=layout, empty=tmp_path)
    result = imagedsl("push", text, "127.0.0.1:9/x:1", cwd=tmp_path, store=tmp_path / "store")
    assert result.returncode == 2
    assert problem in result.stderr


def test_destinations_group_tags_by_repository() -> None:
    """REF's tag first, then bare tags; full references make their own repositories."""
    found = destinations("r.example:5000/a/b:1", ["2", "r.example:5000/c:3", "1", "x.io/d:4"])
    assert [(str(ref), tags) for ref, tags in found] == [
        ("r.example:5000/a/b:1", ("1", "2")),
        ("r.example:5000/c:3", ("3",)),
        ("x.io/d:4", ("4",)),
    ]


# -- with Docker ------------------------------------------------------------------------------


@pytest.fixture(name="docker_cleanup")
def fixture_docker_cleanup(docker_engine: docker.DockerEngine) -> Iterator[list[str]]:
    """Image references to remove from the engine after the test."""
    names: list[str] = []
    yield names
    for name in names:
        docker_engine.run("rmi", "-f", name, check=False)


def test_build_push_runs_in_docker_and_skopeo_reads_it(
    registry: docker.RegistryServer,
    layout: Path,
    tmp_path: Path,
    docker_engine: docker.DockerEngine,
    docker_cleanup: list[str],
) -> None:
    """What build --push sends, docker pulls and runs, and skopeo inspects, by one digest."""
    project = project_on(f"oci:{layout}:1", tmp_path / "project")
    ref = f"{registry.host}/hello:1"
    result = imagedsl(
        "build", "build.py:app", "--backend", "oci", "--push", ref,
        cwd=project, store=tmp_path / "store",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pushed = result.stdout.strip()
    assert pushed.startswith(f"{ref}@sha256:")
    digest = pushed.partition("@")[2]
    docker_cleanup.append(ref)
    docker_engine.run("pull", ref)
    ran = docker_engine.run("run", "--rm", ref)
    assert ran.stdout.strip() == "hello from an imagedsl image"
    repo_digests = docker_engine.run("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
    assert f"{registry.host}/hello@{digest}" in json.loads(repo_digests.stdout)
    skopeo = require_tool("skopeo")
    inspected = subprocess.run(
        [skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert json.loads(inspected.stdout)["Digest"] == digest


def test_builds_on_what_docker_pushed(
    registry: docker.RegistryServer,
    busybox_image: str,
    tmp_path: Path,
    docker_engine: docker.DockerEngine,
    docker_cleanup: list[str],
) -> None:
    """docker push's image (Docker v2 manifest) is a base the OCI backend pulls and builds on."""
    base = f"{registry.host}/busybox:1"
    docker_cleanup.append(base)
    docker_engine.run("tag", busybox_image, base)
    docker_engine.run("push", base)
    project = project_on(base, tmp_path / "project")
    ref = f"{registry.host}/on-busybox:1"
    result = imagedsl(
        "build", "build.py:app", "--backend", "oci", "--push", ref,
        cwd=project, store=tmp_path / "store",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert " mounted " in result.stderr  # the base's layer, from the base's repository
    docker_cleanup.append(ref)
    docker_engine.run("pull", ref)
    ran = docker_engine.run("run", "--rm", ref)
    assert ran.stdout.strip() == "hello from an imagedsl image"
    listed = docker_engine.run("run", "--rm", "--entrypoint", "/bin/ls", ref, "/bin/busybox")
    assert listed.stdout.strip() == "/bin/busybox"


# -- credentials ------------------------------------------------------------------------------


@pytest.fixture(name="basic_registry")
def fixture_basic_registry(tmp_path: Path) -> Iterator[rs.CustomRegistry]:
    """A registry with htpasswd Basic auth over TLS, and the CA that signed its certificate."""
    try:
        ca = rs.make_ca(tmp_path / "ca")
        cert = rs.make_server_cert(tmp_path, ca)
        rs.write_htpasswd(tmp_path / "htpasswd", {USER: PASSWORD})
        server = rs.start_custom_registry(
            tmp_path / "basic",
            auth={"htpasswd": {"realm": "imagedsl-test", "path": str(tmp_path / "htpasswd")}},
            tls=cert,
        )
    except docker.RegistryUnavailable as exc:
        unavailable(NO_REGISTRY, str(exc))
    yield server
    server.stop()


def docker_config(directory: Path, host: str, password: str, ca: Path) -> dict[str, str]:
    """Environment for a CLI run: a Docker config with credentials for ``host``, and the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    encoded = base64.b64encode(f"{USER}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {host: {"auth": encoded}}}))
    return {"DOCKER_CONFIG": str(directory), "SSL_CERT_FILE": str(ca)}


def secrets() -> list[str]:
    """Every form in which the credentials could leak."""
    return [PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]


def test_credentials_are_never_printed_nor_cached(
    basic_registry: rs.CustomRegistry, layout: Path, tmp_path: Path
) -> None:
    """Push, build --push and --cache-to authenticate from Docker's config over verified TLS;
    no output and no blob in the registry holds the credentials; a refusal names none."""
    host = basic_registry.host
    ca = tmp_path / "ca" / "ca.pem"  # made by the basic_registry fixture
    env = docker_config(tmp_path / "docker", host, PASSWORD, ca)
    project = project_on(f"oci:{layout}:1", tmp_path / "project")
    pushed = imagedsl(
        "push", f"oci:{layout}:1", f"{host}/base:1", cwd=tmp_path, store=tmp_path / "s", env=env
    )
    built = imagedsl(
        "build", "build.py:app", "--backend", "oci", "--push", f"{host}/app:1",
        "--cache-to", f"registry:{host}/cache:1",
        cwd=project, store=tmp_path / "s", env=env,
    )  # fmt: skip
    planned = imagedsl(
        "plan", "build.py:app", "--cache-from", f"registry:{host}/cache:1",
        cwd=project, store=tmp_path / "fresh", env=env,
    )  # fmt: skip
    for result in (pushed, built, planned):
        assert result.returncode == 0, result.stderr
        for secret in secrets():
            assert secret not in result.stdout + result.stderr
    assert "0 miss" in planned.stdout
    blobs = basic_registry.storage / "docker" / "registry" / "v2" / "blobs"
    stored = [p.read_bytes() for p in blobs.rglob("data")]
    assert len(stored) >= 5
    for data in stored:
        for secret in secrets():
            assert secret.encode() not in data

    wrong = docker_config(tmp_path / "wrong", host, PASSWORD + "-nope", ca)
    refused = imagedsl(
        "push", f"oci:{layout}:1", f"{host}/base:2", cwd=tmp_path, store=tmp_path / "s", env=wrong
    )
    assert refused.returncode != 0
    assert "authentication failed" in refused.stderr
    assert PASSWORD not in refused.stdout + refused.stderr

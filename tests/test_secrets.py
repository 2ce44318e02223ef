"""Secrets fail loudly: a missing or unreadable ``src``, a directory or an unset ``env=`` is an
input error (exit 2, one line) in both backends, whether a RUN asks for the secret or not;
``~`` expands in both; both mask secret values in the output they relay."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl.backends import BuildRequest, BuildRequestError, SecretError, SecretSource
from imagedsl.backends.dockerfile.buildkit import DockerfileBackend, _BuildRun
from imagedsl.backends.dockerfile.lowering import lower_to_dockerfile
from imagedsl.backends.oci.backend import OCIBackend
from imagedsl.planner import plan
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from tests.support import oci as oci_support
from tests.support.docker import DockerEngine


def _broken(tmp_path: Path) -> list[tuple[str, str]]:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return [
        (f"id=s,src={tmp_path / 'missing'}", f"no such file {tmp_path / 'missing'}"),
        (f"id=s,src={tmp_path / 'a-directory'}", "is a directory, not a file"),
        (f"id=s,src={tmp_path / 'loop'}", "cannot read"),
        ("id=s,env=IMAGEDSL_TEST_UNSET_SECRET", "IMAGEDSL_TEST_UNSET_SECRET is not set"),
    ]


BROKEN = ["missing", "directory", "unreadable", "unset-env"]


@pytest.mark.parametrize("which", range(4), ids=BROKEN)
def test_a_secret_that_cannot_be_read_is_an_input_error(which: int, tmp_path: Path) -> None:
    """Each kind of broken source is a :class:`SecretError` naming the id and the problem."""
    text, problem = _broken(tmp_path)[which]
    with pytest.raises(SecretError) as caught:
        SecretSource.parse(text).read()
    assert caught.value.id == "s"
    assert problem in caught.value.problem
    assert caught.value.exit_code == 2
    assert isinstance(caught.value, BuildRequestError)


def test_a_secret_file_under_home_is_found_with_a_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``src=~/token`` is the token in the home directory, for both backends."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "token").write_text("value")
    source = SecretSource.parse("id=t,src=~/token")
    assert source.read() == b"value"
    assert source.host_path == str(tmp_path / "token")


def test_a_secret_over_buildkits_limit_is_refused(tmp_path: Path) -> None:
    """BuildKit takes secrets up to 500 KiB; so does imagedsl."""
    (tmp_path / "big").write_bytes(b"x" * (500 * 1024 + 1))
    with pytest.raises(SecretError, match="500 KiB"):
        SecretSource.parse(f"id=big,src={tmp_path / 'big'}").read()


@pytest.mark.parametrize("which", range(4), ids=BROKEN)
@pytest.mark.parametrize("backend", ["oci", "docker"])
def test_both_backends_refuse_a_broken_secret_before_building(
    which: int, backend: str, tmp_path: Path
) -> None:
    """``imagedsl build --secret`` with a broken source exits 2 with one line, before any
    engine or runtime is needed, even for a secret no RUN requires (it was dropped)."""
    text, problem = _broken(tmp_path)[which]
    (tmp_path / "build.py").write_text(
        "import imagedsl as dsl\n"
        "app = dsl.scratch().run('true', mounts=[dsl.secret('s')])\n"  # not required
    )
    env = {k: v for k, v in os.environ.items() if k != "IMAGEDSL_TEST_UNSET_SECRET"}
    env.update(IMAGEDSL_STORE=str(tmp_path / "store"), DOCKER_HOST="unix:///nonexistent.sock")
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", "build", "build.py", "--backend", backend,
         "--secret", text],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --secret id=s: ")
    assert problem in lines[0]


def test_the_oci_backend_refuses_before_running_anything(tmp_path: Path) -> None:
    """From the library too: the OCI backend reads every given secret before any step."""
    stage = dsl.scratch().run("true", mounts=[dsl.secret("s")])
    store = Store(tmp_path / "store")
    request = BuildRequest(secrets=(SecretSource.parse(f"id=s,src={tmp_path / 'none'}"),))
    with pytest.raises(SecretError):
        OCIBackend().build_image(
            plan(stage, "s", store=store), request, store=store, reporter=Reporter()
        )


class Lines(Reporter):
    """Keeps the output lines a backend relays."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step_output(self, label: str, line: str) -> None:  # noqa: ARG002 - the hook's signature
        self.lines.append(line)


def test_the_docker_backend_masks_secret_values_in_what_it_relays(tmp_path: Path) -> None:
    """BuildKit prints what a RUN echoes, secrets included: each value (and each line of a
    multi-line one) becomes ``****`` before it is relayed or kept for an error."""
    stage = dsl.scratch().run("true")
    planned = plan(stage, "s", store=Store(tmp_path / "store"))
    reporter = Lines()
    run = _BuildRun(
        planned, lower_to_dockerfile(planned), reporter, "plain", ["first-line", "s3cr3t-value"]
    )
    run.execute(
        [sys.executable, "-c", "print('#5 0.21 token=s3cr3t-value'); print('#5 0.22 first-line')"],
        dict(os.environ),
    )
    assert reporter.lines == ["#5 0.21 token=****", "#5 0.22 ****"]
    assert all("s3cr3t" not in line for line in run.parser.build_lines)


def test_docker_build_masks_an_echoed_secret(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """A RUN that echoes its secret under the docker backend shows ``****`` instead."""
    value = f"s3cr3t-{uuid.uuid4().hex}"
    (tmp_path / "token").write_text(value)
    stage = dsl.image(busybox_image).run(
        f"echo {uuid.uuid4().hex} && cat /run/secrets/token && echo", mounts=[dsl.secret("token")]
    )
    store = Store(tmp_path / "store")
    reporter = Lines()
    request = BuildRequest(
        secrets=(SecretSource.parse(f"id=token,src={tmp_path / 'token'}"),), progress="plain"
    )
    DockerfileBackend(docker_engine).build(
        plan(stage, "s", store=store), request, store=store, reporter=reporter
    )
    assert not any(value in line for line in reporter.lines)
    assert any("****" in line for line in reporter.lines)


def test_the_oci_backend_expands_a_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OCI backend reads ``src=~/...`` (checked before any RUN, runtime or not)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "token").write_text("value")
    base = oci_support.make_busybox_layout(tmp_path / "base")
    store = Store(tmp_path / "store")
    request = BuildRequest(secrets=(SecretSource.parse("id=t,src=~/token"),))
    built = OCIBackend().build_image(
        plan(dsl.image(base).cmd("x"), "s", store=store), request, store=store, reporter=Reporter()
    )
    assert built.result.digest is not None

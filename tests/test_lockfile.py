"""The lock file: `plan --resolve` pins registry bases by digest, later plans read the pins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl import api
from imagedsl.lockfile import LockFile, LockFileError
from imagedsl.registry.client import RegistryClient
from imagedsl.store import Store
from tests.support.docker import RegistryServer
from tests.support.registry import make_image

DIGEST = "sha256:" + "c" * 64


def write_build(directory: Path, base: str) -> Path:
    """A build file FROM ``base`` with one RUN."""
    path = directory / "build.py"
    path.write_text(f"import imagedsl as dsl\n\napp = dsl.image({base!r}).run('true')\n")
    return path


def test_lock_pins_an_unpinned_base(tmp_path: Path) -> None:
    """With a lock entry, the FROM key is the digest's, and the plan says where it came from."""
    build_path = write_build(tmp_path, "alpine:3.20")
    unlocked = api.load_buildfile(build_path).plan()
    LockFile(tmp_path / "imagedsl.lock").updated(
        [("docker.io/library/alpine:3.20", "linux/amd64", DIGEST)]
    ).write()
    locked = api.load_buildfile(build_path).plan()
    assert locked.steps[0].node.preimage["digest"] == DIGEST
    assert locked.steps[0].key != unlocked.steps[0].key
    assert locked.steps[0].key == api.plan(dsl.image(f"alpine:3.20@{DIGEST}")).steps[0].key
    assert locked.steps[0].notes == (f"pinned to {DIGEST} by the lock file",)
    other_platform = api.load_buildfile(build_path).plan(platform="linux/arm64")
    assert other_platform.steps[0].node.preimage["digest"] is None


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{", id="not-json"),
        pytest.param('{"version": 99, "images": {}}', id="other-version"),
        pytest.param('{"version": 1, "images": {"a": {"linux/amd64": "md5:1"}}}', id="bad-digest"),
        pytest.param(
            '{"version": 2, "images": {"a": {"linux/amd64": {"image": "md5:1"}}}}',
            id="bad-image-digest",
        ),
    ],
)
def test_malformed_lock_is_an_error_naming_the_file(tmp_path: Path, content: str) -> None:
    """A lock file that cannot be trusted is refused, never silently ignored."""
    (tmp_path / "imagedsl.lock").write_text(content)
    with pytest.raises(LockFileError) as caught:
        LockFile.beside(tmp_path / "build.py")
    assert caught.value.path == str(tmp_path / "imagedsl.lock")


def test_a_version_1_lock_is_read_as_written(tmp_path: Path) -> None:
    """An older lock's manifest digest stays the base's identity (and what pulls it)."""
    build_path = write_build(tmp_path, "alpine:3.20")
    (tmp_path / "imagedsl.lock").write_text(
        json.dumps(
            {"version": 1, "images": {"docker.io/library/alpine:3.20": {"linux/amd64": DIGEST}}}
        )
    )
    locked = api.load_buildfile(build_path).plan()
    assert locked.steps[0].node.preimage["digest"] == DIGEST
    assert locked.steps[0].node.base is not None
    assert locked.steps[0].node.base.manifest == DIGEST


def push_base(registry: RegistryServer, tmp_path: Path, content: bytes) -> tuple[str, str]:
    """Push a one-layer image as ``base:1``; return its manifest and config digests."""
    store = Store(tmp_path / f"push-{content.hex()}")
    manifest = make_image(store, [{"etc/version": content}])
    with RegistryClient() as client:
        client.push(store, manifest, f"{registry.host}/base:1")
    config = json.loads(store.blob_path(manifest.digest).read_bytes())["config"]["digest"]
    return manifest.digest, config


def plan_json(build_path: Path, store: Path, *extra: str) -> dict[str, object]:
    """`imagedsl plan --json` as a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", "plan", str(build_path), "--json", *extra],
        env={**os.environ, "IMAGEDSL_STORE": str(store)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_plan_resolve_against_a_real_registry(registry: RegistryServer, tmp_path: Path) -> None:
    """--resolve pins the tag's current image (its config digest, and the manifest digest that
    pulls it); the lock holds it until resolved again."""
    first, first_image = push_base(registry, tmp_path, b"1")
    build_path = write_build(tmp_path, f"{registry.host}/base:1")
    store = tmp_path / "store"
    resolved = plan_json(build_path, store, "--resolve")
    steps = resolved["steps"]
    assert isinstance(steps, list)
    lock = json.loads((tmp_path / "imagedsl.lock").read_text())
    assert lock == {
        "version": 2,
        "images": {
            f"{registry.host}/base:1": {"linux/amd64": {"image": first_image, "manifest": first}}
        },
    }
    assert steps[0]["notes"] == [f"pinned to {first_image} by the lock file"]

    _, second_image = push_base(registry, tmp_path, b"2")  # the tag moves upstream
    again = plan_json(build_path, store)
    assert again["steps"] == steps  # the lock holds the old image
    moved = plan_json(build_path, store, "--resolve")
    moved_steps = moved["steps"]
    assert isinstance(moved_steps, list)
    assert moved_steps[0]["notes"] == [f"pinned to {second_image} by the lock file"]
    assert moved_steps[0]["key"] != steps[0]["key"]

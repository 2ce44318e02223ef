"""Multi-platform images for real: a Go program cross-compiled on $BUILDPLATFORM for amd64
and arm64, an arm64 RUN under emulation, one index pushed and pulled back per platform by
docker and skopeo, multi-platform bases, and a base of another platform refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import docker
from tests.support.emulation import arm64_busybox, require_emulation
from tests.support.equivalence import ensure_nodev_image
from tests.support.skips import require_tool

GO_MAIN = """\
package main

import (
\t"os"
\t"runtime"
)

func main() {
\tos.Stdout.WriteString("hello from " + runtime.GOOS + "/" + runtime.GOARCH + "\\n")
}
"""

GO_BUILD = """\
import imagedsl as dsl

src = dsl.context(".")
# Native: the toolchain runs on the build platform once, whatever the targets.
toolchain = (
    dsl.image({base!r}, platform="$BUILDPLATFORM")
    .env(CGO_ENABLED="0", GOCACHE="/tmp/go-cache", HOME="/tmp")
    .workdir("/src")
    .copy(src.file("main.go"), "/src/")
)
# Per target: GOARCH from TARGETARCH, still run natively (no emulation).
compiled = toolchain.arg(dsl.TARGETOS).arg(dsl.TARGETARCH).run(
    "GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags=-s -o /out/hello main.go"
)
app = dsl.scratch().copy(compiled.path("/out/hello"), "/hello").cmd(["/hello"])
dsl.targets("app")
"""

ARM_BUILD = """\
import imagedsl as dsl

src = dsl.context(".")
app = (
    dsl.scratch()
    .copy(src.file("busybox"), "/bin/busybox")
    .run(["/bin/busybox", "sh", "-c", "/bin/busybox uname -m > /built-on"])
    .cmd(["/bin/busybox", "sh", "-c", "echo built on $(/bin/busybox cat /built-on), runs on $(/bin/busybox uname -m)"])
)
"""

BASE_BUILD = """\
import imagedsl as dsl

app = dsl.image({base!r}).env(ON="base")
"""


def imagedsl(*args: str, cwd: Path, store: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m imagedsl ARGS`` with its own store."""
    return subprocess.run(
        [sys.executable, "-m", "imagedsl", *args],
        cwd=cwd,
        env={**os.environ, "IMAGEDSL_STORE": str(store)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(name="cleanup")
def fixture_cleanup(docker_engine: docker.DockerEngine) -> Iterator[list[str]]:
    """Names of images the test made in the engine, removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        docker_engine.run("rmi", "-f", name, check=False)


@pytest.mark.usefixtures("run_runtime")
def test_go_cross_compiled_index_pushed_and_pulled_per_platform(
    debian_go_image: str,
    registry: docker.RegistryServer,
    docker_engine: docker.DockerEngine,
    cleanup: list[str],
    tmp_path: Path,
) -> None:
    """The toolchain stage is planned and built once; the index holds both platforms; docker
    runs each and skopeo reads each by --override-arch."""
    project = tmp_path / "go"
    project.mkdir()
    (project / "main.go").write_text(GO_MAIN)
    toolchain_base = ensure_nodev_image(docker_engine, debian_go_image)  # no /dev nodes
    (project / "build.py").write_text(GO_BUILD.format(base=f"docker-daemon:{toolchain_base}"))
    store = tmp_path / "store"
    platforms = "linux/amd64,linux/arm64"
    planned = imagedsl("plan", "--json", "--platform", platforms, cwd=project, store=store)
    assert planned.returncode == 0, planned.stderr
    steps = json.loads(planned.stdout)["steps"]
    toolchain = [s for s in steps if s["stage"] == "toolchain"]
    assert [s["platform"] for s in toolchain] == ["linux/amd64"] * len(toolchain)
    compiled = [s for s in steps if s["stage"] == "compiled" and s["kind"] == "run"]
    assert len(compiled) == 2  # TARGETARCH differs: one compile per platform
    ref = f"{registry.host}/mp-go-{uuid.uuid4().hex[:8]}:1"
    layout = tmp_path / "layout"
    built = imagedsl(
        "build", "--backend", "oci", "--platform", platforms,
        "--output", f"oci:{layout}:1", "--push", ref,
        cwd=project, store=store,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    digest = built.stdout.strip().partition("@")[2]
    assert digest.startswith("sha256:")
    skopeo = require_tool("skopeo")
    raw = subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    index = json.loads(raw.stdout)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    for arch in ("amd64", "arm64"):
        seen = subprocess.run(
            [skopeo, "--override-arch", arch, "inspect", "--tls-verify=false", f"docker://{ref}"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert json.loads(seen.stdout)["Architecture"] == arch
    cleanup.append(ref)
    for arch in ("amd64", "arm64"):
        if arch == "arm64":
            require_emulation()
        docker_engine.run("pull", "--platform", f"linux/{arch}", ref)
        # The next pull moves the tag: this platform's image is removed by its ID.
        cleanup.append(
            docker_engine.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
        )
        ran = docker_engine.run("run", "--rm", "--platform", f"linux/{arch}", ref)
        assert ran.stdout.strip() == f"hello from linux/{arch}"


@pytest.mark.usefixtures("run_runtime")
def test_arm64_run_under_emulation(
    docker_engine: docker.DockerEngine,
    cleanup: list[str],
    tmp_path: Path,
) -> None:
    """A RUN of an arm64 image runs under qemu (binfmt_misc, flag F); docker runs the image."""
    require_emulation()
    project = tmp_path / "arm"
    project.mkdir()
    (project / "busybox").write_bytes(arm64_busybox().read_bytes())
    (project / "busybox").chmod(0o755)
    (project / "build.py").write_text(ARM_BUILD)
    name = f"imagedsl-test/mp-arm-{uuid.uuid4().hex[:8]}:1"
    cleanup.append(name)
    built = imagedsl(
        "build", "--backend", "oci", "--platform", "linux/aarch64", "--output", f"docker:{name}",
        cwd=project, store=tmp_path / "store",
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    ran = docker_engine.run("run", "--rm", "--platform", "linux/arm64", name)
    assert ran.stdout.strip() == "built on aarch64, runs on aarch64"


def test_multi_platform_layout_base_gives_each_platform_its_manifest(
    tmp_path: Path,
) -> None:
    """A base whose tag names an index: each target platform builds on its own manifest."""
    base_project = tmp_path / "base"
    base_project.mkdir()
    (base_project / "build.py").write_text(
        "import imagedsl as dsl\n\nbase = dsl.scratch().arg(dsl.TARGETARCH)"
        '.env(BASE_ARCH="$TARGETARCH")\n'
    )
    store = tmp_path / "store"
    layout = tmp_path / "base-layout"
    made = imagedsl(
        "build", "--backend", "oci", "--platform", "linux/amd64,linux/arm64",
        "--output", f"oci:{layout}:1", cwd=base_project, store=store,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    project = tmp_path / "app"
    project.mkdir()
    (project / "build.py").write_text(BASE_BUILD.format(base=f"oci:{layout}:1"))
    out = tmp_path / "out"
    built = imagedsl(
        "build", "--backend", "oci", "--platform", "linux/arm64,linux/amd64",
        "--output", f"oci:{out}:2", cwd=project, store=store,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    index = json.loads((out / "index.json").read_bytes())
    inner = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    for entry in inner["manifests"]:
        manifest = json.loads((out / "blobs/sha256" / entry["digest"][7:]).read_bytes())
        config = json.loads((out / "blobs/sha256" / manifest["config"]["digest"][7:]).read_bytes())
        arch = entry["platform"]["architecture"]
        assert config["architecture"] == arch
        assert f"BASE_ARCH={arch}" in config["config"]["Env"]


def test_single_platform_engine_base_of_another_arch_is_refused(
    busybox_image: str, tmp_path: Path
) -> None:
    """An amd64 docker-daemon: base for linux/arm64 is refused, not written as amd64."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "build.py").write_text(BASE_BUILD.format(base=f"docker-daemon:{busybox_image}"))
    built = imagedsl(
        "build", "--backend", "oci", "--platform", "linux/arm64",
        "--output", f"oci:{tmp_path / 'out'}", cwd=project, store=tmp_path / "store",
    )  # fmt: skip
    assert built.returncode == 2, built.stderr
    assert "is for linux/amd64, not linux/arm64" in built.stderr


SCRATCH_BUILD = """\
import imagedsl as dsl

src = dsl.context(".")
native = dsl.scratch(platform="$BUILDPLATFORM").copy(src.file("note.txt"), "/note.txt")
app = dsl.scratch().arg(dsl.TARGETARCH).copy(native.path("/note.txt"), "/note.txt").env(A="$TARGETARCH")
dsl.targets("app")
"""


def test_docker_backend_builds_each_platform_and_assembles_the_index(
    docker_engine: docker.DockerEngine,
    registry: docker.RegistryServer,
    cleanup: list[str],
    tmp_path: Path,
) -> None:
    """BuildKit builds each platform; oci: and --push get one index; -t gets the last one."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "note.txt").write_text("native\n")
    (project / "build.py").write_text(SCRATCH_BUILD)
    store = tmp_path / "store"
    platforms = "linux/amd64,linux/arm64"
    layout = tmp_path / "layout"
    ref = f"{registry.host}/mp-docker-{uuid.uuid4().hex[:8]}:1"
    built = imagedsl(
        "build", "--backend", "docker", "--platform", platforms,
        "--output", f"oci:{layout}:1", "--push", ref, cwd=project, store=store,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    index = json.loads((layout / "index.json").read_bytes())
    inner = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    assert [m["platform"]["architecture"] for m in inner["manifests"]] == ["amd64", "arm64"]
    assert built.stdout.strip() == f"{ref}@{index['manifests'][0]['digest']}"
    name = f"imagedsl-test/mp-docker-{uuid.uuid4().hex[:8]}:1"
    cleanup.append(name)
    tagged = imagedsl(
        "build", "--backend", "docker", "--platform", platforms, "-t", name,
        cwd=project, store=store,
    )  # fmt: skip
    assert tagged.returncode == 0, tagged.stderr
    arch = docker_engine.run("image", "inspect", "--format", "{{.Architecture}}", name)
    assert arch.stdout.strip() == "arm64"  # Docker 20.10: one platform per tag, the last
    leftovers = docker_engine.run("images", "--format", "{{.Repository}}", "imagedsl-platform-*")
    assert leftovers.stdout.strip() == ""


PER_ARCH_BUILD = """\
import imagedsl as dsl

src = dsl.context(".")
app = dsl.scratch().arg(dsl.TARGETARCH).copy(src.file("dist/$TARGETARCH/app"), "/app")
dsl.targets("app")
"""


def _layout_files(layout: Path) -> dict[str, bytes]:
    """Architecture -> the bytes of /app in that platform's image of an OCI layout."""
    import tarfile

    def blob(digest: str) -> bytes:
        return (layout / "blobs/sha256" / digest.partition(":")[2]).read_bytes()

    index = json.loads((layout / "index.json").read_bytes())
    inner = json.loads(blob(index["manifests"][0]["digest"]))
    found: dict[str, bytes] = {}
    for entry in inner["manifests"]:
        manifest = json.loads(blob(entry["digest"]))
        for layer in manifest["layers"]:
            with tarfile.open(layout / "blobs/sha256" / layer["digest"][7:]) as archive:
                for member in archive.getmembers():
                    if member.name.lstrip("./") == "app":
                        extracted = archive.extractfile(member)
                        assert extracted is not None
                        found[entry["platform"]["architecture"]] = extracted.read()
    return found


@pytest.mark.parametrize("backend", ["oci", "docker"])
def test_a_copy_source_named_by_targetarch_copies_each_platforms_file(
    docker_engine: docker.DockerEngine, tmp_path: Path, backend: str
) -> None:
    """``COPY dist/$TARGETARCH/app``: each platform's image holds its own file, with either
    backend (the plan keys each platform's copy by its own path; one Dockerfile cannot serve
    both, so ``lower`` refuses the list and each platform's build lowers its own)."""
    del docker_engine  # the docker backend builds on it
    project = tmp_path / "p"
    for arch in ("amd64", "arm64"):
        (project / "dist" / arch).mkdir(parents=True)
        (project / "dist" / arch / "app").write_text(f"built for {arch}\n")
    (project / "build.py").write_text(PER_ARCH_BUILD)
    store = tmp_path / "store"
    platforms = "linux/amd64,linux/arm64"
    layout = tmp_path / "layout"
    built = imagedsl(
        "build", "--backend", backend, "--platform", platforms, "--output", f"oci:{layout}:1",
        cwd=project, store=store,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert _layout_files(layout) == {"amd64": b"built for amd64\n", "arm64": b"built for arm64\n"}
    lowered = imagedsl("lower", "--platform", platforms, cwd=project, store=store)
    assert lowered.returncode == 2
    assert "lower one platform at a time" in lowered.stderr

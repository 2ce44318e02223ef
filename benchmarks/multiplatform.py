"""Benchmark a two-platform image: ``imagedsl build --platform linux/amd64,linux/arm64`` against
``docker build`` run once per platform, side by side.

The image is a Go program cross-compiled on ``$BUILDPLATFORM`` into ``scratch`` for amd64 and
arm64 (Debian's golang-go, no emulation): a native stage (the toolchain, the source, ``go
vet``) that both platforms share, then one ``go build`` per target platform (``GOARCH`` from
``TARGETARCH``), Go's build cache in a cache mount. Each run edits the program first (a new constant), as a developer's
edit-rebuild does, so the source, the vet and both compiles run again while the base stays
cached on both sides. imagedsl builds both platforms in one process with the OCI backend
(one image index in an OCI layout); Docker builds the Dockerfile ``imagedsl lower`` wrote,
once per platform, two ways: ``--no-cache`` (each platform's build makes the native stage
again: the issue's anchor, target at most 0.6x since imagedsl makes it once), and with
BuildKit's cache (which shares the native stage between the two runs too: at most 1.0x).
All are warmed first, then timed in rotation.

    python benchmarks/multiplatform.py [--runs N] [--work DIR] [--json FILE]

Needs a Docker engine with BuildKit, root and runc (RUN steps), and the Debian Go base the
tests make (``tests/support/docker.py``: mmdebstrap, cached). Image tags are unique to the
run and removed after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path

from _workload import Row, median, report, timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.docker import DEBIAN_GO, ensure_debian_image, find_docker
from tests.support.equivalence import ensure_nodev_image

TARGET_RATIO = 0.6
PLATFORMS = ("linux/amd64", "linux/arm64")

MAIN = """\
package main

import (
\t"os"
\t"runtime"
)

const edit = "{edit}"

func main() {{
\tos.Stdout.WriteString("hello from " + runtime.GOOS + "/" + runtime.GOARCH + " " + edit + "\\n")
}}
"""

BUILD = """\
import imagedsl as dsl

src = dsl.context("src")
go_cache = dsl.cache("/tmp/go-cache")  # Go's build cache, kept between builds (as Go advises)
checked = (
    dsl.image({base!r}, platform="$BUILDPLATFORM")
    .env(CGO_ENABLED="0", GOCACHE="/tmp/go-cache", HOME="/tmp")
    .workdir("/src")
    .copy(src.file("main.go"), "/src/")
    .run("go vet main.go", mounts=[go_cache])
)
compiled = checked.arg(dsl.TARGETOS).arg(dsl.TARGETARCH).run(
    "GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags=-s -o /out/hello main.go",
    mounts=[go_cache],
)
app = dsl.scratch().copy(compiled.path("/out/hello"), "/hello").cmd(["/hello"])
dsl.targets("app")
"""


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per case (median reported)")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="work directory")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    work = args.work.resolve() / "multiplatform"
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    engine = find_docker()
    if engine is None:
        sys.exit("no Docker engine with BuildKit answered")
    base = ensure_nodev_image(engine, ensure_debian_image(engine, DEBIAN_GO))
    (work / "build.py").write_text(BUILD.format(base=f"docker-daemon:{base}"))
    env = {k: v for k, v in engine.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["IMAGEDSL_STORE"] = str(work / "store")
    imagedsl = [sys.executable, "-m", "imagedsl"]
    build = [*imagedsl, "build", "build.py", "--backend", "oci", "--progress", "quiet",
             "--platform", ",".join(PLATFORMS), "--output", f"oci:{work / 'layout'}:1"]  # fmt: skip
    lowered = work / "lowered"
    tag = f"imagedsl-bench/multiplatform-{uuid.uuid4().hex[:10]}"

    def edit(text: str) -> None:
        (work / "src" / "main.go").write_text(MAIN.format(edit=text))

    def docker_once_per_platform(no_cache: bool) -> float:
        timed([*imagedsl, "lower", "build.py", "-o", str(lowered)], cwd=work, env=env)
        seconds = 0.0
        for platform in PLATFORMS:
            argv = [engine.client, *engine.build_command, "--quiet", "--platform", platform,
                    "--tag", f"{tag}:{platform.replace('/', '-')}", str(lowered)]  # fmt: skip
            if no_cache:
                argv.insert(-1, "--no-cache")
            if engine.buildx:
                argv.insert(-1, "--load")
            seconds += timed(argv, cwd=work, env=env).seconds
        return seconds

    print(f"two platforms ({', '.join(PLATFORMS)}) of a cross-compiled Go program; "
          f"{engine.describe()}")  # fmt: skip
    cases: dict[str, list[float]] = {"imagedsl": [], "no-cache": [], "cached": []}
    try:
        edit("warm")  # the base in the store, BuildKit's cache of the base
        timed(build, cwd=work, env=env)
        docker_once_per_platform(no_cache=False)
        for i in range(args.runs):
            shift = i % 3
            order = [*cases][shift:] + [*cases][:shift]
            for case in order:
                edit(f"{case}-{i}-{uuid.uuid4().hex[:8]}")
                if case == "imagedsl":
                    cases[case].append(timed(build, cwd=work, env=env).seconds)
                else:
                    cases[case].append(docker_once_per_platform(no_cache=case == "no-cache"))
    finally:
        for platform in PLATFORMS:
            engine.run("image", "rm", "--force", f"{tag}:{platform.replace('/', '-')}",
                       check=False)  # fmt: skip
    for case, runs in cases.items():
        print(f"{case:>9} runs:", " ".join(f"{s:.2f}" for s in runs))
    ours = median(cases["imagedsl"])
    rows = [
        Row("two-platform Go image after an edit, oci backend", ours,
            "docker build --no-cache once per platform", median(cases["no-cache"]),
            TARGET_RATIO),
        Row("the same", ours, "docker build once per platform (BuildKit cache)",
            median(cases["cached"]), 1.0),
    ]  # fmt: skip
    report("Multi-platform build (medians of one run)", rows, args.json)
    if os.environ.get("IMAGEDSL_BENCH_STRICT") == "1" and not all(r.ok for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

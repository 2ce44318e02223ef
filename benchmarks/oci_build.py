"""Benchmark OCI layer writing against the compressors themselves, and edits against Docker.

The context is 20,000 files and 420 MB (``--quick``: 2,000 files, 40 MB), made once,
deterministically: source-like text files of 1-40 KB and a few hundred 1 MiB incompressible
binaries. The build is ``FROM scratch`` + ``COPY . /app``. Side by side, alternating, in one
run (each a new process, after a ``sync`` so neither pays for the other's writeback):

* **cold, gzip**: ``imagedsl build --backend oci --output oci:DIR`` with an empty store (so
  hashing, planning and every layer byte count) against ``tar -c | igzip -1`` of the same
  files (ISA-L at the level imagedsl uses): at most 1.3x;
* **cold, zstd**: the same build with ``IMAGEDSL_OCI_COMPRESSION=zstd`` against
  ``tar -c | zstd -3``: at most 1.5x;
* **one-file edit**: a source file gets new content, then ``imagedsl build`` (warm store) and
  a plain ``docker build`` of the same Dockerfile and context (BuildKit, its own cache warm
  from the round before) each rebuild: imagedsl at most 0.25x. Then the bytes a push of the
  edited image uploads to a registry that has the previous one (a loopback
  ``docker-registry``), against the bytes of the whole copy's layers.

Docker's build cache is never pruned: every edit is new content, so each docker build misses
by itself; the benchmark's image tag is removed at the end.

    python benchmarks/oci_build.py [--quick] [--runs N] [--work DIR] [--json FILE] [--no-docker]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from _workload import Row, median, report
from registry_push import registry

FULL = {"files": 20_000, "bytes": 400 << 20}
QUICK = {"files": 2_000, "bytes": 40 << 20}
BINARY_SHARE = 0.4  # of the bytes, in 1 MiB incompressible files


def make_context(root: Path, files: int, total: int, seed: int = 20_000) -> None:
    """Write the context once (a marker file records what it was made for)."""
    marker = root.parent / f"{root.name}.made"
    wanted = json.dumps({"files": files, "bytes": total, "seed": seed})
    if marker.exists() and marker.read_text() == wanted and root.is_dir():
        return
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    binaries = int(total * BINARY_SHARE) >> 20
    texts = files - binaries
    text_bytes = total - (binaries << 20)
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 12)))
        for _ in range(4000)
    ]
    lines = [
        " " * (4 * rng.randint(0, 3)) + " ".join(rng.choices(words, k=rng.randint(2, 10))) + "\n"
        for _ in range(20_000)
    ]
    pool = "".join(lines).encode()
    average = text_bytes // texts
    for i in range(texts):
        directory = root / f"pkg{i % 50:02d}" / f"mod{(i // 50) % 20:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        size = max(200, int(rng.uniform(0.1, 1.9) * average))
        start = rng.randrange(0, len(pool) - size)
        (directory / f"file{i:05d}.py").write_bytes(pool[start : start + size])
    assets = root / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    for i in range(binaries):
        (assets / f"blob{i:04d}.bin").write_bytes(rng.randbytes(1 << 20))
    marker.write_text(wanted)


def context_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes) of a context."""
    count = size = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            count += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return count, size


def timed(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """Seconds of one command (after a sync, outside the timing); fail loudly if it fails."""
    os.sync()
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{done.stderr.decode(errors='replace')[-2000:]}")
    return seconds


def imagedsl_build(work: Path, store: Path, out: Path) -> list[str]:
    """The argv of one ``imagedsl build`` of the benchmark's image."""
    return [sys.executable, "-m", "imagedsl", "build", f"{work / 'build.py'}:app",
            "--backend", "oci", "--store", str(store), "--output", f"oci:{out}:bench",
            "--progress", "quiet"]  # fmt: skip


def cold(work: Path, env: dict[str, str]) -> float:
    """One cold build: an empty store, a new layout."""
    store, out = work / "store-cold", work / "oci-cold"
    for path in (store, out):
        shutil.rmtree(path, ignore_errors=True)
    return timed(imagedsl_build(work, store, out), env=env)


def anchor(ctx: Path, compressor: str, out: Path) -> float:
    """``tar`` of the context piped into ``compressor``."""
    return timed(["sh", "-c", f"tar -cf - -C '{ctx}' . | {compressor} > '{out}'"])


def layout_bytes(layout: Path) -> int:
    """Bytes of the layers of the image ``bench`` in a layout."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][-1]["digest"].removeprefix("sha256:")
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return sum(layer["size"] for layer in manifest["layers"])


def push(layout: Path, reference: str) -> int:
    """Push the layout's image; the bytes uploaded."""
    from imagedsl.api import push_image

    return sum(result.bytes_uploaded for result in push_image(f"oci:{layout}:bench", reference))


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 files, 40 MB")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (3)")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="work directory")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--no-docker", action="store_true", help="skip the docker comparison")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    work: Path = args.work.resolve() / "oci-build"
    ctx = work / ("ctx-quick" if args.quick else "ctx")
    work.mkdir(parents=True, exist_ok=True)
    make_context(ctx, size["files"], size["bytes"])
    files, total = context_bytes(ctx)
    (work / "build.py").write_text(
        f"import imagedsl as dsl\napp = dsl.scratch().copy(dsl.context({ctx.name!r}), '/app')\n"
    )
    for tool in ("igzip", "zstd", "tar"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (Debian: apt-get install isal zstd tar)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    zstd_env = {**env, "IMAGEDSL_OCI_COMPRESSION": "zstd"}
    print(f"context: {files} files, {total / 1e6:.0f} MB")

    times: dict[str, list[float]] = {k: [] for k in ("gzip", "igzip", "zstd", "zstd -3")}
    cold(work, env)  # warm-up: the page cache holds the context for both sides
    anchor(ctx, "igzip -1 -c", work / "anchor.tar.gz")
    for _ in range(args.runs):
        times["gzip"].append(cold(work, env))
        times["igzip"].append(anchor(ctx, "igzip -1 -c", work / "anchor.tar.gz"))
        times["zstd"].append(cold(work, zstd_env))
        times["zstd -3"].append(anchor(ctx, "zstd -3 -q -c", work / "anchor.tar.zst"))
    rows = [
        Row("cold COPY-only build, gzip", median(times["gzip"]), "tar | igzip -1",
            median(times["igzip"]), 1.3),
        Row("cold COPY-only build, zstd", median(times["zstd"]), "tar | zstd -3",
            median(times["zstd -3"]), 1.5),
    ]  # fmt: skip
    rows += edits(work, ctx, env, args.runs, docker=not args.no_docker)
    report("OCI layer writing and edits (medians of one run)", rows, args.json)


def edits(work: Path, ctx: Path, env: dict[str, str], runs: int, *, docker: bool) -> list[Row]:
    """One-file edits: imagedsl against a plain docker build; then the bytes a push uploads."""
    store, out = work / "store-edit", work / "oci-edit"
    for path in (store, out):
        shutil.rmtree(path, ignore_errors=True)
    argv = imagedsl_build(work, store, out)
    timed(argv, env=env)
    engine = None
    tag = f"imagedsl-bench/oci-edit-{uuid.uuid4().hex[:10]}:latest"
    dockerfile = work / "Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY . /app\n")
    if docker:
        from imagedsl.backends.engine import require_docker

        engine = require_docker()
        docker_argv = [engine.client, *engine.build_command, "-q", "-f", str(dockerfile),
                       "-t", tag, str(ctx)]  # fmt: skip
        if engine.buildx:
            docker_argv.insert(-1, "--load")
        timed(docker_argv, env=engine.env)  # warm: BuildKit has the context and the layer
    victim = sorted((ctx / "pkg07").rglob("*.py"))[10]
    original = victim.read_bytes()
    ours: list[float] = []
    theirs: list[float] = []
    whole = layout_bytes(out)
    try:
        with registry(work / f"registry-{uuid.uuid4().hex[:8]}") as host:
            push(out, f"{host}/bench:edit")
            pushed: list[int] = []
            for round_number in range(runs):
                victim.write_bytes(original + f"# edit {uuid.uuid4().hex}\n".encode())
                time.sleep(0.1)  # past the stat cache's racy window
                order = ("imagedsl", "docker") if round_number % 2 == 0 else ("docker", "imagedsl")
                for who in order:
                    if who == "imagedsl":
                        ours.append(timed(argv, env=env))
                    elif engine is not None:
                        theirs.append(timed(docker_argv, env=engine.env))
                pushed.append(push(out, f"{host}/bench:edit"))
    finally:
        victim.write_bytes(original)
        if engine is not None:
            engine.run("image", "rm", "--force", tag, check=False)
    return [
        Row("one-file edit in a large COPY, rebuild", median(ours),
            "docker build" if theirs else "(no docker)", median(theirs) if theirs else None,
            0.25 if theirs else 60.0),
        Row("bytes pushed after that edit", median([float(p) for p in pushed]) / 1e6,
            "the whole COPY", whole / 1e6, 0.05, "MB"),
    ]  # fmt: skip


if __name__ == "__main__":
    main()

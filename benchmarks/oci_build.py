"""Benchmark: cold ``imagedsl build --backend oci`` against ``docker build`` + ``docker save``.

The context is 20,000 files and 400 MB (``--quick``: 2,000 files, 40 MB), made once,
deterministically: source-like text files of 1-40 KB and a few hundred 1 MiB incompressible
binaries. Both sides build ``FROM scratch`` + ``COPY . /app``:

* docker: ``docker build --no-cache`` (BuildKit, builder cache pruned and the image removed
  first, so the context is sent and snapshotted anew) then ``docker save`` to a tar;
* imagedsl: ``python -m imagedsl build --backend oci --output oci:DIR`` in a new process with
  an empty store (no stat cache, no blobs), so hashing, planning and every layer byte count.

Runs alternate between the two, after one warm-up of each (so both read a warm page cache);
``sync`` runs before each timed run so neither pays for the other's writeback; the medians
are compared. Then the fine-layer figure: the same COPY with
``layers="auto"``, built once, one source file edited, built again; the report gives the
bytes that went through the compressor on the rebuild as a share of the context's bytes.

    python benchmarks/oci_build.py [--quick] [--runs N] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FULL = {"files": 20_000, "bytes": 400 << 20}
QUICK = {"files": 2_000, "bytes": 40 << 20}
BINARY_SHARE = 0.4  # of the bytes, in 1 MiB incompressible files
TAG = "imagedsl-bench/oci"


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


def docker_client() -> tuple[list[str], dict[str, str]]:
    """The docker client and environment the product itself would use."""
    from imagedsl.backends.engine import require_docker

    engine = require_docker()
    return [engine.client], engine.env


def time_docker(work: Path, ctx: Path, client: list[str], env: dict[str, str]) -> float:
    """One cold docker build + docker save; seconds."""
    dockerfile = work / "Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY . /app\n")
    out = work / "docker-save.tar"
    subprocess.run(
        [*client, "image", "rm", "-f", f"{TAG}:docker"], env=env, capture_output=True, check=False
    )
    subprocess.run([*client, "builder", "prune", "-af"], env=env, capture_output=True, check=False)
    out.unlink(missing_ok=True)
    os.sync()  # the previous run's writes are flushed outside the timing (both sides)
    start = time.perf_counter()
    subprocess.run(
        [*client, "build", "--no-cache", "-q", "-f", str(dockerfile), "-t", f"{TAG}:docker", str(ctx)],
        env=env, capture_output=True, check=True,
    )  # fmt: skip
    subprocess.run([*client, "save", "-o", str(out), f"{TAG}:docker"], env=env, check=True)
    return time.perf_counter() - start


def write_buildfile(work: Path) -> Path:
    """build.py with the plain COPY (``app``) and the fine-layered one (``fine``)."""
    path = work / "build.py"
    path.write_text(
        "import imagedsl as dsl\n"
        "src = dsl.context('ctx')\n"
        "app = dsl.scratch().copy(src, '/app')\n"
        "fine = dsl.scratch().copy(src, '/app', layers='auto')\n"
        "dsl_targets = dsl.targets('app', 'fine')\n"
    )
    return path


def time_imagedsl(work: Path, buildfile: Path) -> float:
    """One cold imagedsl build in a new process, empty store; seconds."""
    store, out = work / "store-cold", work / "oci-out"
    for path in (store, out):
        shutil.rmtree(path, ignore_errors=True)
    os.sync()
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "imagedsl", "build", f"{buildfile}:app", "--backend", "oci",
         "--store", str(store), "--output", f"oci:{out}:bench"],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - start


def fine_layer_edit(work: Path, buildfile: Path, ctx: Path) -> dict[str, Any]:
    """Build ``fine``, edit one source file, build again; what the rebuild compressed."""
    from imagedsl.backends import BuildRequest
    from imagedsl.backends.oci.backend import OCIBackend
    from imagedsl.loader import load_buildfile
    from imagedsl.reporting import Reporter
    from imagedsl.store import Store

    store = Store(work / "store-fine")
    shutil.rmtree(store.root, ignore_errors=True)
    loaded = load_buildfile(buildfile)

    def once() -> Any:
        request = BuildRequest(output=f"oci:{work / 'oci-fine'}:fine")
        start = time.perf_counter()
        planned = loaded.plan("fine", store=store)
        outcome = OCIBackend().build_image(planned, request, store=store, reporter=Reporter())
        return outcome, time.perf_counter() - start

    first, _ = once()
    sources = sorted((ctx / "pkg07").rglob("*.py"))
    victim = sources[len(sources) // 2]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"# edited\n")
        second, seconds = once()
    finally:
        victim.write_bytes(original)
    _, total = context_bytes(ctx)
    return {
        "layers": len(first.image.layers),
        "rebuilt_layers": second.stats.layers_written,
        "recompressed_bytes": second.stats.bytes_compressed,
        "context_bytes": total,
        "recompressed_share": second.stats.bytes_compressed / total,
        "rebuild_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 files, 40 MB")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side (3)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imagedsl-bench-oci"))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-docker", action="store_true", help="time imagedsl only")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    work: Path = args.workdir
    ctx = work / ("ctx-quick" if args.quick else "ctx")
    work.mkdir(parents=True, exist_ok=True)
    make_context(ctx, size["files"], size["bytes"])
    files, total = context_bytes(ctx)
    buildfile = write_buildfile(work)
    if ctx.name != "ctx":
        buildfile.write_text(buildfile.read_text().replace("'ctx'", f"'{ctx.name}'"))
    client, env = ([], {}) if args.no_docker else docker_client()
    docker_times: list[float] = []
    ours: list[float] = []
    time_imagedsl(work, buildfile)  # warm-up: page cache, imports
    if not args.no_docker:
        time_docker(work, ctx, client, env)
    for _ in range(args.runs):
        ours.append(time_imagedsl(work, buildfile))
        if not args.no_docker:
            docker_times.append(time_docker(work, ctx, client, env))
    fine = fine_layer_edit(work, buildfile, ctx)
    result: dict[str, Any] = {
        "context": {"files": files, "bytes": total},
        "imagedsl_seconds": ours,
        "imagedsl_median": statistics.median(ours),
        "fine_layers": fine,
    }
    if docker_times:
        result["docker_seconds"] = docker_times
        result["docker_median"] = statistics.median(docker_times)
        result["ratio"] = result["imagedsl_median"] / result["docker_median"]
        subprocess.run(
            [*client, "image", "rm", "-f", f"{TAG}:docker"],
            env=env,
            capture_output=True,
            check=False,
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"context: {files} files, {total / 1e6:.0f} MB")
    print(f"imagedsl build --backend oci (cold): median {result['imagedsl_median']:.2f} s  {ours}")
    if docker_times:
        print(
            f"docker build + docker save (cold):   median {result['docker_median']:.2f} s  {docker_times}"
        )
        print(f"ratio imagedsl / docker: {result['ratio']:.3f} (target <= 0.35)")
    print(
        f"layers='auto': {fine['layers']} layers; after a one-file edit {fine['rebuilt_layers']} "
        f"rebuilt, {fine['recompressed_bytes']} bytes recompressed = "
        f"{100 * fine['recompressed_share']:.2f}% of the context (target <= 5%), "
        f"in {fine['rebuild_seconds']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark memory and disk: peak RSS while hashing, an OCI layout written again and again,
and very deep stage chains (Must-have 5 of the speed issue).

* ``imagedsl plan`` (cold: everything hashed) of a context holding one 2 GB file, and of the
  100,000-file context of ``plan.py``: peak RSS at most 200 MB each.
* ``--output oci:DIR`` written 20 times, a source file edited before each build: the layout
  then holds one image's blobs (what ``skopeo`` or ``umoci gc`` leave): its bytes against the
  bytes of the last image's blobs, at most 1.0x.
* ``imagedsl plan`` of a 10,000-step chain and of a chain of 150 ``COPY --from`` stages:
  they plan (no RecursionError), in seconds.

    python benchmarks/memory.py [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from _workload import RECIPE_100K, Row, make_context, report, timed

RSS_BOUND_MB = 200.0


def big_file_plan(work: Path, env: dict[str, str]) -> float:
    """Peak RSS (MB) of a cold plan of a context holding one 2 GB file."""
    root = work / "big-file"
    (root / "context").mkdir(parents=True, exist_ok=True)
    big = root / "context" / "data.bin"
    if not big.exists() or big.stat().st_size != 2 << 30:
        with big.open("wb") as handle:  # real bytes, not a sparse file: pages are read
            block = os.urandom(1 << 20)
            for _ in range(2048):
                handle.write(block)
    (root / "build.py").write_text(
        "import imagedsl as dsl\napp = dsl.scratch().copy(dsl.context('context'), '/data')\n"
    )
    shutil.rmtree(root / "store", ignore_errors=True)
    argv = [sys.executable, "-m", "imagedsl", "plan", "--store", str(root / "store"), "build.py"]
    return timed(argv, cwd=root, env=env).peak_rss_mb


def many_files_plan(work: Path, env: dict[str, str]) -> float:
    """Peak RSS (MB) of a cold plan of the 100,000-file context."""
    root = work / "plan-100k"
    make_context(root, RECIPE_100K)
    store = root / "store-memory"
    shutil.rmtree(store, ignore_errors=True)
    argv = [sys.executable, "-m", "imagedsl", "plan", "--store", str(store), "build.py"]
    return timed(argv, cwd=root, env=env).peak_rss_mb


def rewritten_layout(work: Path, env: dict[str, str], builds: int) -> tuple[int, int]:
    """(bytes of the layout after ``builds`` edited builds, bytes of the last image)."""
    root = work / "layout-gc"
    context = root / "context"
    for d in range(20):
        (context / f"d{d}").mkdir(parents=True, exist_ok=True)
        for f in range(20):
            (context / f"d{d}" / f"f{f}.txt").write_bytes(os.urandom(2000))
    (root / "build.py").write_text(
        "import imagedsl as dsl\napp = dsl.scratch().copy(dsl.context('context'), '/app')\n"
    )
    layout, store = root / "layout", root / "store"
    for path in (layout, store):
        shutil.rmtree(path, ignore_errors=True)
    argv = [sys.executable, "-m", "imagedsl", "build", "build.py", "--backend", "oci",
            "--store", str(store), "--output", f"oci:{layout}:app", "--progress", "quiet"]  # fmt: skip
    for i in range(builds):
        (context / "d3" / "f7.txt").write_bytes(f"edit {i} {time.time_ns()}\n".encode())
        timed(argv, cwd=root, env=env)
    held = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest_path = layout / "blobs" / "sha256" / manifest_digest.removeprefix("sha256:")
    manifest = json.loads(manifest_path.read_text())
    image = manifest_path.stat().st_size + manifest["config"]["size"]
    image += sum(layer["size"] for layer in manifest["layers"])
    return held, image


def deep_chains(work: Path, env: dict[str, str]) -> float:
    """Seconds to plan a 10,000-step chain and a 150-deep chain of COPY --from stages."""
    root = work / "deep"
    root.mkdir(parents=True, exist_ok=True)
    (root / "build.py").write_text(
        "import imagedsl as dsl\n"
        "deep = dsl.scratch()\n"
        "for i in range(10_000):\n"
        "    deep = deep.env(V=str(i))\n"
        "cross = dsl.scratch().env(A='0')\n"
        "for i in range(150):\n"
        "    cross = dsl.scratch().copy(cross.path('/'), '/x').env(B=str(i))\n"
    )
    store = root / "store"
    shutil.rmtree(store, ignore_errors=True)
    seconds = 0.0
    for target in ("deep", "cross"):
        argv = [sys.executable, "-m", "imagedsl", "plan", "--store", str(store),
                f"build.py:{target}"]  # fmt: skip
        seconds += timed(argv, cwd=root, env=env).seconds
    return seconds


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="work directory")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--builds", type=int, default=20, help="builds into one layout (20)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    held, image = rewritten_layout(work, env, args.builds)
    rows = [
        Row("peak RSS, plan of one 2 GB file", big_file_plan(work, env), "(bound in MB)", None,
            RSS_BOUND_MB, "MB"),
        Row("peak RSS, plan of 100,000 files", many_files_plan(work, env), "(bound in MB)",
            None, RSS_BOUND_MB, "MB"),
        Row(f"oci: layout after {args.builds} edited builds", held / 1e6, "one image's blobs",
            image / 1e6, 1.0, "MB"),
        Row("plan 10,000-step and 150-deep COPY --from chains", deep_chains(work, env),
            "(bound in s)", None, 60.0),
    ]  # fmt: skip
    report("Memory and disk (one run)", rows, args.json)


if __name__ == "__main__":
    main()

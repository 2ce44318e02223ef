"""Benchmark a warm ``imagedsl plan`` against a no-op ``docker build`` of the lowered Dockerfile.

Both answer "what would a build do?" for the 20,000-file workload: the plan by hashing
(through its stat cache) and consulting the ledger, BuildKit by transferring the context diff
and checking its cache. The Dockerfile and its context come from ``imagedsl lower -o``; both
sides are warmed first, then timed alternately in one run, each as a new process. Target: the
plan's median at most half of docker's. The last row, a no-op ``imagedsl build`` (plan, stage
the context, no-op BuildKit build), is for information.

    python benchmarks/docker_plan.py [--runs N] [--work DIR]

Needs a Docker engine with BuildKit (found as the tests find it: ``$DOCKER_HOST``, the default
engine, or the one ``.ci/run`` starts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from _workload import context_bytes, make_context, median, timed

from imagedsl.backends.engine import require_docker

TARGET_RATIO = 0.5
TAG = "imagedsl-bench/docker-plan:latest"


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="runs per case (median reported)")
    parser.add_argument(
        "--work", type=Path, default=Path("bench-work"), help="where the workload lives"
    )
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    context = make_context(work)
    files, total = context_bytes(context)
    engine = require_docker()
    store = work / "docker-store"
    lowered = work / "lowered"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(lowered, ignore_errors=True)
    env = {**engine.env, "IMAGEDSL_STORE": str(store)}
    imagedsl = [sys.executable, "-m", "imagedsl"]
    plan = [*imagedsl, "plan", "build.py"]
    docker = [engine.client, *engine.build_command, "--tag", TAG, "--quiet", str(lowered)]
    if engine.buildx:
        docker.insert(-1, "--load")
    build = [*imagedsl, "build", "build.py", "--backend", "docker", "--progress", "quiet"]
    print(f"workload: {files} files, {total / 1e6:.0f} MB; {engine.describe()}")

    # Warm both: the plan's stat cache and ledger, BuildKit's context copy and cache.
    timed([*imagedsl, "lower", "build.py", "-o", str(lowered)], cwd=work, env=env)
    timed(build, cwd=work, env=env)
    timed(docker, cwd=work, env=env)
    timed(plan, cwd=work, env=env)

    cases: dict[str, list[float]] = {"imagedsl plan": [], "docker build": [], "imagedsl build": []}
    for _ in range(args.runs):
        cases["imagedsl plan"].append(timed(plan, cwd=work, env=env).seconds)
        cases["docker build"].append(timed(docker, cwd=work, env=env).seconds)
        cases["imagedsl build"].append(timed(build, cwd=work, env=env).seconds)
    engine.run("image", "rm", "--force", TAG, check=False)

    print(f"{'case':<16} {'median s':>9}  runs")
    for case, values in cases.items():
        runs = " ".join(f"{v:.3f}" for v in values)
        print(f"{case:<16} {median(values):>9.3f}  {runs}")
    ratio = median(cases["imagedsl plan"]) / median(cases["docker build"])
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER"
    print(f"plan / docker build = {ratio:.2f} (target <= {TARGET_RATIO}) {verdict}")
    if os.environ.get("IMAGEDSL_BENCH_STRICT") == "1" and ratio > TARGET_RATIO:
        sys.exit(1)


if __name__ == "__main__":
    main()

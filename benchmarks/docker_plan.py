"""Benchmark a no-op ``imagedsl build --backend docker`` against Docker's own no-op build.

Both rebuild, with nothing changed, the 20,000-file workload's image: imagedsl from
``build.py`` (plan, engine discovery from the store, the image checked in the engine),
Docker from the Dockerfile and context that ``imagedsl lower -o`` wrote (``docker build``,
which sends the context's changes to BuildKit and checks its cache). Both sides are warmed
first, then timed alternately in one run, each as a new process. Must-have 4 of the speed
issue: imagedsl's median at most 1.0x Docker's. A warm ``imagedsl plan`` is shown beside
Docker's no-op too (the core issue's bound: at most half).

    python benchmarks/docker_plan.py [--runs N] [--work DIR] [--json FILE]

Needs a Docker engine with BuildKit (found as the tests find it: ``$DOCKER_HOST``, the default
engine, or the one ``.ci/run`` starts). The image tag is unique to the run and removed after;
nothing else in the engine is touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path

from _workload import Row, context_bytes, make_context, median, report, timed

from imagedsl.backends.engine import require_docker


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="runs per case (median reported)")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="work directory")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    work = args.work.resolve() / "docker-noop"
    context = make_context(work)
    files, total = context_bytes(context)
    engine = require_docker()
    store = work / "docker-store"
    lowered = work / "lowered"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(lowered, ignore_errors=True)
    tag = f"imagedsl-bench/docker-noop-{uuid.uuid4().hex[:10]}:latest"
    env = {k: v for k, v in engine.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["IMAGEDSL_STORE"] = str(store)
    imagedsl = [sys.executable, "-m", "imagedsl"]
    plan = [*imagedsl, "plan", "build.py"]
    build = [*imagedsl, "build", "build.py", "--backend", "docker", "--progress", "quiet",
             "-t", tag]  # fmt: skip
    docker = [engine.client, *engine.build_command, "--tag", tag, "--quiet", str(lowered)]
    if engine.buildx:
        docker.insert(-1, "--load")
    print(f"workload: {files} files, {total / 1e6:.0f} MB; {engine.describe()}")
    try:
        # Warm both: the plan's stat cache and ledger, BuildKit's context copy and cache.
        timed([*imagedsl, "lower", "build.py", "-o", str(lowered)], cwd=work, env=env)
        timed(build, cwd=work, env=env)
        timed(docker, cwd=work, env=env)
        timed(build, cwd=work, env=env)
        timed(plan, cwd=work, env=env)
        cases: dict[str, list[float]] = {"build": [], "docker": [], "plan": []}
        for i in range(args.runs):
            order = ("build", "docker") if i % 2 == 0 else ("docker", "build")
            for case in order:
                argv = build if case == "build" else docker
                cases[case].append(timed(argv, cwd=work, env=env).seconds)
            cases["plan"].append(timed(plan, cwd=work, env=env).seconds)
    finally:
        engine.run("image", "rm", "--force", tag, check=False)
    docker_noop = median(cases["docker"])
    rows = [
        Row("no-op build, docker backend", median(cases["build"]), "docker build (no-op)",
            docker_noop, 1.0),
        Row("warm plan beside that", median(cases["plan"]), "docker build (no-op)",
            docker_noop, 0.5),
    ]  # fmt: skip
    report("Docker backend no-op (medians of one run)", rows, args.json)
    if os.environ.get("IMAGEDSL_BENCH_STRICT") == "1" and not all(r.ok for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Benchmark `imagedsl plan` on the 20,000-file, ~400 MB workload.

Times the command as a user runs it (a new process each time): cold (no stat cache, so every
file is read and hashed), warm (nothing changed), and after editing one file; prints medians
and peak memory against the targets of the core issue. With ``--check``, also what
``imagedsl check`` adds to a warm plan: the table (which shows check's errors) and ``imagedsl
check`` against ``plan --json`` (which runs no check), all warm, target 50 ms.

    python benchmarks/check_plan.py [--runs N] [--work DIR] [--check]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _workload import context_bytes, make_context, median, timed

TARGETS = {"cold": 1.5, "warm": 0.25, "one edit": 0.3}
RSS_TARGET_MB = 200.0
CHECK_TARGET_S = 0.050


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per case (median reported)")
    parser.add_argument(
        "--work", type=Path, default=Path("bench-work"), help="where the workload lives"
    )
    parser.add_argument(
        "--check", action="store_true", help="also measure what imagedsl check adds (warm)"
    )
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    context = make_context(work)
    files, total = context_bytes(context)
    store = work / "store"
    command = [sys.executable, "-m", "imagedsl", "plan", "--store", str(store), "build.py"]
    print(f"workload: {files} files, {total / 1e6:.0f} MB; python {sys.version.split()[0]}")
    # Measure as users run it: with Python's bytecode cache (some environments turn it off).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import imagedsl.cli"], env=env, check=True)

    results: dict[str, list[float]] = {case: [] for case in TARGETS}
    peaks: list[float] = []
    edited = context / "pkg007" / "sub" / "m011.py"
    original = edited.read_bytes()
    for i in range(args.runs):
        shutil.rmtree(store, ignore_errors=True)
        time.sleep(0.1)  # let files age past the stat cache's racy window
        cold = timed(command, cwd=work, env=env)
        warm = timed(command, cwd=work, env=env)
        edited.write_bytes(original[:-1] + bytes([(original[-1] + 1 + i) % 256]))
        time.sleep(0.1)
        edit = timed(command, cwd=work, env=env)
        edited.write_bytes(original)
        for case, run in (("cold", cold), ("warm", warm), ("one edit", edit)):
            results[case].append(run.seconds)
            peaks.append(run.peak_rss_mb)

    print(f"{'case':<10} {'median s':>9} {'target s':>9}  runs")
    for case, values in results.items():
        ok = "ok" if median(values) <= TARGETS[case] else "OVER"
        runs = " ".join(f"{v:.3f}" for v in values)
        print(f"{case:<10} {median(values):>9.3f} {TARGETS[case]:>9.2f}  {runs}  {ok}")
    peak = max(peaks)
    print(
        f"peak RSS   {peak:>9.1f} MB (target {RSS_TARGET_MB:.0f} MB)  {'ok' if peak <= RSS_TARGET_MB else 'OVER'}"
    )
    if args.check:
        check_cost(command, work, env, args.runs)


def in_process(work: Path, runs: int = 15) -> None:
    """What check adds, measured inside one process on a warm plan (steadier than processes
    on a busy machine): its first call (which imports the rule modules) and the median of
    the calls after it, wall and CPU."""
    import statistics

    from imagedsl.api import BuildSession

    session = BuildSession(work / "build.py", store=work / "store")
    planned = session.plan()
    walls, cpus = [], []
    for _ in range(runs + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        session.check(planned)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    print(
        f"check in process: first call {walls[0] * 1000:.1f} ms wall, {cpus[0] * 1000:.1f} ms "
        f"cpu (imports included); then median {statistics.median(walls[1:]) * 1000:.1f} ms "
        f"wall, {statistics.median(cpus[1:]) * 1000:.1f} ms cpu"
    )


def check_cost(plan: list[str], work: Path, env: dict[str, str], runs: int) -> None:
    """Warm ``plan --json`` (no check) against warm ``plan`` (the table shows check's errors)
    and warm ``imagedsl check``, interleaved so that they see the same machine."""
    check = [*plan[:3], "check", *plan[4:]]
    cases = {"plan --json": [*plan, "--json"], "plan (table)": plan, "check": check}
    timed(plan, cwd=work, env=env)  # warm the store
    timed(check, cwd=work, env=env)  # and check's memo of the context's files
    results: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(max(runs, 7)):
        for case, argv in cases.items():
            results[case].append(timed(argv, cwd=work, env=env).seconds)
    in_process(work)
    base = median(results["plan --json"])
    print(
        f"{'warm, with check':<18} {'median s':>9} {'adds ms':>8}  (target {CHECK_TARGET_S * 1000:.0f} ms)"
    )
    for case, values in results.items():
        added = (median(values) - base) * 1000
        verdict = (
            "" if case == "plan --json" else ("ok" if added <= CHECK_TARGET_S * 1000 else "OVER")
        )
        print(f"{case:<18} {median(values):>9.3f} {added:>8.1f}  {verdict}")


if __name__ == "__main__":
    main()

"""Benchmark ``imagedsl plan`` against ``git status --porcelain`` on the same tree.

Both answer "what changed?" for a 20,000-file, ~400 MB tree (and, for scaling, a
100,000-file one): git from its index, imagedsl from its stat cache and ledger. The git
repository of each tree lives beside it (``GIT_DIR``), committed once, so the trees are
identical for both. The tree is built once (OCI backend, into the plan's store), so the plans
compare with a build as a user's do. Every round runs, each as a new process as users run
them: a warm plan (served by the plan server two plans in a row start, as for a user), the
same plan with ``IMAGEDSL_SERVER=0``, and a warm ``git status``; then a line is added to one
file (its size changes, as in most edits) and each runs again; then the edit is undone. Medians are compared
within the run (Must-have 1 of the speed issue: warm at most 2x git, one edit at most 2.5x, at
most 0.35 s at 100,000 files; peak memory under 200 MB).

    python benchmarks/plan.py [--runs N] [--work DIR] [--json FILE] [--no-100k]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _workload import RECIPE, RECIPE_100K, Row, make_context, median, report, timed

RSS_BOUND_MB = 200.0


def git_repository(work: Path, context: Path) -> dict[str, str]:
    """A git repository of ``context`` outside it (committed once); its environment."""
    env = {
        **os.environ,
        "GIT_DIR": str(work / "git"),
        "GIT_WORK_TREE": str(context),
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@imagedsl.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@imagedsl.invalid",
    }
    marker = work / "git" / "imagedsl-bench-committed"
    if not marker.exists():
        shutil.rmtree(work / "git", ignore_errors=True)
        for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "workload"]):
            subprocess.run(["git", *argv], env=env, check=True, cwd=context)
        marker.write_text("")
    subprocess.run(["git", "update-index", "-q", "--refresh"], env=env, cwd=context, check=False)
    return env


def measure(
    work: Path, recipe: dict[str, int], runs: int, *, with_edit: bool
) -> dict[str, list[float]]:
    """Per case, the seconds of each run (and ``rss`` in MB, of the runs without a server:
    a served run's work is done in the server's child)."""
    context = make_context(work, recipe)
    git_env = git_repository(work, context)
    store = work / "store"
    runtime = Path(tempfile.mkdtemp(prefix="imagedsl-bench-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(IMAGEDSL_SERVER="1", IMAGEDSL_RUNTIME_DIR=str(runtime))
    local_env = {**env, "IMAGEDSL_SERVER": "0"}
    plan = [sys.executable, "-m", "imagedsl", "plan", "--store", str(store), "build.py"]
    git = ["git", "status", "--porcelain"]
    subprocess.run([sys.executable, "-c", "import imagedsl.cli"], env=env, check=True)
    shutil.rmtree(store, ignore_errors=True)
    cases: dict[str, list[float]] = {
        "cold": [], "warm": [], "warm local": [], "git": [],
        "edit": [], "edit local": [], "git edit": [], "rss": [],
    }  # fmt: skip
    try:
        cold = timed(plan, cwd=work, env=local_env)  # hashes everything once
        cases["cold"].append(cold.seconds)
        # Built once, as a user's tree is: the plans then compare with what was built (hits,
        # and the files each miss names, diffed against the built tree's manifest).
        build = [sys.executable, "-m", "imagedsl", "build", "build.py:app", "--backend", "oci",
                 "--store", str(store), "--progress", "quiet"]  # fmt: skip
        subprocess.run(build, cwd=work, env=local_env, check=True, capture_output=True)
        time.sleep(0.1)  # let the files age past the stat cache's racy window
        # Two plans in a row start a plan server, as they do for a user.
        timed(plan, cwd=work, env=env)
        timed(plan, cwd=work, env=env)
        _wait_for_server(runtime)
        timed(git, cwd=context, env=git_env)
        edited = sorted((context / "pkg007").rglob("m011.py"))[0]
        original = edited.read_bytes()
        for i in range(runs):
            cases["warm"].append(timed(plan, cwd=work, env=env).seconds)
            warm = timed(plan, cwd=work, env=local_env)
            cases["warm local"].append(warm.seconds)
            cases["rss"].append(warm.peak_rss_mb)
            cases["git"].append(timed(git, cwd=context, env=git_env).seconds)
            if not with_edit:
                continue
            for case, plan_env in (("edit", env), ("edit local", local_env)):
                edited.write_bytes(original + f"\n# edit {i} {case}\n".encode())  # a new size
                time.sleep(0.1)
                edit = timed(plan, cwd=work, env=plan_env)
                cases[case].append(edit.seconds)
                if case == "edit local":
                    cases["rss"].append(edit.peak_rss_mb)
                    cases["git edit"].append(timed(git, cwd=context, env=git_env).seconds)
                edited.write_bytes(original)
                time.sleep(0.1)
                timed(plan, cwd=work, env=env)  # back to the warm state (and its stat cache)
            timed(git, cwd=context, env=git_env)
    finally:
        stop = [sys.executable, "-m", "imagedsl", "server", "stop"]
        subprocess.run(stop, env=env, check=False, capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)
    return cases


def _wait_for_server(runtime: Path) -> None:
    """Until the plan server the last plans started listens (its start is not timed)."""
    deadline = time.monotonic() + 60
    while not any(runtime.glob("*.sock")):
        if time.monotonic() > deadline:
            sys.exit(f"no plan server started in {runtime}")
        time.sleep(0.05)


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="runs per case (median reported)")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="work directory")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--no-100k", action="store_true", help="skip the 100,000-file tree")
    args = parser.parse_args()
    work = args.work.resolve()
    small = measure(work / "plan-20k", RECIPE, args.runs, with_edit=True)
    git, git_edit = median(small["git"]), median(small["git edit"])
    rows = [
        Row("warm plan, 20,000 files", median(small["warm"]), "git status", git, 2.0),
        Row("  the same, no plan server", median(small["warm local"]), "git status", git, 2.0),
        Row("plan after a one-file edit", median(small["edit"]), "git status", git_edit, 2.5),
        Row("  the same, no plan server", median(small["edit local"]), "git status", git_edit,
            2.5),
    ]  # fmt: skip
    print(f"cold plan (hashes 400 MB), for information: {small['cold'][0]:.2f} s")
    peak = max(small["rss"])
    if not args.no_100k:
        large = measure(work / "plan-100k", RECIPE_100K, args.runs, with_edit=False)
        rows.append(
            Row("warm plan, 100,000 files", median(large["warm"]), "(bound in s)", None, 0.35)
        )
        rows.append(
            Row("  the same, no plan server", median(large["warm local"]), "(bound in s)", None,
                0.35)
        )  # fmt: skip
        slope = (median(large["warm local"]) - median(small["warm local"])) / 80_000 * 1e6
        print(
            f"100,000 files: git status {median(large['git']):.3f} s; the plan grows by "
            f"{slope:.2f} us per file (20,000 -> 100,000, no server)"
        )
        peak = max(peak, *large["rss"])
    rows.append(Row("peak RSS of these plans", peak, "(bound in MB)", None, RSS_BOUND_MB, "MB"))
    report("imagedsl plan against git status (medians of one run)", rows, args.json)


if __name__ == "__main__":
    main()

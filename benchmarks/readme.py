"""Run every benchmark and write their rows into the README's benchmark table.

Each benchmark prints its own table and, with ``--json FILE``, writes its rows (our median,
the anchor's median measured beside it in the same run, their ratio and the bound). This
script runs them one after another (``--only``: some of them; the others' rows are kept from
their last run in ``WORK/results``) and replaces the README's table (between its two marker
comments) with one row per claim. ``nox -s bench`` runs it.

    python benchmarks/readme.py [--work DIR] [--only NAME ...] [--readme PATH] [--runs N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
START = "<!-- benchmark table: written by `nox -s bench` (benchmarks/readme.py) -->"
END = "<!-- end of benchmark table -->"
#: Each benchmark and the arguments it runs with here.
BENCHMARKS: dict[str, list[str]] = {
    "plan": [],
    "oci_build": [],
    "docker_plan": [],
    "memory": [],
    "run_oci": [],
    "registry_push": [],
    "multiplatform": [],
}


def fmt(value: float | None, unit: str) -> str:
    """A figure for the table."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:.1f} {unit}"


def cell(text: str) -> str:
    """Text for a markdown table cell (a ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def table(results: list[dict[str, object]]) -> str:
    """The markdown table of every benchmark's rows."""
    lines = ["| work | imagedsl | anchor (same run) | ratio (bound) |", "|---|---|---|---|"]
    for result in results:
        for row in result["rows"]:  # type: ignore[attr-defined]
            unit = row["unit"]
            anchor = row["anchor"]
            if anchor is None:
                anchor_text = "-"
                ratio_text = f"- (<= {row['bound']:g} {unit})"
            else:
                anchor_text = f"{fmt(anchor, unit)} ({row['anchor_name']})"
                ratio_text = f"{row['ratio']:.2f}x (<= {row['bound']:g}x)"
            verdict = "" if row["ok"] else " **over**"
            lines.append(
                f"| {cell(row['work'])} | {fmt(row['ours'], unit)} | {cell(anchor_text)} | "
                f"{ratio_text}{verdict} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Run the benchmarks and rewrite the README's table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="work directory")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--readme", type=Path, default=HERE.parent / "README.md")
    parser.add_argument("--runs", type=int, help="runs per case, for every benchmark")
    args = parser.parse_args()
    # Each benchmark's rows are kept in the work directory, so --only re-measures some and
    # the table still has every row (from the last run of each).
    kept = args.work.resolve() / "results"
    kept.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only or list(BENCHMARKS):
        out = kept / f"{name}.json"
        out.unlink(missing_ok=True)
        # registry_push.py empties its work directory: it gets one of its own.
        work = args.work / "registry" if name == "registry_push" else args.work
        argv = [sys.executable, str(HERE / f"{name}.py"), "--work", str(work),
                "--json", str(out), *BENCHMARKS[name]]  # fmt: skip
        if args.runs is not None and name != "memory":
            argv += ["--runs", str(args.runs)]
        print(f"== {name}", flush=True)
        done = subprocess.run(argv, check=False)
        if done.returncode != 0 or not out.exists():
            failed.append(name)
    results = [
        json.loads((kept / f"{name}.json").read_text())
        for name in BENCHMARKS
        if (kept / f"{name}.json").exists()
    ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    note = (
        f"Measured {when} on {platform.machine()} with {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()} (load average at the end: {load}); each ratio compares "
        "two medians taken side by side in one run."
    )
    text = args.readme.read_text()
    head, found, rest = text.partition(START)
    _, found_end, tail = rest.partition(END)
    if not found or not found_end:
        sys.exit(f"{args.readme} has no benchmark table markers ({START} ... {END})")
    args.readme.write_text(f"{head}{START}\n{note}\n\n{table(results)}\n{END}{tail}")
    print(table(results))
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (their rows are missing or from an earlier run)")


if __name__ == "__main__":
    main()

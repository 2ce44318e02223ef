"""The benchmark workload (a deterministic context of 20,000 files and about 400 MB) and
what every benchmark shares: timing a command as a user runs it, and reporting a row per
claim (our median beside its anchor's, measured side by side in one run, and their ratio).

The tree is regenerated only when its recipe changes (a marker file records the recipe).
A benchmark run with ``--json FILE`` also writes its rows there; ``benchmarks/readme.py``
gathers them into the README's table (``nox -s bench``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

RECIPE = {"version": 1, "files": 20_000, "dirs": 400, "mean_bytes": 20_000, "seed": 20261123}
#: The scaling workload: five times the files, a tenth of the bytes each.
RECIPE_100K = {"version": 1, "files": 100_000, "dirs": 2_000, "mean_bytes": 2_000, "seed": 7}


def make_context(root: Path, recipe: dict[str, int] = RECIPE) -> Path:
    """Create (or reuse) the workload tree under ``root/context``; return that directory."""
    root.mkdir(parents=True, exist_ok=True)
    context = root / "context"
    marker = root / "recipe.json"
    wanted = json.dumps(recipe, sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted and context.is_dir():
        return context
    shutil.rmtree(context, ignore_errors=True)
    rng = random.Random(recipe["seed"])
    block = rng.randbytes(1 << 20)
    per_dir = recipe["files"] // recipe["dirs"]
    for d in range(recipe["dirs"]):
        directory = context / f"pkg{d:03d}" / ("sub" if d % 3 else "")
        directory.mkdir(parents=True, exist_ok=True)
        for f in range(per_dir):
            # Sizes spread 0..2x the mean; bytes come from a rotating random block, so files
            # differ without costing a random draw per byte.
            size = rng.randint(0, 2 * recipe["mean_bytes"])
            offset = rng.randint(0, len(block) - size - 1)
            digest = hashlib.sha256(f"{d}/{f}".encode()).digest()
            (directory / f"m{f:03d}.py").write_bytes(digest + block[offset : offset + size])
    (context / "requirements.txt").write_text("flask==3.0.3\n")
    (root / "build.py").write_text(
        "import imagedsl as dsl\n\n"
        "src = dsl.context('context')\n"
        "app = dsl.scratch().copy(src, '/app').entrypoint('/app/pkg000/m000.py')\n"
    )
    marker.write_text(wanted)
    return context


def context_bytes(context: Path) -> tuple[int, int]:
    """(files, bytes) of a context."""
    files = total = 0
    for path in context.rglob("*"):
        if path.is_file():
            files += 1
            total += path.stat().st_size
    return files, total


@attrs.frozen
class Run:
    """One timed subprocess: wall seconds and peak resident memory."""

    seconds: float
    peak_rss_mb: float
    #: CPU seconds (user + system) the process used: steadier than wall time on a busy machine.
    cpu_seconds: float = 0.0


def timed(argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run a command, fail loudly if it fails, and measure it (wait4 gives its own rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(argv)}\n{stderr}")
    return Run(seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


def median(values: Sequence[float]) -> float:
    """The median, for reporting."""
    return statistics.median(values)


@attrs.frozen
class Row:
    """One claim: our median beside its anchor's (both measured in this run), and the bound
    on their ratio (or on our figure alone, when ``anchor`` is None)."""

    work: str
    ours: float
    anchor_name: str
    anchor: float | None
    bound: float
    unit: str = "s"

    @property
    def ratio(self) -> float | None:
        return None if self.anchor in (None, 0) else self.ours / self.anchor

    @property
    def ok(self) -> bool:
        value = self.ratio if self.anchor is not None else self.ours
        return value is not None and value <= self.bound

    def to_json(self) -> dict[str, object]:
        return {**attrs.asdict(self), "ratio": self.ratio, "ok": self.ok}


def fmt(value: float | None, unit: str) -> str:
    """A figure with its unit."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.3g} {unit}"


def report(title: str, rows: list[Row], json_path: Path | None) -> None:
    """Print the rows as a table; with ``json_path``, also write them (with ``title``)."""
    print(f"\n{title}")
    print(f"{'work':<46} {'imagedsl':>12} {'anchor':>12} {'ratio':>7}  bound    anchor is")
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        bound = f"<= {row.bound:g}{'x' if row.anchor is not None else ' ' + row.unit}"
        verdict = "ok" if row.ok else "OVER"
        print(
            f"{row.work:<46} {fmt(row.ours, row.unit):>12} {fmt(row.anchor, row.unit):>12} "
            f"{ratio:>7}  {bound:<8} {row.anchor_name} [{verdict}]"
        )
    if json_path is not None:
        json_path.write_text(
            json.dumps({"title": title, "rows": [r.to_json() for r in rows]}, indent=2) + "\n"
        )

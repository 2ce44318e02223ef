"""``imagedsl import`` of a generated 200-stage Dockerfile: the target is at most 1 s.

    nox -s bench -- benchmarks/import.py [--stages N] [--runs N]

Each stage has a global-ARG base, a RUN with a cache mount, a COPY from the context, an ENV, a
COPY from an earlier stage and a LABEL; the last stage copies from ten of them. Prints the
median and the slowest of the runs (the Dockerfile's own context is empty: COPY sources that
do not exist are imported as plain selections).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from imagedsl.api import import_dockerfile

TARGET_SECONDS = 1.0


def generated_dockerfile(stages: int) -> str:
    """A Dockerfile of ``stages`` stages, each using most instruction kinds."""
    lines = ["# syntax=docker/dockerfile:1", "ARG BASE_TAG=1.36", ""]
    for n in range(stages):
        lines.append(f"# stage {n}")
        lines.append(f"FROM busybox:${{BASE_TAG}} AS stage-{n}")
        lines.append("ARG BASE_TAG")
        lines.append(f"RUN --mount=type=cache,target=/cache/{n} echo {n} > /n \\")
        lines.append("    && echo done")
        lines.append(f"COPY src/part-{n}.txt /app/")
        lines.append(f'ENV STAGE={n} NAME="stage {n}"')
        if n:
            lines.append(f"COPY --from=stage-{n - 1} /n /prev")
        lines.append(f"LABEL org.example.stage={n}")
        lines.append("")
    lines.append("FROM busybox")
    lines.extend(f"COPY --from=stage-{n} /n /all/{n}" for n in range(0, stages, stages // 10 or 1))
    lines.append('CMD ["sh"]')
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dockerfile = Path(tmp) / "Dockerfile"
        dockerfile.write_text(generated_dockerfile(args.stages))
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            text = import_dockerfile(dockerfile)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(
        f"import of {args.stages} stages ({len(text.splitlines())} lines of build.py): "
        f"median {median:.3f} s, slowest {max(times):.3f} s (target <= {TARGET_SECONDS} s)"
    )
    return 0 if median <= TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())

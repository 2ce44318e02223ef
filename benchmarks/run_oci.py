"""Benchmark RUN steps: the Python example built with ``--backend oci`` against ``--backend docker``.

``examples/python-app`` (target ``app``): a Debian base with Python, a dependency layer made by a
RUN (``pip install`` from wheels bind-mounted from the context, offline), then the app's code
in a layer of its own. Two situations, each timed alternately for both backends in one run, as
new ``imagedsl build`` processes, after a ``sync``:

* **cold**: nothing built before. Docker: BuildKit's cache pruned and the image removed (the
  base image stays in the engine). OCI: an empty store, so the base is read from the engine
  (``docker-daemon:``, one ``docker save``), checked, and extracted for the RUN.
* **edit**: the same build again after a one-line edit of the app's source: the dependency
  RUN is a hit and only the app layer is rebuilt. Target: OCI's median at most half of
  docker's. The OCI backend writes an OCI layout (``--output oci:DIR``); the row
  ``oci, to docker`` (``--output docker:TAG``, a ``docker load``) is for information.

    python benchmarks/run_oci.py [--runs N] [--work DIR] [--base IMAGE]

The base must be in the engine and hold no device nodes (the OCI backend refuses them in base
layers); the default is the Debian base the tests make
(``tests/support/equivalence.ensure_nodev_image``; running
``pytest tests/test_oci_examples.py -k python`` once makes it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from _workload import median, timed

from imagedsl.backends.engine import require_docker

TARGET_RATIO = 0.5
DEFAULT_BASE = "imagedsl-test/debian-python-nodev:bookworm"
TAG = "imagedsl-bench/run-oci"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "python-app"


def prepare(work: Path) -> Path:
    """A copy of the example with its wheels downloaded (once)."""
    example = work / "python-app"
    if example.exists():
        shutil.rmtree(example / "app")
        shutil.copytree(EXAMPLE / "app", example / "app")
    else:
        shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("__pycache__", "wheels"))
    if not (example / "wheels").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
             "-r", str(example / "requirements.txt"), "-d", str(example / "wheels")],
            check=True,
        )  # fmt: skip
    return example


def edit(example: Path, round_number: int) -> None:
    """A one-line edit of the app's source (a new line each round, so every build misses)."""
    main = example / "app" / "__main__.py"
    lines = main.read_text().splitlines()
    lines = [line for line in lines if not line.startswith("# benchmark edit")]
    main.write_text("\n".join([*lines, f"# benchmark edit {round_number}"]) + "\n")


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per case (median reported)")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="work directory")
    parser.add_argument("--base", default=DEFAULT_BASE, help="a base image with python3 and pip")
    args = parser.parse_args()
    work = args.work.resolve() / "run-oci"
    work.mkdir(parents=True, exist_ok=True)
    engine = require_docker()
    found = engine.run("image", "inspect", args.base, check=False)
    if found.returncode != 0:
        sys.exit(f"the engine has no image {args.base}; see this script's docstring")
    example = prepare(work)
    imagedsl = [sys.executable, "-m", "imagedsl", "build", "build.py:app", "--progress", "quiet"]
    docker_store, oci_store, layout = work / "docker-store", work / "oci-store", work / "layout"
    # Both sides start Python as users do, with bytecode caches (some CI images turn them off).
    env = {k: v for k, v in engine.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    docker_env = {**env, "PYTHON_BASE": args.base}
    oci_env = {**env, "PYTHON_BASE": f"docker-daemon:{args.base}"}
    docker = [*imagedsl, "--backend", "docker", "--store", str(docker_store), "-t", f"{TAG}:docker"]
    oci = [
        *imagedsl,
        "--backend",
        "oci",
        "--store",
        str(oci_store),
        "--output",
        f"oci:{layout}:app",
    ]
    oci_load = [*imagedsl, "--backend", "oci", "--store", str(oci_store),
                "--output", f"docker:{TAG}:oci"]  # fmt: skip
    print(f"python-app on {args.base}; {engine.describe()}")

    def cold_docker() -> float:
        engine.run("image", "rm", "--force", f"{TAG}:docker", check=False)
        engine.run("builder", "prune", "--all", "--force", check=False)
        shutil.rmtree(docker_store, ignore_errors=True)
        os.sync()
        return timed(docker, cwd=example, env=docker_env).seconds

    def cold_oci() -> float:
        shutil.rmtree(oci_store, ignore_errors=True)
        shutil.rmtree(layout, ignore_errors=True)
        os.sync()
        return timed(oci, cwd=example, env=oci_env).seconds

    def warm(argv: list[str], env: dict[str, str]) -> float:
        os.sync()
        return timed(argv, cwd=example, env=env).seconds

    cases: dict[str, list[float]] = {
        "cold, docker": [],
        "cold, oci": [],
        "edit, docker": [],
        "edit, oci": [],
        "edit, oci, to docker": [],
    }
    warm(docker, docker_env)  # warm-up: the page cache holds the base on both sides
    warm(oci, oci_env)
    for _ in range(args.runs):
        cases["cold, docker"].append(cold_docker())
        cases["cold, oci"].append(cold_oci())
    warm(oci_load, oci_env)
    for round_number in range(args.runs):
        edit(example, round_number)
        cases["edit, docker"].append(warm(docker, docker_env))
        cases["edit, oci"].append(warm(oci, oci_env))
        cases["edit, oci, to docker"].append(warm(oci_load, oci_env))
    for tag in ("docker", "oci"):
        engine.run("image", "rm", "--force", f"{TAG}:{tag}", check=False)

    print(f"{'case':<22} {'median s':>9}  runs")
    for case, values in cases.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{case:<22} {median(values):>9.2f}  {runs}")
    cold = median(cases["cold, oci"]) / median(cases["cold, docker"])
    ratio = median(cases["edit, oci"]) / median(cases["edit, docker"])
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER"
    print(f"cold: oci / docker = {cold:.2f} (no target)")
    print(f"edit: oci / docker = {ratio:.2f} (target <= {TARGET_RATIO}) {verdict}")
    if os.environ.get("IMAGEDSL_BENCH_STRICT") == "1" and ratio > TARGET_RATIO:
        sys.exit(1)


if __name__ == "__main__":
    main()

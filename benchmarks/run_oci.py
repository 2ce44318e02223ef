"""Benchmark RUN steps: the Python example built with ``--backend oci`` against ``--backend docker``.

``examples/python-app`` (target ``app``): a Debian base with Python, a dependency layer made by a
RUN (``pip install`` from wheels bind-mounted from the context, offline), then the app's code
in a layer of its own. The benchmark builds its own copy of the example, whose RUN steps ask
for ``network="none"`` (they need no network): so it runs where the engine has no default
bridge network too (the docker backend gives ``--network=none`` to the whole build on Docker
20.10, whose frontend lacks ``RUN --network``; the OCI backend runs them in an empty network
namespace). Two situations, each timed alternately for both backends in one run, as new
``imagedsl build`` processes, after a ``sync``:

* **cold**: the dependency layer and everything above it are new: a unique comment is added
  to ``requirements.txt`` first, so BuildKit's cache misses by itself (nothing is pruned: a
  benchmark never touches the engine's other images or cache). OCI: an empty store, so the
  base is read from the engine (``docker-daemon:``, one ``docker save``), checked, and
  extracted for the RUN.
* **edit**: the same build again after a one-line edit of the app's source: the dependency
  RUN is a hit and only the app layer is rebuilt. Target: OCI's median at most half of
  docker's. The OCI backend writes an OCI layout (``--output oci:DIR``); the row
  ``oci, to docker`` (``--output docker:TAG``, a ``docker load``) is for information.

    python benchmarks/run_oci.py [--runs N] [--work DIR] [--base IMAGE] [--json FILE]

The base must be in the engine and hold no device nodes (the OCI backend refuses them in base
layers); the default is the Debian base the tests make
(``tests/support/equivalence.ensure_nodev_image``; running
``pytest tests/test_oci_examples.py -k python`` once makes it). The benchmark's tags are
unique to the run and removed afterwards. ``--private-engine`` runs it against an engine of
its own that has no bridge network at all (``benchmarks/_private_engine.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from _workload import Row, median, report, timed

from imagedsl.backends.engine import DockerEngine, require_docker

TARGET_RATIO = 0.5
DEFAULT_BASE = "imagedsl-test/debian-python-nodev:bookworm"
TAG = f"imagedsl-bench/run-oci-{uuid.uuid4().hex[:10]}"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "python-app"


#: The example's build file, with RUN steps that ask for no network (they install offline).
BUILD_PY = """\
import os

import imagedsl as dsl

src = dsl.context(".", ignore=[".git", "**/__pycache__", "*.pyc", "build.py", "wheels", "*.md"])
base = (
    dsl.image(os.environ["PYTHON_BASE"])
    .env(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH="/app/deps")
    .workdir("/app")
)
install = "python3 -m pip install --target /app/deps -r requirements.txt --no-index --find-links /wheels"
deps = base.copy(src.file("requirements.txt"), "/app/").run(
    install, mounts=[dsl.bind(dsl.context("wheels"), "/wheels")], network="none"
)
app = (
    deps.copy(src.dir("app"), "/app/app")
    .env(PORT="8080")
    .expose(8080)
    .entrypoint("python3", "-m", "app")
)
"""


def prepare(work: Path) -> Path:
    """A copy of the example with its wheels downloaded (once) and the benchmark's build file."""
    example = work / "python-app"
    if example.exists():
        shutil.rmtree(example / "app")
        shutil.copytree(EXAMPLE / "app", example / "app")
        shutil.copy(EXAMPLE / "requirements.txt", example / "requirements.txt")
    else:
        shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("__pycache__", "wheels"))
    (example / "build.py").write_text(BUILD_PY)
    if not (example / "wheels").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
             "-r", str(example / "requirements.txt"), "-d", str(example / "wheels")],
            check=True,
        )  # fmt: skip
    return example


def make_cold(example: Path) -> None:
    """New content for the dependency layer (a unique comment): every cache misses from it."""
    requirements = (EXAMPLE / "requirements.txt").read_text()
    (example / "requirements.txt").write_text(f"{requirements}# round {uuid.uuid4().hex}\n")


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
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument(
        "--private-engine",
        action="store_true",
        help="run against a private engine with no bridge network, in its own network "
        "namespace (root; the base is copied into it from the engine found as usual)",
    )
    args = parser.parse_args()
    work = args.work.resolve() / "run-oci"
    work.mkdir(parents=True, exist_ok=True)
    engine = require_docker()
    found = engine.run("image", "inspect", args.base, check=False)
    if found.returncode != 0:
        sys.exit(f"the engine has no image {args.base}; see this script's docstring")
    if not args.private_engine:
        run(args, work, engine)
        return
    from _private_engine import private_engine

    with private_engine(work / "engine", [args.base], engine.env) as host:
        os.environ["DOCKER_HOST"] = host
        run(args, work, require_docker())


def run(args: argparse.Namespace, work: Path, engine: DockerEngine) -> None:
    """The rounds against ``engine``, and the table."""
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
        make_cold(example)
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
    rows = [
        Row("RUN example, one-line app edit, oci backend", median(cases["edit, oci"]),
            "docker backend", median(cases["edit, docker"]), TARGET_RATIO),
    ]  # fmt: skip
    cold = median(cases["cold, oci"]) / median(cases["cold, docker"])
    print(f"cold: oci / docker = {cold:.2f} (no target)")
    report("RUN steps, network none (medians of one run)", rows, args.json)
    if os.environ.get("IMAGEDSL_BENCH_STRICT") == "1" and not rows[0].ok:
        sys.exit(1)


if __name__ == "__main__":
    main()

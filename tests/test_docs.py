"""The docs and examples stay true to the code: their build files load and plan."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagedsl import api

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted(ROOT.glob("examples/*/build.py"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def python_blocks() -> list[object]:
    """Every ```python block of the docs that is a build file (imports imagedsl as dsl)."""
    found: list[object] = []
    for doc in DOCS:
        for i, block in enumerate(BLOCK.findall(doc.read_text())):
            is_build_file = block.startswith(("import imagedsl as dsl", "# build.py"))
            defines_stage = "dsl.image(" in block or "dsl.scratch(" in block
            drives_a_build = "load_buildfile" in block or "BuildSession(" in block
            if is_build_file and defines_stage and not drives_a_build:
                found.append(pytest.param(block, id=f"{doc.name}-{i}"))
    return found


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_every_example_target_plans_offline(path: Path, tmp_path: Path) -> None:
    """Each example's every target plans with no daemon and no network."""
    build = api.load_buildfile(path)
    for target in build.targets:
        plan = build.plan(target, store=api.Store(tmp_path / "store"))
        assert plan.steps


@pytest.mark.parametrize("block", python_blocks())
def test_doc_build_files_load(block: str, tmp_path: Path) -> None:
    """Build-file snippets in the docs run against the current API."""
    path = tmp_path / "build.py"
    path.write_text(block)
    build = api.load_buildfile(path)
    assert build.targets


def test_readme_commands_are_the_documented_ones() -> None:
    """README's two set-up commands are the ones .ci/run and the docs rely on."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "python -m pip install --upgrade nox && nox -s tests"
    assert test_command in readme
    assert test_command in ci
    assert MAIN_JOB in readme


MAIN_JOB = (
    "python -m pip install . && imagedsl plan examples/static-site/build.py && imagedsl build "
    "examples/static-site/build.py --backend oci --output oci:static-site.oci:latest"
)


def test_readme_main_job_runs(tmp_path: Path) -> None:
    """The README's main job, minus the install, works offline with no daemon (no DOCKER_HOST,
    a PATH without docker), and writes an OCI layout."""
    commands = MAIN_JOB.split(" && ")[1:]
    env = {"IMAGEDSL_STORE": str(tmp_path / "store"), "PATH": "/nonexistent"}
    for command in commands:
        argv = command.split()
        assert argv[0] == "imagedsl"
        argv[-1] = argv[-1].replace("oci:", f"oci:{tmp_path}/", 1)
        result = subprocess.run(
            [sys.executable, "-m", "imagedsl", *argv[1:]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "static-site.oci" / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"


def test_architecture_lists_every_store_area() -> None:
    """docs/architecture.md's store table names every StoreArea with its path."""
    from imagedsl.store import StoreArea

    text = (ROOT / "docs" / "architecture.md").read_text()
    store_section = text[text.index("## The store") :]
    for area in StoreArea:
        assert f"| `{area.name}` | `{area.value}" in store_section, area

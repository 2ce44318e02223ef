"""The module map's rules hold: no module over 1,000 lines, no runtime import cycle, the OCI
model imports nothing above it, and the public surface is the DSL vocabulary."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import imagedsl

PACKAGE = Path(imagedsl.__file__).parent
MAX_LINES = 1000


def module_name(path: Path) -> str:
    """``imagedsl/oci/blobs.py`` -> ``imagedsl.oci.blobs``; a package's ``__init__`` is the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """The imagedsl modules ``path`` imports when it is imported (module level, outside
    ``if TYPE_CHECKING``); imports inside functions run later and cannot make a cycle at import."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("imagedsl"):
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in known:
                    found.add(name)
    return found


def test_no_module_is_over_a_thousand_lines() -> None:
    """A file does one job; a thousand lines is the limit the module map holds."""
    long = {
        name: n
        for name, p in modules().items()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_runtime_import_cycle() -> None:
    """Importing any module never needs a module that is still being imported."""
    known = modules()
    names = set(known)
    graph = {name: runtime_imports(path, names) - {name} for name, path in known.items()}
    # A package's __init__ is imported before its submodules: an edge to the parent package
    # is no cycle of its own making, so only edges between distinct modules count.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == []


def test_the_oci_model_imports_nothing_above_it() -> None:
    """imagedsl.oci is the bottom of the house: planner, registry and backends import it."""
    known = modules()
    above = ("imagedsl.backends", "imagedsl.registry", "imagedsl.planner", "imagedsl.graph",
             "imagedsl.cli", "imagedsl.api", "imagedsl.remote_cache")  # fmt: skip
    for name, path in known.items():
        if name.startswith("imagedsl.oci"):
            for dep in runtime_imports(path, set(known)):
                assert not dep.startswith(above), f"{name} imports {dep}"


def test_the_public_surface_is_the_vocabulary() -> None:
    """``import imagedsl as dsl`` offers the DSL and its errors; plumbing lives in imagedsl.api."""
    exported = set(imagedsl.__all__)
    for plumbing in ("Store", "Record", "plan", "record_step", "load_buildfile", "Plan"):
        assert plumbing not in exported
    from imagedsl import api

    for plumbing in ("Store", "Record", "plan", "record_step", "load_buildfile", "BuildSession"):
        assert plumbing in api.__all__


def test_importing_the_package_or_the_front_door_loads_nothing_else() -> None:
    """``import imagedsl`` and the console script's module load no other module of ours (the
    command hands plans to a server before it imports the rest), and the vocabulary is the
    DSL's even when its modules were imported first (``imagedsl.contexts`` is a module, and
    ``imagedsl.context`` the function)."""
    code = (
        "import sys; before = set(sys.modules); import imagedsl, imagedsl._client; "
        "print(sorted(set(sys.modules) - before))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert set(ast.literal_eval(loaded)) <= {"__future__", "imagedsl", "imagedsl._client"}
    code = (
        "import imagedsl.contexts, imagedsl.api, imagedsl as dsl; "
        "print(dsl.context.__module__, dsl.scratch.__module__, dsl.InputError.__module__, "
        "'context' in dir(dsl))"
    )
    names = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert names.split() == ["imagedsl.dsl", "imagedsl.dsl", "imagedsl.errors", "True"]

"""What the CLI says when the machine refuses: a full disk (a small tmpfs mounted here), a
read-only or impossible output path; and a build file that exits or declares unknown targets.
Always one line with the path, never a traceback; exit 1 for the machine, 2 for the input."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import oci as oci_support
from tests.support.cli import imagedsl
from tests.support.skips import require_root


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)


def _unmount(where: Path) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        subprocess.run(["umount", "-l", str(where)], check=True, capture_output=True)


@pytest.fixture(name="small_disk")
def fixture_small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, mounted for the test and unmounted after it (root only)."""
    require_root("mounting a tmpfs needs root")
    where = tmp_path / "small"
    _mount_tmpfs(where, "size=2m")
    try:
        yield where
    finally:
        _unmount(where)


@pytest.fixture(name="project")
def fixture_project(tmp_path: Path) -> Path:
    """A build file copying a 4 MB file onto the busybox base: more than the small disk holds."""
    project = tmp_path / "project"
    (project / "ctx").mkdir(parents=True)
    (project / "ctx" / "big").write_bytes(os.urandom(4 << 20))
    base = oci_support.make_busybox_layout(tmp_path / "base")
    (project / "build.py").write_text(
        "import imagedsl as dsl\n"
        f"app = dsl.image({base!r}).copy(dsl.context('ctx').file('big'), '/big')\n"
    )
    return project


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_a_full_store_disk_is_one_line_and_costs_nothing_after(
    small_disk: Path, project: Path, tmp_path: Path
) -> None:
    """A store on a full disk: exit 1 with one line naming the store's path and ENOSPC (not
    a traceback, not "cannot be read"); the same again while full; once there is room, the
    build succeeds with the digest of a build that never ran out of space."""
    store = small_disk / "store"
    for _ in range(2):
        result = imagedsl("build", "build.py", "--backend", "oci", cwd=project, store=store)
        assert result.returncode == 1
        line = _one_line(result.stderr)
        assert line.startswith(f"error: {store}")
        assert line.endswith("No space left on device")
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    after = imagedsl("build", "build.py", "--backend", "oci", cwd=project, store=store)
    assert after.returncode == 0, after.stderr
    clean = imagedsl("build", "build.py", "--backend", "oci", cwd=project, store=tmp_path / "s2")
    assert clean.returncode == 0, clean.stderr
    assert after.stderr.strip().splitlines()[-1] == clean.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("kind", ["oci", "oci-archive"])
def test_a_full_output_disk_is_one_line(
    small_disk: Path, project: Path, tmp_path: Path, kind: str
) -> None:
    """An output on a full disk: exit 1, one line naming where it was being written; nothing
    half-written is left behind."""
    output = small_disk / "out"
    result = imagedsl(
        "build", "build.py", "--backend", "oci", "--output", f"{kind}:{output}",
        cwd=project, store=tmp_path / "store",
    )  # fmt: skip
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert line.startswith(f"error: {output}")
    assert line.endswith("No space left on device")
    leftovers = [p for p in small_disk.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_read_only_output_is_one_line(project: Path, tmp_path: Path, small_disk: Path) -> None:
    """An output on a read-only filesystem: exit 1, one line with the path."""
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = imagedsl(
        "build", "build.py", "--backend", "oci", "--output", f"oci:{small_disk / 'out'}",
        cwd=project, store=tmp_path / "store",
    )  # fmt: skip
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert str(small_disk / "out") in line
    assert line.endswith("Read-only file system")


def test_an_impossible_output_path_is_one_line(project: Path, tmp_path: Path) -> None:
    """``--output oci:/proc/x`` is exit 1 with one line naming /proc/x."""
    result = imagedsl(
        "build", "build.py", "--backend", "oci", "--output", "oci:/proc/x",
        cwd=project, store=tmp_path / "store",
    )  # fmt: skip
    assert result.returncode == 1
    assert _one_line(result.stderr).startswith("error: /proc/x")


def test_sys_exit_in_a_build_file_is_reported_with_its_line(tmp_path: Path) -> None:
    """``sys.exit(5)`` while build.py loads is an error at that line (exit 2), not a silent
    exit 5."""
    (tmp_path / "build.py").write_text(
        "import sys\nimport imagedsl as dsl\napp = dsl.scratch()\nsys.exit(5)\n"
    )
    result = imagedsl("plan", "build.py", cwd=tmp_path, store=tmp_path / "s")
    assert result.returncode == 2
    assert _one_line(result.stderr) == (
        "build.py:4: the build file called sys.exit(5) while it was loaded"
    )


@pytest.mark.parametrize(
    "line",
    [
        pytest.param('dsl.targets("zzz")', id="bare-call"),
        pytest.param('targets = dsl.targets("zzz")', id="assigned"),
    ],
)
def test_unknown_names_in_targets_are_refused(tmp_path: Path, line: str) -> None:
    """``dsl.targets`` naming no stage is refused at its line, assigned or not."""
    (tmp_path / "build.py").write_text(f"import imagedsl as dsl\napp = dsl.scratch()\n{line}\n")
    result = imagedsl("targets", "build.py", cwd=tmp_path, store=tmp_path / "s")
    assert result.returncode == 2
    assert _one_line(result.stderr).startswith("build.py:3: dsl.targets names 'zzz'")


def test_a_bare_targets_call_declares_targets(tmp_path: Path) -> None:
    """A bare ``dsl.targets("b")`` is a declaration like an assigned one."""
    (tmp_path / "build.py").write_text(
        "import imagedsl as dsl\na = dsl.scratch()\nb = dsl.scratch().label(x='1')\n"
        'dsl.targets("b")\n'
    )
    result = imagedsl("targets", "build.py", cwd=tmp_path, store=tmp_path / "s")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["b"]

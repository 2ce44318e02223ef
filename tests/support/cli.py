"""Running the ``imagedsl`` command as a real subprocess, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from imagedsl.backends.engine import DockerEngine


def imagedsl(*args: str, cwd: Path, store: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m imagedsl ARGS`` with its own store."""
    return _run(args, cwd, {**os.environ, "IMAGEDSL_STORE": str(store)}, timeout=120)


def imagedsl_on(
    engine: DockerEngine, *args: str, cwd: Path, store: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m imagedsl ARGS`` against ``engine`` (its environment: DOCKER_HOST,
    DOCKER_BUILDKIT), with ``store`` as ``$IMAGEDSL_STORE`` when given."""
    env = {**os.environ, **engine.env}
    if store is not None:
        env["IMAGEDSL_STORE"] = str(store)
    return _run(args, cwd, env, timeout=timeout)


def _run(
    args: tuple[str, ...], cwd: Path, env: dict[str, str], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagedsl", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

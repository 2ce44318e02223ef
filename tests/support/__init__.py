"""Helpers shared by the tests: engines, registries, OCI images, the CLI, skips.

Import them as ``from tests.support import docker`` (pytest's rootdir-based import puts the
repository root on the path, because ``tests`` is a package; nothing touches ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository's root: the working directory for scripts that import ``tests.support``."""

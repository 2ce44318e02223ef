"""The one way a test says it cannot run here: a missing tool, engine, registry or root.

Everywhere but CI such a test is skipped, loudly (the summary counts the skips whose reason
starts with one of the ``NO_*`` prefixes). With ``IMAGEDSL_REQUIRE_DOCKER=1``, which
``.ci/run`` sets, it fails instead: CI installs everything, so a skip there is a bug.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

REQUIRE_ENV = "IMAGEDSL_REQUIRE_DOCKER"
#: Skip reasons that the summary banner counts start with one of these.
NO_DOCKER = "no Docker engine answered"
NO_REGISTRY = "no docker-registry binary was found"
NO_TOOL = "a tool is not installed"
NO_ROOT = "not running as root"
PREFIXES = (NO_DOCKER, NO_REGISTRY, NO_TOOL, NO_ROOT)


def required() -> bool:
    """Whether every tool must be there (CI): then a missing one fails the test."""
    return os.environ.get(REQUIRE_ENV) == "1"


def unavailable(what: str, details: str = "") -> NoReturn:
    """Skip the running test for want of ``what``, or fail it under ``IMAGEDSL_REQUIRE_DOCKER=1``."""
    text = f"{what}: {details}" if details else what
    if required():
        pytest.fail(f"{text} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(text)


def require_tool(name: str, why: str = "") -> str:
    """The path of command ``name`` (PATH, then /usr/sbin and /usr/bin), or :func:`unavailable`."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        unavailable(NO_TOOL, f"{name}" + (f" ({why})" if why else ""))
    return found


def require_run_runtime(what: str = "RUN steps") -> None:
    """Go on only where RUN steps can run (root and runc), else :func:`unavailable`."""
    from imagedsl.backends.oci.run.runc import missing_requirements

    missing = missing_requirements()
    if "root" in missing:
        unavailable(NO_ROOT, f"{what} need root")
    if missing:
        unavailable(NO_TOOL, f"runc ({what} need it)")


def require_root(why: str) -> None:
    """Go on only as root, else :func:`unavailable`."""
    if os.geteuid() != 0:
        unavailable(NO_ROOT, why)

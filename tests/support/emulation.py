"""Other platforms for the tests: an arm64 static busybox, and whether emulation is there.

``.ci/run`` registers qemu-aarch64 with binfmt_misc (flag F) and downloads Debian's
``busybox-static:arm64`` package into :data:`ARM64_DEBS`; :func:`arm64_busybox` extracts its
binary once per package (cached in the test cache, as the test bases are).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from imagedsl.backends.emulation import emulation_problem
from tests.support.docker import base_cache_dir
from tests.support.skips import NO_TOOL, unavailable

#: Where .ci/run downloads busybox-static:arm64 (IMAGEDSL_TEST_DEBS overrides it).
ARM64_DEBS: Final = Path(os.environ.get("IMAGEDSL_TEST_DEBS") or "/tmp/imagedsl-ci/debs")


def require_emulation(platform: str = "linux/arm64") -> None:
    """Go on only where RUN steps for ``platform`` can run (binfmt_misc, flag F)."""
    problem = emulation_problem(platform)
    if problem is not None:
        unavailable(NO_TOOL, f"emulation of {platform}: {problem} (.ci/run sets it up)")


def arm64_busybox() -> Path:
    """The static arm64 busybox binary from the package .ci/run downloaded."""
    debs = sorted(ARM64_DEBS.glob("busybox-static_*_arm64.deb"))
    if not debs:
        unavailable(NO_TOOL, f"busybox-static:arm64 in {ARM64_DEBS} (.ci/run downloads it)")
    deb = debs[-1]
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    cached = base_cache_dir() / f"busybox-arm64-{digest[:16]}"
    if cached.is_file():
        return cached
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        unavailable(NO_TOOL, "dpkg-deb (to unpack busybox-static:arm64)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        subprocess.run([dpkg_deb, "-x", str(deb), tmp], check=True, timeout=60)
        binary = Path(tmp, "bin", "busybox")
        binary.chmod(0o755)
        os.replace(binary, cached)  # atomic: parallel workers see the whole file or none
    return cached

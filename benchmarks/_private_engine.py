"""A private Docker engine for benchmarks: its own data, its own socket, its own network
namespace, and no bridge network at all (``--bridge=none``).

In its own network namespace, ``--bridge=none`` cannot touch the host's ``docker0`` (a dockerd
started with it in the host's namespace deletes that bridge, and every other engine's
containers then fail). Made with ``unshare --net`` rather than ``ip netns exec``, which
remounts ``/sys`` and hides the cgroups dockerd needs. Root only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def private_engine(work: Path, images: list[str], source_env: dict[str, str]) -> Iterator[str]:
    """Start the engine under ``work``, copy ``images`` into it from the engine that
    ``source_env`` reaches (``docker save | docker load``); yield its ``DOCKER_HOST``; stop it."""
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    client = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
    work.mkdir(parents=True, exist_ok=True)
    socket = work / "docker.sock"
    host = f"unix://{socket}"
    command = (
        f"ip link set lo up; exec {dockerd} --bridge=none --iptables=false --ip6tables=false "
        f"--data-root {work / 'root'} --exec-root {work / 'exec'} -H {host} "
        f"--pidfile {work / 'pid'}"
    )
    with (work / "log").open("wb") as log:
        process = subprocess.Popen(
            ["unshare", "--net", "--fork", "sh", "-c", command],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    env = {**os.environ, "DOCKER_HOST": host}
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([client, "version"], env=env, capture_output=True).returncode:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the private engine did not start; see {work / 'log'}")
            time.sleep(0.5)
        for image in images:
            with subprocess.Popen([client, "save", image], env=source_env,
                                  stdout=subprocess.PIPE) as save:  # fmt: skip
                subprocess.run([client, "load"], env=env, stdin=save.stdout, check=True,
                               capture_output=True)  # fmt: skip
        yield host
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

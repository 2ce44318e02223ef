"""Both backends give a RUN the same sandbox: the same network view and reach, the same
seccomp answers, and file capabilities kept the same way.

One build file is built with ``--backend docker`` (BuildKit, in Docker's bridge) and with
``--backend oci`` (runc, slirp4netns), from the same Debian base bytes. Its first RUN probes
the sandbox and writes what it found into the image; later RUN steps set a file capability
and use it as another user. Both images are run and what they hold must be equal, line for
line. The probe's inputs (ports, names, the outside server) change every run, so neither
backend can answer from its cache.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagedsl.backends.oci.run.network import find_slirp4netns
from imagedsl.backends.oci.run.runc import missing_requirements
from tests.support.docker import DockerEngine
from tests.support.equivalence import ensure_nodev_image
from tests.support.netns import GREETING, Outside, ip_tool, outside_network
from tests.support.skips import NO_TOOL, unavailable

PROBE = """\
import ctypes, errno, os, socket, urllib.request

def attempt(label, call):
    try:
        result = call()
        print(label, "ok" if result is None else result)
    except OSError as error:
        print(label, "failed")

def reach(address):
    socket.create_connection(address, timeout=5).close()

def checked(result):
    if result < 0:
        raise OSError(ctypes.get_errno(), "refused")

def gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))

names = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
print("interfaces", " ".join(names))
print("nameservers", " ".join(
    line.split()[1] for line in open("/etc/resolv.conf") if line.startswith("nameserver")))
print([line for line in open("/proc/self/status") if line.startswith("Seccomp:")][0].strip())
attempt("host loopback through the gateway", lambda: reach((gateway(), {port})))
attempt("own loopback", lambda: reach(("127.0.0.1", {port})))
unix = socket.socket(socket.AF_UNIX)
attempt("host abstract socket", lambda: unix.connect("\\0{abstract}"))
attempt("outside by address", lambda: urllib.request.urlopen("{url}", timeout=10).read().decode().strip())
libc = ctypes.CDLL(None, use_errno=True)
attempt("keyctl", lambda: checked(libc.syscall(250, 0, -3, 0)))
attempt("unshare user namespace", lambda: checked(libc.unshare(0x10000000)))
attempt("mount", lambda: checked(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)))
"""

BUILD = """\
import os

import imagedsl as dsl

ctx = dsl.context(".")
base = dsl.image(os.environ["SANDBOX_BASE"])
probed = base.copy(ctx.file("probe.py"), "/probe.py").run("python3 /probe.py > /probe.txt")
capable = probed.copy(ctx.file("setcap"), "/usr/local/sbin/setcap").run(
    "cp /usr/bin/python3 /usr/local/bin/lowport && "
    "setcap cap_net_bind_service=+ep /usr/local/bin/lowport"
)
app = capable.user("nobody").run(
    "lowport -c 'import socket; socket.socket().bind((\\"127.0.0.1\\", 80)); print(\\"bound 80\\")'"
    " > /tmp/bound.txt"
)
"""

READ_BACK = (
    "cat /probe.txt /tmp/bound.txt; python3 -c "
    "\"import os; print(os.getxattr('/usr/local/bin/lowport', 'security.capability').hex())\""
)


@pytest.fixture(autouse=True)
def _sandbox_available() -> None:
    """Root, runc, slirp4netns, ``ip`` and ``setcap``, or a skip (a failure in CI)."""
    missing = list(missing_requirements())
    if find_slirp4netns() is None:
        missing.append("slirp4netns")
    if ip_tool() is None:
        missing.append("ip")
    if _setcap() is None:
        missing.append("setcap")
    if missing:
        unavailable(NO_TOOL, f"the sandbox equivalence test needs {', '.join(missing)}")


def _setcap() -> str | None:
    return shutil.which("setcap") or shutil.which("setcap", path="/usr/sbin:/sbin")


@pytest.fixture(name="outside")
def fixture_outside(tmp_path: Path) -> Iterator[Outside]:
    """A server in a network namespace of its own; removed afterwards."""
    with outside_network(tmp_path / "outside") as made:
        yield made


@pytest.fixture(name="tags")
def fixture_tags(docker_engine: DockerEngine) -> Iterator[tuple[str, str]]:
    """(docker backend's tag, OCI backend's tag), removed afterwards."""
    name = f"imagedsl-test/sandbox-{uuid.uuid4().hex[:10]}"
    yield f"{name}:docker", f"{name}:oci"
    for tag in ("docker", "oci"):
        docker_engine.run("image", "rm", "--force", f"{name}:{tag}", check=False)


def _listen_on_loopback() -> tuple[socket.socket, threading.Thread]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.slow
def test_both_backends_give_the_same_sandbox(
    docker_engine: DockerEngine,
    debian_python_image: str,
    outside: Outside,
    tags: tuple[str, str],
    tmp_path: Path,
) -> None:
    """What a RUN sees and reaches (interfaces, nameservers, seccomp, host loopback, abstract
    sockets, a server outside, forbidden calls) and how a file capability is kept are the
    same under BuildKit and under the OCI backend."""
    server, thread = _listen_on_loopback()
    abstract = socket.socket(socket.AF_UNIX)
    name = f"imagedsl-sandbox-{uuid.uuid4().hex[:12]}"
    abstract.bind("\0" + name)
    abstract.listen(4)
    try:
        project = tmp_path / "project"
        project.mkdir()
        url = f"{outside.url}/hello.txt"
        port = server.getsockname()[1]
        (project / "probe.py").write_text(PROBE.format(port=port, abstract=name, url=url))
        (project / "build.py").write_text(BUILD)
        setcap = _setcap()
        assert setcap is not None
        shutil.copy(setcap, project / "setcap")
        nodev = ensure_nodev_image(docker_engine, debian_python_image)
        docker_tag, oci_tag = tags
        _imagedsl(docker_engine, project, "--backend", "docker", "-t", docker_tag,
                  base=nodev)  # fmt: skip
        _imagedsl(docker_engine, project, "--backend", "oci", "--output", f"docker:{oci_tag}",
                  base=f"docker-daemon:{nodev}")  # fmt: skip
        seen = {
            tag: docker_engine.run("run", "--rm", tag, "sh", "-c", READ_BACK).stdout.splitlines()
            for tag in tags
        }
    finally:
        server.close()
        abstract.close()
        thread.join(5)
    assert seen[docker_tag] == seen[oci_tag]
    ours = seen[oci_tag]
    assert ours[:3] == [
        "interfaces eth0 lo",
        ours[1],  # the host's nameservers without loopback ones, for both
        "Seccomp:\t2",
    ]
    assert ours[3:] == [
        "host loopback through the gateway failed",
        "own loopback failed",
        "host abstract socket failed",
        f"outside by address {GREETING.strip()}",
        "keyctl failed",
        "unshare user namespace failed",
        "mount failed",
        "bound 80",
        "0100000200040000000000000000000000000000",
    ]


def _imagedsl(engine: DockerEngine, project: Path, *args: str, base: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", "build", "build.py", *args,
         "--store", str(project.parent / f"store-{args[1]}")],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, **({"DOCKER_HOST": engine.host} if engine.host else {}),
             "SANDBOX_BASE": base},
        check=False,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]

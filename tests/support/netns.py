"""A network outside the build for the sandbox tests: a namespace with a web server, a DNS
server and a Python package index, reached from the host through a veth pair.

:func:`outside_network` makes the namespace (``ip netns``), gives the host's end
``198.18.N.1/30`` and the namespace's ``198.18.N.2/30`` (the benchmarking range, RFC 2544,
which no real network uses), starts :func:`serve` in it, and removes everything when the
block ends, whatever happened. A RUN reaches it as it reaches any outside server: through its
NAT (slirp4netns for the OCI backend, Docker's bridge for BuildKit).

:func:`serve` (``python netns_support.py serve DIR ADDRESS NAME``) answers HTTP on port 8080
from ``DIR`` and DNS on port 53: ``A`` queries for ``NAME`` get ``ADDRESS``, anything else
gets no address.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import os
import shutil
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import IO

import attrs

HTTP_PORT = 8080
DNS_NAME = "pkg.imagedsl.test"
PACKAGE = "sandboxprobe"
PACKAGE_TEXT = "installed from the index outside"
GREETING = "hello from outside\n"


@attrs.frozen
class Outside:
    """The namespace, its address, and where its servers answer."""

    namespace: str
    address: str
    host_address: str
    root: Path

    @property
    def url(self) -> str:
        """The web server, by address."""
        return f"http://{self.address}:{HTTP_PORT}"

    @property
    def named_url(self) -> str:
        """The web server, by the name its DNS server answers."""
        return f"http://{DNS_NAME}:{HTTP_PORT}"

    @property
    def index_url(self) -> str:
        """The package index (PEP 503), by name."""
        return f"{self.named_url}/simple/"

    def resolv_conf(self, directory: Path) -> Path:
        """A resolv.conf naming the namespace's DNS server."""
        path = directory / "resolv.conf"
        path.write_text(f"nameserver {self.address}\n")
        return path


def ip_tool() -> str | None:
    """iproute2's ``ip``, if installed."""
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    tool = ip_tool()
    assert tool is not None
    return subprocess.run([tool, *args], capture_output=True, text=True, check=check)


def _free_subnet() -> int:
    taken = _ip("-o", "addr").stdout
    start = os.getpid() % 250
    for offset in range(250):
        candidate = (start + offset) % 250 + 1
        if f"198.18.{candidate}." not in taken:
            return candidate
    raise RuntimeError("no free 198.18.N.0/30 on this host")


@contextlib.contextmanager
def outside_network(root: Path) -> Iterator[Outside]:
    """The namespace with its servers (files under ``root``); torn down on exit."""
    tag = uuid.uuid4().hex[:8]
    namespace = f"imagedsl-sbx-{tag}"
    host_end, inner_end = f"isbh{tag}", f"isbn{tag}"
    subnet = _free_subnet()
    write_site(root)
    with contextlib.ExitStack() as cleanup:
        log = cleanup.enter_context((root / "servers.log").open("wb"))
        yield from _run_outside(namespace, host_end, inner_end, subnet, root, log)


def _run_outside(
    namespace: str, host_end: str, inner_end: str, subnet: int, root: Path, log: IO[bytes]
) -> Iterator[Outside]:
    host_address, address = f"198.18.{subnet}.1", f"198.18.{subnet}.2"
    server: subprocess.Popen[bytes] | None = None
    try:
        _ip("netns", "add", namespace)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", inner_end)
        _ip("link", "set", inner_end, "netns", namespace)
        _ip("addr", "add", f"{host_address}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", inner_end)
        _ip("-n", namespace, "link", "set", inner_end, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "route", "add", "default", "via", host_address)
        tool = ip_tool()
        assert tool is not None
        server = subprocess.Popen(
            [tool, "netns", "exec", namespace, sys.executable, __file__, "serve",
             str(root / "site"), address, DNS_NAME],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
        _wait_for(address, HTTP_PORT, server)
        yield Outside(namespace=namespace, address=address, host_address=host_address, root=root)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        _ip("netns", "delete", namespace, check=False)
        _ip("link", "delete", host_end, check=False)


def _wait_for(address: str, port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the servers in the namespace exited ({server.returncode})")
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on {address}:{port}")


# -- what the servers serve ------------------------------------------------------------------


def write_site(root: Path) -> None:
    """``root/site``: a greeting and a PEP 503 index holding one pure-Python wheel."""
    site = root / "site"
    (site / "simple" / PACKAGE).mkdir(parents=True, exist_ok=True)
    (site / "files").mkdir(exist_ok=True)
    (site / "hello.txt").write_text(GREETING)
    wheel = site / "files" / f"{PACKAGE}-1.0-py3-none-any.whl"
    write_wheel(wheel)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    link = f'<a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>'
    (site / "simple" / PACKAGE / "index.html").write_text(
        f"<!DOCTYPE html><html><body>{link}</body></html>\n"
    )
    (site / "simple" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="{PACKAGE}/">{PACKAGE}</a></body></html>\n'
    )


def write_wheel(path: Path) -> None:
    """A wheel of ``sandboxprobe`` 1.0 (one module, ``TEXT``), with a correct RECORD."""
    info = f"{PACKAGE}-1.0.dist-info"
    files = {
        f"{PACKAGE}/__init__.py": f"TEXT = {PACKAGE_TEXT!r}\n".encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0\n".encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: imagedsl-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def dns_answer(query: bytes, name: str, address: str) -> bytes:
    """The answer to one DNS query: ``address`` for an ``A`` query of ``name``; no address
    (NOERROR) for other types of ``name``; NXDOMAIN for other names."""
    ident, _flags, _qd = struct.unpack("!HHH", query[:6])
    labels, offset = [], 12
    while query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    qtype, _qclass = struct.unpack("!HH", query[offset + 1 : offset + 5])
    question = query[12 : offset + 5]
    asked = ".".join(labels).lower().rstrip(".")
    if asked != name:
        return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer


def serve(directory: str, address: str, name: str) -> None:
    """HTTP on :8080 from ``directory`` and DNS on :53, until killed."""
    handler = partial(_QuietHandler, directory=directory)
    web = socketserver.ThreadingTCPServer((address, HTTP_PORT), handler)
    web.daemon_threads = True
    threading.Thread(target=web.serve_forever, daemon=True).start()
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind((address, 53))
    while True:
        query, peer = dns.recvfrom(4096)
        with contextlib.suppress(Exception):
            dns.sendto(dns_answer(query, name, address), peer)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("http: " + format % args + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 5:
        serve(*sys.argv[2:5])
    else:
        sys.exit("usage: netns_support.py serve DIR ADDRESS NAME")

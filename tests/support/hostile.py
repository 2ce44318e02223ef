"""Hostile servers for the hardening tests, written here on raw sockets (no HTTP library that
would tidy up what they send), and a way to measure a client's peak memory in a subprocess.

- :class:`HostileServer` accepts connections on a loopback port, reads each request's head, and
  lets a handler answer with any bytes at all: endless bodies, lying ``Content-Length``s,
  endless headers, nothing. It counts requests per path (tests assert on counts, not on time).
- :func:`registry_handler` answers like a small registry for fixed blobs and manifests, so a
  base image with hostile layers can be pulled by the real client.
- :func:`run_measured` runs a Python snippet in a fresh interpreter and returns what it printed
  as JSON, with the interpreter's peak RSS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from imagedsl.oci.mediatypes import OCI_MANIFEST
from tests.support import REPO_ROOT


@attrs.frozen
class Request:
    """What the server read of one request: its method, target and lower-cased headers."""

    method: str
    target: str
    headers: Mapping[str, str]

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.split("?", 1)[0]


#: A handler answers one request with the bytes to send, in pieces (it may never end); it
#: returns None (or yields nothing) to send nothing and hold the connection open.
Handler = Callable[[Request, "HostileServer"], Iterable[bytes] | None]


class HostileServer:
    """A loopback TCP server whose answers are whatever its handler yields."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: Counter[str] = Counter()
        self.connections = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def count(self, path: str) -> int:
        """Requests seen for ``path`` so far."""
        with self._lock:
            return self.requests[path]

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self._closing.set()
        self._accepting.join(5)
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn, conn.makefile("rb") as reader, contextlib.suppress(OSError, ValueError):
            while not self._closing.is_set():
                request = self._read_request(reader)
                if request is None:
                    return
                with self._lock:
                    self.requests[request.path] += 1
                answer = self.handler(request, self)
                if answer is None:
                    self._closing.wait()  # say nothing, keep the connection open
                    return
                for piece in answer:
                    if self._closing.is_set():
                        return
                    self._send(conn, piece)

    def _send(self, conn: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = conn.send(view)
            except TimeoutError:
                if self._closing.is_set():
                    raise
                continue
            view = view[sent:]

    def _read_request(self, reader: Any) -> Request | None:
        lines: list[bytes] = []
        while not self._closing.is_set():
            try:
                line = reader.readline(65537)
            except TimeoutError:
                continue
            if not line:
                return None
            if line in (b"\r\n", b"\n"):
                break
            lines.append(line)
        if not lines:
            return None
        method, target, _ = lines[0].decode("latin-1").split(" ", 2)
        headers = {}
        for raw in lines[1:]:
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while length > 0:  # a body we do not need (uploads are not under test here)
            try:
                chunk = reader.read(min(length, 1 << 16))
            except TimeoutError:
                continue
            if not chunk:
                return None
            length -= len(chunk)
        return Request(method, target, headers)


def head(status: int, headers: Mapping[str, str] | None = None, *, length: int | None = 0) -> bytes:
    """A response head; ``length`` None leaves Content-Length out (the body ends at close)."""
    lines = [f"HTTP/1.1 {status} X"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    else:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def endless(piece: bytes = b"x" * 65536) -> Iterator[bytes]:
    """The same bytes, forever."""
    while True:
        yield piece


def registry_handler(
    documents: Mapping[str, tuple[str, bytes]], blobs: Mapping[str, bytes]
) -> Handler:
    """A registry that serves manifests by tag or digest (``documents``: reference -> (media
    type, bytes)) and blobs by digest, plainly and correctly."""

    def handle(request: Request, server: HostileServer) -> Iterable[bytes]:
        del server
        path = request.path
        if path == "/v2/":
            return [head(200)]
        if "/manifests/" in path:
            found = documents.get(path.rsplit("/", 1)[1])
            if found is None:
                return [head(404)]
            media_type, data = found
            headers = {"Content-Type": media_type}
            body = b"" if request.method == "HEAD" else data
            return [head(200, headers, length=len(data)) + body]
        if "/blobs/" in path:
            blob = blobs.get(path.rsplit("/", 1)[1])
            if blob is None:
                return [head(404)]
            body = b"" if request.method == "HEAD" else blob
            return [head(200, length=len(blob)) + body]
        return [head(404)]

    return handle


def gzip_image(
    layers: list[tuple[bytes, str]],
) -> tuple[dict[str, tuple[str, bytes]], dict[str, bytes]]:
    """The manifest (by tag ``1`` and by digest) and blobs of an image of gzip layers given
    as (blob, diff_id), for :func:`registry_handler`."""

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    blobs = {digest(blob): blob for blob, _ in layers}
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
        }
    ).encode()
    blobs[digest(config)] = config
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(blob),
                    "size": len(blob),
                }
                for blob, _ in layers
            ],
        }
    ).encode()
    return {"1": (OCI_MANIFEST, manifest), digest(manifest): (OCI_MANIFEST, manifest)}, blobs


# VmHWM, the peak of this interpreter's own memory map, not getrusage's ru_maxrss: Linux
# carries that across execve, so it starts at the size of the (large) pytest worker that
# spawned the interpreter.
_PRELUDE = """
import json, sys
def _report(**fields):
    with open("/proc/self/status") as status:
        peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))  # KiB
    print(json.dumps({**fields, "peak_rss_kib": peak}))
"""


def run_measured(code: str, *, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a new interpreter; it calls ``_report(**fields)`` once at the end.

    Returns those fields and ``peak_rss_kib``, the process's peak resident set size.
    """
    script = _PRELUDE + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,  # the snippet may import tests.support
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=None if env is None else dict(env),
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise AssertionError(f"the measured run failed ({result.returncode}):\n{result.stderr}")
    found: dict[str, Any] = json.loads(lines[-1])
    return found

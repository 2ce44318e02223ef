"""A stand-in for the Docker engine's API on a unix socket, for tests that need no real engine.

:class:`FakeEngine` answers ``GET /images/NAME/json`` from a dict of images it can be told to
retag, ``GET /_ping``, and ``GET /images/get`` from archives it is given; it counts requests.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socketserver
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs


@attrs.define
class FakeEngine:
    """Images by name (``NAME:TAG`` as the engine normalises it) -> inspect fields."""

    socket_path: Path
    images: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    archives: dict[str, bytes] = attrs.field(factory=dict)
    requests: list[str] = attrs.field(factory=list)
    #: Seconds to wait before answering (a hung engine).
    delay: float = 0.0

    @property
    def host(self) -> str:
        """``unix://PATH``, for DOCKER_HOST."""
        return f"unix://{self.socket_path}"

    def tag(
        self,
        name: str,
        image_id: str,
        *,
        architecture: str = "amd64",
        repo_digests: tuple[str, ...] = (),
    ) -> None:
        """Make ``name`` (``NAME:TAG``) point at ``image_id``."""
        self.images[name] = {
            "Id": image_id,
            "RepoTags": [name],
            "RepoDigests": list(repo_digests),
            "Os": "linux",
            "Architecture": architecture,
        }

    def lookup(self, name: str) -> dict[str, Any] | None:
        candidates = [name, f"{name}:latest"]
        for prefix in ("docker.io/library/", "docker.io/"):
            if name.startswith(prefix):
                short = name.removeprefix(prefix)
                candidates += [short, f"{short}:latest"]
        for candidate in candidates:
            if candidate in self.images:
                return self.images[candidate]
        return None


@contextmanager
def fake_engine() -> Iterator[FakeEngine]:
    """A :class:`FakeEngine` serving on a socket in a short temporary directory (socket paths
    are limited to about 100 bytes) until the block ends."""
    directory = Path(tempfile.mkdtemp(prefix="idsl-engine-"))
    engine = FakeEngine(directory / "docker.sock")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            engine.requests.append(self.path)
            if engine.delay:
                threading.Event().wait(engine.delay)
            path = urllib.parse.unquote(self.path)
            if path == "/_ping":
                self._reply(200, b"OK")
            elif path.startswith("/images/get?names="):
                name = path.removeprefix("/images/get?names=")
                archive = engine.archives.get(name)
                if archive is None:
                    self._reply(404, json.dumps({"message": f"no such image: {name}"}).encode())
                else:
                    self._reply(200, archive, chunked=True)
            elif path.startswith("/images/") and path.endswith("/json"):
                found = engine.lookup(path.removeprefix("/images/").removesuffix("/json"))
                if found is None:
                    self._reply(404, b'{"message": "No such image"}')
                else:
                    self._reply(200, json.dumps(found).encode(), chunked=True)
            else:
                self._reply(404, b"{}")

        def _reply(self, status: int, body: bytes, *, chunked: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if chunked:  # as the engine streams larger answers
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(body), 1000):
                    part = body[start : start + 1000]
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that gave up (a test of timeouts) is not news

        def get_request(self) -> tuple[Any, Any]:
            request, _ = super().get_request()
            return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)

    server = Server(str(engine.socket_path), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)

"""Serve a greeting on $PORT."""

from __future__ import annotations

import http.server
import os
import signal
import sys

import humanize


def greeting() -> bytes:
    """The answer to every request (the dependency proves its layer is there)."""
    return f"hello from imagedsl ({humanize.naturalsize(4_200_000)})\n".encode()


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = greeting()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    # As PID 1 in a container, stop promptly on SIGTERM (docker stop).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("PORT", "8080"))
    http.server.ThreadingHTTPServer(("", port), Hello).serve_forever()

"""The local Docker engine's API over its socket: which image a name is, and exporting one.

Plans ask the engine what a base reference names right now (``GET /images/NAME/json``): its
image ID, which is the digest of the image's config, the identity keys use for a base. That
question is asked on every plan, so it costs one request on a socket: no ``docker`` client
process, a short timeout, and a tiny HTTP/1.1 exchange written here, because importing
``http.client`` (which pulls in ``ssl`` and ``email``) would cost a warm plan more than the
request does. The OCI backend exports images (``GET /images/get``, what ``docker save`` does)
through ``http.client``: a build can afford the import, and the export is a long stream.

Which engine: ``$DOCKER_HOST`` when set (``unix://`` sockets, and ``tcp://`` without TLS),
else the current ``docker context`` (``$DOCKER_CONTEXT`` or the ``currentContext`` of
Docker's ``config.json``), else ``/var/run/docker.sock``, else the socket the test and CI
scripts start (:data:`CI_DOCKER_HOST`), which is the order in which the ``docker`` client
used for builds finds one. An engine that is absent or does not answer is not an error here:
callers fall back to what else they know.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import attrs

from imagedsl.errors import EnvironmentFailure

if TYPE_CHECKING:
    import _socket
    import http.client
    import socket

#: The engine socket the test and CI scripts start when no other engine answers.
CI_DOCKER_HOST: Final = "unix:///tmp/imagedsl-ci/dockerd/docker.sock"
DEFAULT_DOCKER_HOST: Final = "unix:///var/run/docker.sock"
#: How long a plan waits for the engine before planning without it.
LOOKUP_TIMEOUT: Final = 2.0
_EXPORT_TIMEOUT: Final = 3600.0
_MAX_REPLY: Final = 4 << 20


@attrs.define
class EngineError(EnvironmentFailure):
    """The local engine failed a request it should have answered."""

    host: str
    action: str
    problem: str

    def __str__(self) -> str:
        return f"Docker engine at {self.host}: {self.action} failed: {self.problem}"


@attrs.frozen(kw_only=True)
class EngineImage:
    """An image the engine holds: its ID (the config digest) and its platform."""

    id: str
    os: str
    architecture: str
    variant: str | None = None
    repo_digests: tuple[str, ...] = ()

    @property
    def platform(self) -> str:
        """``os/architecture[/variant]``."""
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def runs_on(self, platform: str) -> bool:
        """Whether this image is one for ``platform`` (``linux/arm64`` is ``linux/arm64/v8``)."""
        from imagedsl.oci.platform import Platform

        try:
            wanted = Platform.parse(platform)
        except ValueError:
            return False
        return wanted.matches(Platform(self.os, self.architecture, self.variant))


class EngineAPI:
    """One engine's API. ``host`` is ``unix:///PATH`` or ``tcp://HOST:PORT``."""

    __slots__ = ("host", "timeout")

    def __init__(self, host: str, timeout: float = LOOKUP_TIMEOUT) -> None:
        self.host = host
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"EngineAPI({self.host!r})"

    @classmethod
    def candidates(cls) -> list[EngineAPI]:
        """The engines a ``docker`` client would talk to, in the order it would try them."""
        configured = os.environ.get("DOCKER_HOST") or _context_host()
        if configured:
            return [cls(configured, LOOKUP_TIMEOUT)] if _usable(configured) else []
        return [cls(DEFAULT_DOCKER_HOST, LOOKUP_TIMEOUT), cls(CI_DOCKER_HOST, LOOKUP_TIMEOUT)]

    def image(self, name: str) -> EngineImage | None:
        """The image ``name`` (``NAME[:TAG]`` or ``NAME@DIGEST``) names now, or None.

        Raises :class:`OSError` or :class:`EngineError` when the engine does not answer.
        """
        status, body = self._get(f"/images/{_quote(name)}/json")
        if status == 404:
            return None
        if status != 200:
            raise EngineError(self.host, f"looking up {name}", _message(status, body))
        try:
            found = json.loads(body)
            image_id = found["Id"]
            return EngineImage(
                id=image_id if isinstance(image_id, str) else "",
                os=str(found.get("Os") or ""),
                architecture=str(found.get("Architecture") or ""),
                variant=found.get("Variant") or None,
                repo_digests=tuple(found.get("RepoDigests") or ()),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EngineError(self.host, f"looking up {name}", "an unreadable answer") from None

    def export(self, name: str, destination: Path) -> None:
        """Write what ``docker save NAME`` writes to ``destination``."""
        import http.client

        connection = _connection(self.host, _EXPORT_TIMEOUT)
        action = f"exporting {name}"
        try:
            connection.request("GET", f"/images/get?names={_quote(name, safe='')}")
            response = connection.getresponse()
            if response.status != 200:
                raise EngineError(self.host, action, _message(response.status, response.read()))
            with destination.open("wb") as out:
                _copy(response, out)
        except (OSError, http.client.HTTPException) as error:
            raise EngineError(self.host, action, str(error) or type(error).__name__) from None
        finally:
            connection.close()

    # -- one small request ---------------------------------------------------------------------

    def _get(self, path: str) -> tuple[int, bytes]:
        """``GET path`` on a fresh connection closed by the engine after its answer."""
        sock = _connect(self.host, self.timeout)
        try:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode()
            )
            received = bytearray()
            while chunk := sock.recv(1 << 16):
                received += chunk
                if len(received) > _MAX_REPLY:
                    raise EngineError(self.host, f"GET {path}", "an answer too large")
        finally:
            sock.close()
        return _parse_reply(self.host, path, bytes(received))


class LocalImages:
    """Images looked up by name on the first engine that answers, for one plan.

    An engine that is absent, refuses the connection or times out counts as no engine: it is
    not asked again by this object, and lookups answer None, so a plan goes on without it.
    """

    def __init__(self, candidates: list[EngineAPI] | None = None) -> None:
        self._candidates = candidates
        self._engine: EngineAPI | None = None
        self._images: dict[str, EngineImage | None] = {}
        #: The engines that did not answer: host -> why.
        self.failed: dict[str, str] = {}
        #: Why an engine that is there (not absent: its socket exists) did not answer in time
        #: or answered wrongly, for a note in the plan; None when every failure was absence.
        self.trouble: str | None = None

    @property
    def engine(self) -> EngineAPI | None:
        """The engine that answered (None before the first lookup, or when none did)."""
        return self._engine

    def absence(self) -> str:
        """Why no engine was asked, for messages."""
        if not self.failed:
            return "no engine is configured that imagedsl can reach (DOCKER_HOST is not unix:// or tcp://)"
        return "no engine answered (" + "; ".join(f"{h}: {w}" for h, w in self.failed.items()) + ")"

    def image(self, name: str) -> EngineImage | None:
        """The engine's image ``name``, or None (no such image, or no engine answers)."""
        if name in self._images:
            return self._images[name]
        if self._candidates is None:
            self._candidates = EngineAPI.candidates()
        found = None
        while self._candidates:
            engine = self._engine or self._candidates[0]
            try:
                found = engine.image(name)
            except (OSError, EngineError) as error:
                why = str(error) or type(error).__name__
                self.failed[engine.host] = why
                if not isinstance(error, FileNotFoundError | ConnectionRefusedError):
                    self.trouble = self.trouble or f"the local engine at {engine.host}: {why}"
                self._engine = None
                self._candidates.remove(engine)
                continue
            self._engine = engine
            break
        self._images[name] = found
        return found


def _usable(host: str) -> bool:
    """Hosts this module can talk to: unix sockets, and plain TCP when TLS is not asked for."""
    if host.startswith("unix://"):
        return True
    if host.startswith("tcp://"):
        return not os.environ.get("DOCKER_TLS_VERIFY") and not os.environ.get("DOCKER_CERT_PATH")
    return False


def _context_host() -> str | None:
    """The engine of the current ``docker context``, if one other than the default is used."""
    name = os.environ.get("DOCKER_CONTEXT")
    config_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    if not name:
        try:
            config = json.loads((config_dir / "config.json").read_bytes())
            name = config.get("currentContext") if isinstance(config, dict) else None
        except (OSError, ValueError):
            return None
    if not name or name == "default":
        return None
    import hashlib

    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    try:
        document = json.loads((meta / "meta.json").read_bytes())
        host = document["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return host if isinstance(host, str) else None


def _connect(host: str, timeout: float) -> _socket.socket:
    """A connected socket for one lookup. It is made with ``_socket``, the C module under
    ``socket``: importing ``socket`` itself (its enums) costs a plan more than the request."""
    import _socket

    if host.startswith("unix://"):
        addresses: list[tuple[int, int, int, Any]] = [
            (_socket.AF_UNIX, _socket.SOCK_STREAM, 0, host.removeprefix("unix://"))
        ]
    else:
        address = urllib.parse.urlsplit(host)
        found = _socket.getaddrinfo(
            address.hostname or "", address.port or 2375, 0, _socket.SOCK_STREAM
        )
        addresses = [(family, kind, proto, where) for family, kind, proto, _, where in found]
    error: OSError = ConnectionError(f"no address for {host}")
    for family, kind, proto, where in addresses:
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(where)
        except OSError as failed:
            sock.close()
            error = failed
            continue
        return sock
    raise error


def _stream_socket(host: str, timeout: float) -> socket.socket:
    """A connected ``socket.socket`` (what ``http.client`` needs), for exports."""
    import socket

    if host.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(host.removeprefix("unix://"))
        except BaseException:
            sock.close()
            raise
        return sock
    address = urllib.parse.urlsplit(host)
    return socket.create_connection((address.hostname or "", address.port or 2375), timeout)


def _connection(host: str, timeout: float) -> http.client.HTTPConnection:
    """An ``http.client`` connection to the engine (for streams)."""
    import http.client

    class _EngineConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _stream_socket(host, timeout)

    return _EngineConnection("docker", timeout=timeout)


def _parse_reply(host: str, path: str, reply: bytes) -> tuple[int, bytes]:
    head, separator, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if (
        not separator
        or len(parts) < 2
        or not parts[0].startswith("HTTP/")
        or not parts[1].isdigit()
    ):
        raise EngineError(host, f"GET {path}", "an answer that is not HTTP")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _unchunk(host, path, body)
    elif headers.get("content-length", "").isdigit():
        body = body[: int(headers["content-length"])]
    return int(parts[1]), body


def _unchunk(host: str, path: str, body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, separator, body = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise EngineError(host, f"GET {path}", "a malformed chunked answer") from None
        if not separator or size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2 :]


def _quote(name: str, safe: str = "/:@") -> str:
    return urllib.parse.quote(name, safe=safe)


def _message(status: int, body: bytes) -> str:
    """The engine's ``{"message": ...}``, or the HTTP status."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {status}" + (f": {message}" if isinstance(message, str) and message else "")


def _copy(source: IO[bytes], out: IO[bytes]) -> None:
    while chunk := source.read(1 << 20):
        out.write(chunk)

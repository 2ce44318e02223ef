"""How the registry client talks HTTP: URLs, a connection pool, retries, probing, deadlines.

:class:`Transport` sends one request at a time over the standard library's ``http.client``,
with a small pool of keep-alive connections per registry origin. It authorizes requests
(:mod:`imagedsl.registry.auth`: a 401 is answered once), follows redirects, and turns what is
worth retrying (a dropped connection, a timeout, 408, 429, 5xx) into :class:`Transient`, which
:meth:`Transport.retrying` retries with exponential backoff and jitter (``Retry-After``
honoured).

Nothing a registry sends can hold the client without bound. A reply read whole (a manifest,
an index, a token, an error) is refused past :data:`MAX_DOCUMENT`; a blob streams against its
descriptor's size and digest (:mod:`imagedsl.registry.client`). Every request has ``timeout``
seconds to be answered in full (a blob's body and an upload apart, which must not stall for
that long), and every operation (all its attempts and the pauses between them) has
``deadline`` seconds: both default to :data:`DEFAULT_TIMEOUT` and :data:`DEFAULT_DEADLINE`, or
to ``$IMAGEDSL_REGISTRY_TIMEOUT`` and ``$IMAGEDSL_REGISTRY_DEADLINE``. A watchdog thread shuts
the socket of a request whose time is up, so even a server that trickles its answer a byte at
a time is cut off.

HTTPS always, except plain HTTP for loopback registries (tried first: most are plain) or when
the transport is made with ``insecure=True``. Which scheme a registry speaks is learnt once per
host by a probe of ``/v2/``, whose 401 also teaches the authorizer what the registry wants.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import heapq
import http.client
import ipaddress
import json
import logging
import math
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, TypeVar

import attrs

from imagedsl.oci.reference import DEFAULT_REGISTRY
from imagedsl.registry.auth import Authorizer, Credentials, DockerConfig
from imagedsl.registry.errors import (
    InsecureRegistryError,
    NotFoundError,
    RegistryAuthError,
    RegistryConnectionError,
    RegistryDeadlineError,
    RegistryError,
    RegistryReplyTooLargeError,
    RegistrySettingError,
    shown,
)

if TYPE_CHECKING:
    from imagedsl.oci.reference import ImageReference

_log = logging.getLogger(__name__)

IO_CHUNK: Final = 1 << 20
#: The most read into memory from one reply: a manifest, an index, a token, an error body.
#: The distribution spec lets registries refuse manifests above 4 MiB.
MAX_DOCUMENT: Final = 4 << 20
#: Seconds a request has to be answered in full (see the module docstring).
DEFAULT_TIMEOUT: Final = 60.0
#: Seconds an operation has, across all its attempts and pauses.
DEFAULT_DEADLINE: Final = 600.0
TIMEOUT_ENV: Final = "IMAGEDSL_REGISTRY_TIMEOUT"
DEADLINE_ENV: Final = "IMAGEDSL_REGISTRY_DEADLINE"
_BODY_CHUNK: Final = 64 << 10
_USER_AGENT: Final = "imagedsl/0.1"
_DOCKER_HUB_API: Final = "registry-1.docker.io"
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})

T = TypeVar("T")


#: When the operation running in this thread must end (``time.monotonic()``), set by
#: :meth:`Transport.retrying`; an operation inside another ends no later than the outer one.
_operation_end: contextvars.ContextVar[float] = contextvars.ContextVar(
    "imagedsl_registry_operation_end", default=math.inf
)


def seconds_setting(value: float | None, env: str, default: float) -> float:
    """``value``, else the environment variable ``env``, else ``default``: positive seconds."""
    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise RegistrySettingError(env, text, "must be a number of seconds") from None
        name = env
    else:
        text, name = str(value), env.removeprefix("IMAGEDSL_REGISTRY_").lower()
    if not (value > 0 and math.isfinite(value)):
        raise RegistrySettingError(name, text, "must be a positive number of seconds")
    return value


class _Ticket:
    """One socket the watchdog shuts when ``end`` passes (unless released first)."""

    __slots__ = ("end", "expired", "released", "sock")

    def __init__(self, end: float, sock: socket.socket) -> None:
        self.end = end
        self.sock = sock
        self.expired = False
        self.released = False

    def __lt__(self, other: _Ticket) -> bool:
        return self.end < other.end


class _Watchdog:
    """One thread that shuts the sockets of requests whose time is up; it ends when no request
    is left to watch (a process with no other thread may fork safely) and starts again with
    the next.

    A socket timeout bounds each ``recv``, not a whole answer: a server may send one byte per
    timeout forever. Shutting the socket down wakes whatever reads it, with an error.
    """

    def __init__(self) -> None:
        self._wakeup = threading.Condition()
        self._tickets: list[_Ticket] = []
        self._thread: threading.Thread | None = None

    def watch(self, end: float, sock: socket.socket | None) -> _Ticket | None:
        """Shut ``sock`` at ``end`` (``time.monotonic()``) unless released; None: no limit."""
        if sock is None or math.isinf(end):
            return None
        ticket = _Ticket(end, sock)
        with self._wakeup:
            heapq.heappush(self._tickets, ticket)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="imagedsl-registry-watchdog", daemon=True
                )
                self._thread.start()
            self._wakeup.notify()
        return ticket

    def release(self, ticket: _Ticket | None) -> None:
        """The request is over: leave its socket alone."""
        if ticket is not None:
            with self._wakeup:
                ticket.released = True
                self._wakeup.notify()  # so that the thread ends once nothing is left to watch

    def _run(self) -> None:
        with self._wakeup:
            while True:
                while self._tickets and self._tickets[0].released:
                    heapq.heappop(self._tickets)
                if not self._tickets:
                    # Nothing to watch: the thread ends (the next request starts another), so
                    # a build that pulled its base has one thread again, and may fork.
                    self._thread = None
                    return
                first = self._tickets[0]
                left = first.end - time.monotonic()
                if left > 0:
                    self._wakeup.wait(left)
                    continue
                heapq.heappop(self._tickets)
                first.expired = True
                # The plain socket's shutdown, also under TLS: it only wakes the reader. The
                # socket may have been closed meanwhile.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(first.sock, socket.SHUT_RDWR)


_WATCHDOG: Final = _Watchdog()


class Transient(Exception):
    """A failure worth retrying: a dropped connection, a timeout, 408, 429 or 5xx."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


@attrs.frozen
class Repository:
    """A repository on a registry: ``host`` as references write it, ``path`` below it."""

    host: str
    path: str

    @classmethod
    def of(cls, reference: ImageReference) -> Repository:
        """The repository of a registry reference."""
        if reference.transport != "registry":
            raise ValueError(f"not a registry reference: {reference}")
        host, _, path = reference.name.partition("/")
        return cls(host, path)

    @property
    def api_host(self) -> str:
        """Where the API answers (Docker Hub's name differs from its API host)."""
        return _DOCKER_HUB_API if self.host == DEFAULT_REGISTRY else self.host

    def scope(self, *actions: str) -> str:
        """A token scope: ``repository:PATH:pull,push``."""
        return f"repository:{self.path}:{','.join(actions)}"

    def __str__(self) -> str:
        return f"{self.host}/{self.path}"


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often and how patiently to retry a failing request."""

    attempts: int = 6
    initial_delay: float = 0.25
    max_delay: float = 8.0
    #: A server's ``Retry-After`` is honoured up to this many seconds.
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (exponential, with full jitter)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.initial_delay * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)


class TransferProgress(Protocol):
    """Progress of blob transfers; called from worker threads, so implementations lock."""

    def transfer_started(self, digest: str, size: int, direction: str) -> None:
        """A blob starts moving (``direction`` is ``pull`` or ``push``)."""
        ...

    def transfer_advanced(self, digest: str, done: int) -> None:
        """``done`` bytes of the blob have moved (counting a resumed part)."""
        ...

    def transfer_finished(self, digest: str, outcome: str) -> None:
        """The blob is done: ``pulled``, ``present``, ``pushed``, ``exists`` or ``mounted``."""
        ...


class NoProgress:
    """Progress hooks that do nothing (the library is quiet unless asked)."""

    def transfer_started(self, digest: str, size: int, direction: str) -> None:
        """Nothing."""

    def transfer_advanced(self, digest: str, done: int) -> None:
        """Nothing."""

    def transfer_finished(self, digest: str, outcome: str) -> None:
        """Nothing."""


@attrs.frozen
class Url:
    scheme: str
    netloc: str
    target: str

    @classmethod
    def parse(cls, text: str) -> Url:
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {text!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.netloc, target)

    def join(self, location: str) -> Url:
        """Resolve a ``Location`` header against this URL (refused unless http(s))."""
        try:
            return Url.parse(urllib.parse.urljoin(str(self), location))
        except ValueError:
            where = shown(location)
            raise RegistryError(
                self.netloc, "following its Location", detail=f"{where!r} is not an http(s) URL"
            ) from None

    def with_query(self, **params: str) -> Url:
        sep = "&" if "?" in self.target else "?"
        return Url(self.scheme, self.netloc, self.target + sep + urllib.parse.urlencode(params))

    @property
    def path(self) -> str:
        """The target without its query (what log lines show: queries carry upload state)."""
        return self.target.split("?", 1)[0]

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.target}"


@attrs.frozen
class FilePart:
    """``length`` bytes of ``path`` from ``offset``: a request body sent from the file."""

    path: Path
    offset: int
    length: int
    digest: str


Body = bytes | FilePart | None


class Reply:
    """A response whose body is either read (``body``) or still to stream (``response``)."""

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        response: http.client.HTTPResponse | None = None,
        release: Callable[[bool], None] | None = None,
        expired: Callable[[], bool] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.response = response
        self._release = release
        self._expired = expired

    @property
    def expired(self) -> bool:
        """Whether the operation's deadline cut a streaming body short."""
        return self._expired is not None and self._expired()

    def close(self, reusable: bool = False) -> None:
        """Give the connection back (``reusable`` once the body was read to its end)."""
        if self._release is not None:
            self._release(reusable)
            self._release = None


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or (500 <= status < 600 and status not in (501, 505))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        import email.utils  # only for an HTTP-date Retry-After: rare, and slow to import

        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_codes(body: bytes) -> tuple[tuple[str, ...], str]:
    """The distribution error body's codes and first message."""
    try:
        errors = json.loads(body).get("errors") or []
        codes = tuple(str(e.get("code")) for e in errors if isinstance(e, dict))
        messages = [str(e.get("message")) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError, TypeError, RecursionError):
        return (), ""
    return codes, (messages[0] if messages else "")


class _HeadWatcher:
    """Wraps a response's reader while its head is parsed, remembering the last line read."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.last = b""

    def readline(self, limit: int = -1) -> bytes:
        self.last = self.raw.readline(limit)
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _CheckedResponse(http.client.HTTPResponse):
    """A response that knows whether its head ended with the blank line or was cut.

    ``http.client`` ends a head at EOF as if at its blank line, so a connection cut inside
    the head would look like a complete response missing its later headers (a truncated
    ``Location``, say). Such a response is retried instead of believed.
    """

    head_cut = False

    def begin(self) -> None:
        raw = self.fp
        watcher = _HeadWatcher(raw)
        self.fp = watcher  # type: ignore[assignment]
        try:
            super().begin()
        finally:
            if self.fp is not None:  # None once the response closed itself
                self.fp = raw
        self.head_cut = watcher.last not in (b"\r\n", b"\n")


class _Pool:
    """Idle keep-alive connections per origin."""

    def __init__(self, timeout: float, contexts: Callable[[str], ssl.SSLContext]) -> None:
        self._timeout = timeout
        self._contexts = contexts
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def acquire(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before (and so may have gone stale)."""
        with self._lock:
            idle = self._idle.get((scheme, netloc))
            if idle:
                return idle.pop(), True
        conn: http.client.HTTPConnection
        if scheme == "https":
            context = self._contexts(netloc)
            conn = http.client.HTTPSConnection(netloc, timeout=self._timeout, context=context)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=self._timeout)
        conn.response_class = _CheckedResponse
        return conn, False

    def release(self, scheme: str, netloc: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault((scheme, netloc), []).append(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


TRANSIENT_ERRORS: Final = (
    OSError,  # resets, refused connections, broken pipes, timeouts (socket.timeout is one)
    http.client.HTTPException,  # RemoteDisconnected, IncompleteRead, BadStatusLine
)


_STALE_ERRORS: Final = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Transport:
    """Requests to registries, authorized and retried. Thread safe; it pools connections.

    ``credentials`` (host -> :class:`~imagedsl.registry.auth.Credentials`) take precedence
    over ``docker_config`` (default: Docker's own, read when a registry first asks).
    ``insecure`` allows plain HTTP and unverified TLS for every registry; loopback registries
    may use plain HTTP anyway. ``ssl_context`` verifies TLS (e.g. with a private CA).
    ``progress`` hears how far a blob's upload has gone.
    """

    def __init__(
        self,
        *,
        credentials: Mapping[str, Credentials] | None = None,
        docker_config: DockerConfig | None = None,
        insecure: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        retry: RetryPolicy | None = None,
        progress: TransferProgress,
    ) -> None:
        self._credentials = dict(credentials or {})
        self._docker_config = docker_config
        self.insecure = insecure
        self._ssl_context = ssl_context
        self._context: ssl.SSLContext | None = None
        #: Seconds a request has to be answered (and a blob's body may stall).
        self.timeout = seconds_setting(timeout, TIMEOUT_ENV, DEFAULT_TIMEOUT)
        #: Seconds an operation has, across its attempts and pauses.
        self.deadline = seconds_setting(deadline, DEADLINE_ENV, DEFAULT_DEADLINE)
        self.retry = retry or RetryPolicy()
        self.progress = progress
        self._pool = _Pool(self.timeout, self._context_for)
        self._lock = threading.Lock()
        self._schemes: dict[str, str] = {}
        self._probing: dict[str, threading.Lock] = {}
        self._authorizers: dict[str, Authorizer] = {}

    def close(self) -> None:
        """Close pooled connections."""
        self._pool.close()

    def url(self, repo: Repository, path: str) -> Url:
        """``path`` on the registry's API host, in the scheme it speaks (probed once)."""
        return Url(self._scheme(repo), repo.api_host, path)

    def _context_for(self, netloc: str) -> ssl.SSLContext:
        del netloc  # one policy for every host, for now
        with self._lock:
            # Made once: loading the system's CA certificates takes tens of milliseconds.
            if self._context is None:
                if self.insecure:
                    self._context = ssl.create_default_context()
                    self._context.check_hostname = False
                    self._context.verify_mode = ssl.CERT_NONE
                else:
                    self._context = self._ssl_context or ssl.create_default_context()
            return self._context

    def _http_allowed(self, netloc: str) -> bool:
        return self.insecure or is_loopback(netloc)

    def _scheme(self, repo: Repository) -> str:
        """HTTPS, or plain HTTP for a loopback/insecure registry that does not speak TLS."""
        host = repo.api_host
        with self._lock:
            known = self._schemes.get(host)
            if known is not None:
                return known
            probing = self._probing.setdefault(host, threading.Lock())
        with probing:  # one probe per host, however many workers ask at once
            with self._lock:
                known = self._schemes.get(host)
            if known is None:
                known = self._probe(repo)
                with self._lock:
                    self._schemes[host] = known
        return known

    def _probe(self, repo: Repository) -> str:
        """``GET /v2/`` over HTTPS, then over HTTP when allowed; a 401 teaches the auth.

        Loopback registries are asked over plain HTTP first (no credentials go with a probe):
        most are plain, and a TLS one answers 400, after which HTTPS is tried as usual. It
        saves a refused TLS attempt and loading the system's CA certificates.
        """
        host = repo.api_host
        if is_loopback(host):
            try:
                plain = self._ping(Url("http", host, "/v2/"), repo)
            except Transient:
                plain = None
            if plain is not None and plain.status != 400:
                return self._probed("http", plain, repo)
        for scheme in ("https", "http"):
            if scheme == "http" and not self._http_allowed(host):
                raise InsecureRegistryError(host)
            url = Url(scheme, host, "/v2/")
            try:
                reply = self.retrying(host, "connecting", functools.partial(self._ping, url, repo))
            except _PlainHTTP:
                continue
            return self._probed(scheme, reply, repo)
        raise AssertionError("unreachable")

    def _probed(self, scheme: str, reply: Reply, repo: Repository) -> str:
        if reply.status == 401:
            self.authorizer(repo).challenged(reply.headers.get("www-authenticate"), (), None)
        return scheme

    def _ping(self, url: Url, repo: Repository) -> Reply:
        try:
            return self.call_once("GET", url, repo, "connecting", scopes=(), authorize=False)
        except Transient as failure:
            if isinstance(failure.__cause__, ssl.SSLError) and not isinstance(
                failure.__cause__, ssl.SSLCertVerificationError | ssl.SSLEOFError
            ):
                raise _PlainHTTP from None  # a plain-HTTP server answered the TLS hello
            raise

    def authorizer(self, repo: Repository) -> Authorizer:
        """What answers the challenges of the repository's API host (one per host)."""
        host = repo.api_host
        with self._lock:
            found = self._authorizers.get(host)
            if found is None:
                found = Authorizer(host, lambda: self._lookup(repo.host), self._send_for_auth)
                self._authorizers[host] = found
            return found

    def _lookup(self, host: str) -> Credentials | None:
        explicit = self._credentials.get(host)
        if explicit is not None:
            return explicit
        config = self._docker_config
        if config is None:
            config = self._docker_config = DockerConfig.load()
        return config.credentials_for(host)

    def _send_for_auth(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        target = Url.parse(url)
        if target.scheme == "http" and not self._http_allowed(target.netloc):
            raise InsecureRegistryError(target.netloc)
        reply = self.retrying(
            target.netloc,
            "fetching a token",
            lambda: self._exchange(method, target, dict(headers), body, stream=False),
        )
        return reply.status, reply.headers, reply.body

    def retrying(self, host: str, action: str, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it does not raise :class:`Transient`, pausing as the retry
        policy says; after the last attempt, :class:`RegistryConnectionError`.

        This is one operation: it has ``deadline`` seconds in all (no more than an operation
        it runs inside has left), after which :class:`RegistryDeadlineError`.
        """
        end = min(_operation_end.get(), time.monotonic() + self.deadline)
        token = _operation_end.set(end)
        try:
            for number in range(1, self.retry.attempts + 1):
                try:
                    return attempt()
                except Transient as failure:
                    now = time.monotonic()
                    if now >= end:
                        raise RegistryDeadlineError(
                            host, action, self.deadline, number, failure.cause, detail=failure.cause
                        ) from None
                    if number == self.retry.attempts:
                        raise RegistryConnectionError(
                            host, action, attempts=number, cause=failure.cause
                        ) from None
                    pause = self.retry.delay(number, failure.retry_after)
                    if now + pause >= end:
                        raise RegistryDeadlineError(
                            host, action, self.deadline, number, failure.cause, detail=failure.cause
                        ) from None
                    _log.info("%s: %s; retry %d in %.2fs", action, failure.cause, number, pause)
                    time.sleep(pause)
        finally:
            _operation_end.reset(token)
        raise AssertionError("unreachable")

    def call(
        self,
        method: str,
        url: Url,
        repo: Repository,
        action: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: Body = None,
    ) -> Reply:
        """One request with its body read, retried on transient failures."""
        return self.retrying(
            repo.host,
            action,
            lambda: self.call_once(
                method, url, repo, action, scopes=scopes, headers=headers, body=body
            ),
        )

    def call_once(
        self,
        method: str,
        url: Url,
        repo: Repository,
        action: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
        authorize: bool = True,
    ) -> Reply:
        """One request, authorized (a 401 is answered once), redirects followed.

        Raises :class:`Transient` for what is worth retrying (a dropped connection, a
        retryable status), :class:`RegistryAuthError` when refused.
        """
        authorizer = self.authorizer(repo) if authorize else None
        target = url
        for _round in range(8):
            sent = dict(headers or {})
            auth = None
            if authorizer is not None and target.netloc == repo.api_host:
                auth = authorizer.header_for(scopes)
                if auth is not None:
                    sent["Authorization"] = auth
            reply = self._exchange(method, target, sent, body, stream=stream)
            if reply.status == 401 and authorizer is not None and _round == 0:
                challenge = reply.headers.get("www-authenticate")
                reply.close(reusable=not stream)
                if authorizer.challenged(challenge, scopes, auth):
                    continue
                raise RegistryAuthError(
                    repo.host, "the registry refused us", status=401, scopes=scopes
                )
            if reply.status in (401, 403) and authorizer is not None:
                reply.close(reusable=not stream)
                problem = "the registry refused us" if reply.status == 401 else "access denied"
                raise RegistryAuthError(repo.host, problem, status=reply.status, scopes=scopes)
            if reply.status in _REDIRECTS and method in ("GET", "HEAD"):
                location = reply.headers.get("location")
                reply.close(reusable=not stream)
                if not location:
                    raise RegistryError(repo.host, action, detail="a redirect without Location")
                target = target.join(location)
                if target.scheme == "http" and not self._http_allowed(target.netloc):
                    raise InsecureRegistryError(target.netloc)
                continue
            if _retryable_status(reply.status):
                reply.close(reusable=not stream)
                after = _retry_after(reply.headers.get("retry-after"))
                raise Transient(f"{method} {target.path} answered {reply.status}", after)
            return reply
        raise RegistryError(repo.host, action, detail="too many redirects")

    def _exchange(
        self, method: str, url: Url, headers: dict[str, str], body: Body, *, stream: bool
    ) -> Reply:
        """Send one request on a pooled connection. Connection failures become Transient.

        The request has ``timeout`` seconds to be answered in full, within what its operation
        has left; an upload (a file body) and a streamed body are bounded by the operation's
        deadline instead, and must not stall for ``timeout`` seconds. A body read here is
        refused past :data:`MAX_DOCUMENT`.
        """
        headers.setdefault("User-Agent", _USER_AGENT)
        operation_end = _operation_end.get()
        whole = not isinstance(body, FilePart)
        for _stale in range(2):
            now = time.monotonic()
            end = min(operation_end, now + self.timeout) if whole else operation_end
            if end <= now:
                raise Transient(f"{method} {url.path}: no time left for the request")
            conn, reused = self._pool.acquire(url.scheme, url.netloc)
            ticket = None
            try:
                conn.timeout = min(self.timeout, end - now)
                if conn.sock is None:
                    conn.connect()
                else:
                    conn.sock.settimeout(conn.timeout)
                ticket = _WATCHDOG.watch(end, conn.sock)
                response = self._send_request(conn, method, url, headers, body)
                if method == "HEAD" or not stream:
                    data = _read_document(response, url.netloc, f"{method} {url.path}")
                else:
                    data = b""
            except ssl.SSLCertVerificationError as error:
                conn.close()
                raise RegistryError(
                    url.netloc,
                    "connecting",
                    detail=f"TLS verification failed: {error.verify_message}",
                ) from None
            except TRANSIENT_ERRORS as error:
                conn.close()
                if ticket is not None and ticket.expired:
                    raise Transient(
                        f"{method} {url.path}: no complete answer within {self.timeout:g} s"
                    ) from error
                if reused and method in ("GET", "HEAD") and isinstance(error, _STALE_ERRORS):
                    continue  # an idle keep-alive connection the server had closed
                raise Transient(f"{method} {url.path}: {type(error).__name__}: {error}") from error
            except BaseException:
                conn.close()
                raise
            finally:
                _WATCHDOG.release(ticket)
            if ticket is not None and ticket.expired:  # what was read may be cut short
                conn.close()
                raise Transient(
                    f"{method} {url.path}: no complete answer within {self.timeout:g} s"
                )
            if isinstance(response, _CheckedResponse) and response.head_cut:
                conn.close()
                raise Transient(f"{method} {url.path}: the response was cut short")
            reply_headers = {k.lower(): v for k, v in response.getheaders()}
            if method == "HEAD" or not stream:
                if response.will_close:
                    conn.close()
                else:
                    self._pool.release(url.scheme, url.netloc, conn)
                return Reply(response.status, reply_headers, data)
            if conn.sock is not None:
                conn.sock.settimeout(self.timeout)  # a body may not stall longer than this
            body_ticket = _WATCHDOG.watch(operation_end, conn.sock)

            def release(
                reusable: bool,
                conn: http.client.HTTPConnection = conn,
                response: http.client.HTTPResponse = response,
                ticket: _Ticket | None = body_ticket,
            ) -> None:
                _WATCHDOG.release(ticket)
                if reusable and not response.will_close and response.isclosed():
                    self._pool.release(url.scheme, url.netloc, conn)
                else:
                    conn.close()

            def expired(ticket: _Ticket | None = body_ticket) -> bool:
                return ticket is not None and ticket.expired

            return Reply(response.status, reply_headers, b"", response, release, expired)
        raise Transient(f"{method} {url.path}: the connection kept closing")

    def _send_request(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        url: Url,
        headers: Mapping[str, str],
        body: Body,
    ) -> http.client.HTTPResponse:
        conn.putrequest(method, url.target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if isinstance(body, bytes):
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        elif isinstance(body, FilePart):
            conn.putheader("Content-Length", str(body.length))
            conn.endheaders()
            self._send_file(conn, body)
        else:
            if method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", "0")
            conn.endheaders()
        return conn.getresponse()

    def _send_file(self, conn: http.client.HTTPConnection, part: FilePart) -> None:
        sock = conn.sock
        assert sock is not None
        sent = 0
        with part.path.open("rb") as handle:
            if isinstance(sock, ssl.SSLSocket):
                handle.seek(part.offset)
                buffer = bytearray(IO_CHUNK)
                view = memoryview(buffer)
                while sent < part.length:
                    n = handle.readinto(view[: min(IO_CHUNK, part.length - sent)])
                    if not n:
                        raise Transient(f"{part.path} shrank while being sent")
                    sock.sendall(view[:n])
                    sent += n
                    self.progress.transfer_advanced(part.digest, part.offset + sent)
            else:
                step = 8 * IO_CHUNK
                while sent < part.length:
                    count = min(step, part.length - sent)
                    n = sock.sendfile(handle, part.offset + sent, count)
                    if not n:
                        raise Transient(f"{part.path} shrank while being sent")
                    sent += n
                    self.progress.transfer_advanced(part.digest, part.offset + sent)

    def expect(
        self, reply: Reply, statuses: Collection[int], repo: Repository, action: str
    ) -> None:
        """Raise the registry's error (:class:`NotFoundError` for 404) unless the reply's
        status is one of ``statuses``."""
        if reply.status in statuses:
            return
        codes, message = error_codes(reply.body)
        secrets = self.authorizer(repo).secrets()  # a registry may echo what it was sent
        codes = tuple(shown(code, secrets) for code in codes)
        error_type = NotFoundError if reply.status == 404 else RegistryError
        detail = shown(message, secrets)
        raise error_type(repo.host, action, status=reply.status, codes=codes, detail=detail)


def _read_document(response: http.client.HTTPResponse, host: str, action: str) -> bytes:
    """A reply's whole body, refused past :data:`MAX_DOCUMENT` (announced or read)."""
    if response.length is not None and response.length > MAX_DOCUMENT:
        response.close()
        raise RegistryReplyTooLargeError(host, action, MAX_DOCUMENT)
    data = read_at_most(response, MAX_DOCUMENT, host, action)
    if response.length:  # read(amt) returns a short body at EOF without a word
        raise http.client.IncompleteRead(data, response.length)
    return data


def read_at_most(reader: IO[bytes], limit: int, host: str, action: str) -> bytes:
    """Read a stream to its end, refusing it once it passes ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = reader.read(_BODY_CHUNK)
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > limit:
            reader.close()
            raise RegistryReplyTooLargeError(host, action, limit)
        parts.append(chunk)


class _PlainHTTP(Exception):
    """The registry answered a TLS hello with plain HTTP."""

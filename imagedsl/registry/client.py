"""A client for OCI distribution registries: resolve, pull, push, mount; every byte verified.

:class:`RegistryClient` speaks the distribution spec over HTTP/1.1 (the standard library's
``http.client``, one small connection pool per registry origin):

- **Pull**: manifests and indexes (an index's platform chosen with :class:`Platform`), blobs
  into the store. A blob is hashed while it streams into a temporary file beside its final
  name and renamed only once its sha256 and size match; an interrupted download keeps its
  partial file and the next attempt (or the next process) resumes it with ``Range``.
- **Push**: blobs the registry already has are skipped after a ``HEAD``; blobs from another
  repository of the same registry are mounted; small blobs go in one ``PUT``, large ones in
  ``PATCH`` chunks whose upload is resumed from what the registry reports after a failure.
  Then child manifests, then the top manifest under every tag.
- **Auth** (:mod:`imagedsl._registry_auth`): Docker's ``config.json`` and credential helpers,
  Basic, Bearer tokens per scope.
- **Reliability**: connection errors, 408, 429 and 5xx are retried with exponential backoff
  and jitter (``Retry-After`` honoured); every socket operation has a timeout.
- **TLS**: HTTPS always, except plain HTTP for loopback registries (tried after HTTPS) or
  when the client is made with ``insecure=True``.

Blob transfers run in a small thread pool; progress goes to a :class:`TransferProgress`.
Credentials never appear in a log line, an error, a ``repr`` or a file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import platform as host_platform
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, TypeVar

import attrs

from imagedsl._registry_auth import (
    Authorizer,
    Credentials,
    CredentialsError,
    DockerConfig,
    RegistryAuthError,
)
from imagedsl.errors import ImageDSLError
from imagedsl.ledger import atomic_write, fsync_dir
from imagedsl.steps import DEFAULT_REGISTRY, ImageReference, parse_reference

if TYPE_CHECKING:
    from types import TracebackType

    from imagedsl.ledger import Store

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "BlobSource",
    "BlobSourceError",
    "Credentials",
    "CredentialsError",
    "Descriptor",
    "DockerConfig",
    "InsecureRegistryError",
    "LayoutBlobs",
    "Manifest",
    "NoProgress",
    "NotFoundError",
    "Platform",
    "PlatformNotFoundError",
    "PulledImage",
    "PushResult",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryConnectionError",
    "RegistryDigestError",
    "RegistryError",
    "Repository",
    "RetryPolicy",
    "TransferProgress",
]

_log = logging.getLogger(__name__)

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_ACCEPT: Final = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
#: Manifests are small; anything bigger is refused rather than read into memory.
_MAX_MANIFEST: Final = 4 << 20
_IO_CHUNK: Final = 1 << 20
_USER_AGENT: Final = "imagedsl/0.1"
_DOCKER_HUB_API: Final = "registry-1.docker.io"
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})

T = TypeVar("T")


# -- errors ------------------------------------------------------------------------------------


class RegistryError(ImageDSLError):
    """A registry answered an operation with an error (the codes are the spec's error codes)."""

    def __init__(
        self,
        host: str,
        action: str,
        *,
        status: int | None = None,
        codes: Sequence[str] = (),
        detail: str = "",
    ) -> None:
        super().__init__(host, action, status, tuple(codes), detail)
        self.host = host
        self.action = action
        self.status = status
        self.codes = tuple(codes)
        self.detail = detail

    def __str__(self) -> str:
        text = f"registry {self.host}: {self.action} failed"
        if self.status is not None:
            text += f": HTTP {self.status}"
        if self.codes:
            text += " " + ", ".join(self.codes)
        if self.detail:
            text += f" ({self.detail})"
        return text


class NotFoundError(RegistryError):
    """The manifest, tag or blob does not exist in that repository."""


class RegistryConnectionError(RegistryError):
    """The registry could not be reached, or kept failing, after every retry."""

    def __init__(self, host: str, action: str, *, attempts: int, cause: str) -> None:
        super().__init__(host, action, detail=f"{cause}; gave up after {attempts} attempts")
        self.attempts = attempts
        self.cause = cause


class RegistryDigestError(RegistryError):
    """Bytes from (or accepted by) a registry are not those their digest names."""

    def __init__(self, host: str, what: str, expected: str, actual: str) -> None:
        super().__init__(host, f"verifying {what}", detail=f"expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class InsecureRegistryError(RegistryError):
    """Plain HTTP was needed for a registry that is neither loopback nor allowed as insecure."""

    def __init__(self, host: str) -> None:
        super().__init__(
            host, "connecting", detail="refusing plain HTTP; allow it with insecure=True"
        )


class PlatformNotFoundError(RegistryError):
    """An index has no manifest for the platform asked for."""

    def __init__(self, host: str, reference: str, wanted: str, available: Sequence[str]) -> None:
        have = ", ".join(available) or "(none)"
        super().__init__(
            host, f"choosing a platform of {reference}", detail=f"no {wanted}; it has {have}"
        )
        self.reference = reference
        self.wanted = wanted
        self.available = tuple(available)


class BlobSourceError(ImageDSLError):
    """A blob to push is missing from its source, or has the wrong size there."""

    def __init__(self, digest: str, path: str, problem: str) -> None:
        super().__init__(digest, path, problem)
        self.digest = digest
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        return f"cannot push blob {self.digest} from {self.path}: {self.problem}"


class _Transient(Exception):
    """A failure worth retrying: a dropped connection, a timeout, 408, 429 or 5xx."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


# -- values --------------------------------------------------------------------------------------

_ARCHITECTURES: Final = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@attrs.frozen
class Platform:
    """An image platform: ``linux/amd64``, ``linux/arm64/v8``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``OS/ARCH[/VARIANT]``."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"not a platform (OS/ARCH[/VARIANT]): {text!r}")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine (Linux images for any host OS, as Docker does)."""
        machine = host_platform.machine().lower()
        architecture = _ARCHITECTURES.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
        return cls("linux", architecture, variant)

    @classmethod
    def from_json(cls, value: object) -> Platform | None:
        """The ``platform`` object of a descriptor, or None when absent or malformed."""
        if not isinstance(value, dict):
            return None
        os_name, architecture = value.get("os"), value.get("architecture")
        variant = value.get("variant")
        if not isinstance(os_name, str) or not isinstance(architecture, str):
            return None
        return cls(os_name, architecture, variant if isinstance(variant, str) and variant else None)

    def to_json(self) -> dict[str, str]:
        """The descriptor form."""
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def normalized(self) -> Platform:
        """Equal for platforms that name the same thing (``arm64`` is ``arm64/v8``)."""
        default_variant = {"arm64": "v8", "arm": "v7", "amd64": "v1"}.get(self.architecture)
        variant = self.variant or default_variant
        return Platform(self.os.lower(), self.architecture.lower(), variant)

    def matches(self, other: Platform) -> bool:
        """Whether an image for ``other`` is an image for this platform."""
        return self.normalized() == other.normalized()

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@attrs.frozen(kw_only=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or another manifest."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    artifact_type: str | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: object, where: str) -> Descriptor:
        """Parse and check a descriptor (its digest must be sha256: it names a file)."""
        if not isinstance(value, dict):
            raise ValueError(f"{where}: a descriptor is not an object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{where}: a descriptor lacks mediaType or size")
        if not _is_sha256(digest):
            raise ValueError(f"{where}: descriptor digest {digest!r} is not sha256:<hex>")
        assert isinstance(digest, str)
        annotations = value.get("annotations")
        artifact_type = value.get("artifactType")
        urls = value.get("urls")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            platform=Platform.from_json(value.get("platform")),
            annotations=(
                {k: v for k, v in annotations.items() if isinstance(v, str)}
                if isinstance(annotations, dict)
                else {}
            ),
            artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            urls=tuple(u for u in urls if isinstance(u, str)) if isinstance(urls, list) else (),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form (for manifests the caller writes)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.urls:
            out["urls"] = list(self.urls)
        return out


@attrs.frozen(kw_only=True)
class Manifest:
    """A parsed image manifest or index, with the exact bytes its digest is of."""

    media_type: str
    digest: str
    raw: bytes = attrs.field(repr=False, eq=False)
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None

    @property
    def is_index(self) -> bool:
        """An index (or Docker manifest list) points at manifests, not at blobs."""
        return self.media_type in INDEX_TYPES

    @property
    def descriptor(self) -> Descriptor:
        """A descriptor of this manifest."""
        return Descriptor(media_type=self.media_type, digest=self.digest, size=len(self.raw))

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """The blobs an image manifest needs: config first, then layers."""
        return ((self.config,) if self.config is not None else ()) + self.layers

    @classmethod
    def parse(cls, raw: bytes, *, media_type: str | None = None, where: str = "") -> Manifest:
        """Parse manifest bytes; ``media_type`` (a Content-Type) is used when the JSON has none.

        Raises ``ValueError`` for anything that is not an OCI or Docker v2 manifest or index.
        """
        where = where or "manifest"
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{where}: not JSON") from None
        if not isinstance(payload, dict):
            raise ValueError(f"{where}: not a JSON object")
        if payload.get("schemaVersion") != 2:
            raise ValueError(f"{where}: schemaVersion {payload.get('schemaVersion')!r} is not 2")
        declared = payload.get("mediaType")
        kind = declared if isinstance(declared, str) else (media_type or "").split(";")[0].strip()
        if kind not in INDEX_TYPES | MANIFEST_TYPES:
            kind = OCI_INDEX if "manifests" in payload else OCI_MANIFEST
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        subject = payload.get("subject")
        common: dict[str, Any] = {
            "media_type": kind,
            "digest": digest,
            "raw": raw,
            "subject": Descriptor.from_json(subject, where) if subject is not None else None,
        }
        if kind in INDEX_TYPES:
            children = payload.get("manifests")
            if not isinstance(children, list):
                raise ValueError(f"{where}: an index without a manifests list")
            manifests = tuple(Descriptor.from_json(c, where) for c in children)
            return cls(manifests=manifests, **common)
        layers = payload.get("layers")
        if not isinstance(layers, list):
            raise ValueError(f"{where}: a manifest without a layers list")
        return cls(
            config=Descriptor.from_json(payload.get("config"), where),
            layers=tuple(Descriptor.from_json(layer, where) for layer in layers),
            **common,
        )


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
class PulledImage:
    """What :meth:`RegistryClient.pull` put in the store, all of it verified."""

    reference: ImageReference
    #: The index the platform was chosen from, when the reference named one.
    index: Descriptor | None
    manifest: Manifest
    config: Descriptor
    layers: tuple[Descriptor, ...]
    bytes_downloaded: int = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class PushResult:
    """What :meth:`RegistryClient.push` did: the pushed manifest and each blob's outcome."""

    reference: ImageReference
    digest: str
    media_type: str
    size: int
    tags: tuple[str, ...]
    #: Blob digest -> ``pushed``, ``exists`` or ``mounted``.
    blobs: Mapping[str, str] = attrs.field(hash=False)
    bytes_uploaded: int = attrs.field(eq=False)


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


class BlobSource(Protocol):
    """Where pushed blobs are read from: a :class:`~imagedsl.ledger.Store` is one."""

    def blob_path(self, digest: str) -> Path:
        """The file holding blob ``digest``."""
        ...


@attrs.frozen
class LayoutBlobs:
    """The blobs of an OCI image layout directory, as a :class:`BlobSource`."""

    root: Path

    def blob_path(self, digest: str) -> Path:
        """``ROOT/blobs/<algorithm>/<hex>``."""
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "blobs" / algorithm / hexdigest


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


# -- HTTP plumbing ---------------------------------------------------------------------------


@attrs.frozen
class _Url:
    scheme: str
    netloc: str
    target: str

    @classmethod
    def parse(cls, text: str) -> _Url:
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {text!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.netloc, target)

    def join(self, location: str) -> _Url:
        """Resolve a ``Location`` header against this URL."""
        return _Url.parse(urllib.parse.urljoin(str(self), location))

    def with_query(self, **params: str) -> _Url:
        sep = "&" if "?" in self.target else "?"
        return _Url(self.scheme, self.netloc, self.target + sep + urllib.parse.urlencode(params))

    @property
    def path(self) -> str:
        """The target without its query (what log lines show: queries carry upload state)."""
        return self.target.split("?", 1)[0]

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.target}"


@attrs.frozen
class _FilePart:
    """``length`` bytes of ``path`` from ``offset``: a request body sent from the file."""

    path: Path
    offset: int
    length: int
    digest: str


_Body = bytes | _FilePart | None


class _Reply:
    """A response whose body is either read (``body``) or still to stream (``response``)."""

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        response: http.client.HTTPResponse | None = None,
        release: Callable[[bool], None] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.response = response
        self._release = release

    def close(self, reusable: bool = False) -> None:
        """Give the connection back (``reusable`` once the body was read to its end)."""
        if self._release is not None:
            self._release(reusable)
            self._release = None


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_sha256(value: object) -> bool:
    if not isinstance(value, str) or not value.startswith("sha256:") or len(value) != 71:
        return False
    return all(c in "0123456789abcdef" for c in value[7:])


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


def _error_codes(body: bytes) -> tuple[tuple[str, ...], str]:
    """The distribution error body's codes and first message."""
    try:
        errors = json.loads(body).get("errors") or []
        codes = tuple(str(e.get("code")) for e in errors if isinstance(e, dict))
        messages = [str(e.get("message")) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
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


_TRANSIENT_ERRORS: Final = (
    OSError,  # resets, refused connections, broken pipes, timeouts (socket.timeout is one)
    http.client.HTTPException,  # RemoteDisconnected, IncompleteRead, BadStatusLine
)


_STALE_ERRORS: Final = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


# -- the client ----------------------------------------------------------------------------------


class RegistryClient:
    """Talks to registries. Thread safe; one per process is plenty (it pools connections).

    ``credentials`` (host -> :class:`Credentials`) take precedence over ``docker_config``
    (default: Docker's own, read when a registry first asks). ``insecure`` allows plain HTTP
    and unverified TLS for every registry; loopback registries may use plain HTTP anyway.
    ``ssl_context`` verifies TLS (e.g. with a private CA).
    """

    def __init__(
        self,
        *,
        credentials: Mapping[str, Credentials] | None = None,
        docker_config: DockerConfig | None = None,
        insecure: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        workers: int = 4,
        chunk_size: int = 32 << 20,
        progress: TransferProgress | None = None,
    ) -> None:
        self._credentials = dict(credentials or {})
        self._docker_config = docker_config
        self.insecure = insecure
        self._ssl_context = ssl_context
        self._context: ssl.SSLContext | None = None
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.workers = max(1, workers)
        #: Blobs up to this size go in one PUT; larger ones in PATCH chunks of this size.
        self.chunk_size = max(1 << 16, chunk_size)
        self.progress: TransferProgress = progress or NoProgress()
        self._pool = _Pool(timeout, self._context_for)
        self._lock = threading.Lock()
        self._schemes: dict[str, str] = {}
        self._probing: dict[str, threading.Lock] = {}
        self._authorizers: dict[str, Authorizer] = {}

    def __repr__(self) -> str:
        return f"RegistryClient(insecure={self.insecure}, workers={self.workers})"

    def close(self) -> None:
        """Close pooled connections."""
        self._pool.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- manifests ---------------------------------------------------------------------------

    def resolve(self, reference: str | ImageReference) -> Descriptor:
        """The manifest a reference names now (one ``HEAD``): its digest, type and size."""
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        url = self._url(repo, f"/v2/{repo.path}/manifests/{ref.digest or ref.tag}")
        action = f"resolving {ref}"
        reply = self._call(
            "HEAD", url, repo, action, scopes=[repo.scope("pull")], headers={"Accept": _ACCEPT}
        )
        if reply.status == 404:
            raise NotFoundError(repo.host, action, status=404, codes=("MANIFEST_UNKNOWN",))
        self._expect(reply, (200,), repo, action)
        digest = reply.headers.get("docker-content-digest")
        media_type = reply.headers.get("content-type", "").split(";")[0].strip()
        length = reply.headers.get("content-length", "")
        if _is_sha256(digest) and media_type and length.isdigit():
            assert digest is not None
            if ref.digest is not None and digest != ref.digest:
                raise RegistryDigestError(repo.host, f"manifest {ref}", ref.digest, digest)
            return Descriptor(media_type=media_type, digest=digest, size=int(length))
        return self.get_manifest(ref).descriptor  # a registry that does not say: read it

    def get_manifest(
        self, reference: str | ImageReference, *, store: Store | None = None
    ) -> Manifest:
        """Fetch and verify a manifest or index (kept in ``store`` when given)."""
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        manifest = self._fetch_manifest(repo, ref.digest or ref.tag or "latest", str(ref))
        if ref.digest is not None and manifest.digest != ref.digest:
            raise RegistryDigestError(repo.host, f"manifest {ref}", ref.digest, manifest.digest)
        if store is not None:
            _store_bytes(store, manifest.digest, manifest.raw)
        return manifest

    def _fetch_manifest(self, repo: Repository, reference: str, label: str) -> Manifest:
        url = self._url(repo, f"/v2/{repo.path}/manifests/{reference}")
        action = f"fetching manifest {label}"
        reply = self._call(
            "GET", url, repo, action, scopes=[repo.scope("pull")], headers={"Accept": _ACCEPT}
        )
        if reply.status == 404:
            raise NotFoundError(repo.host, action, status=404, codes=("MANIFEST_UNKNOWN",))
        self._expect(reply, (200,), repo, action)
        try:
            manifest = Manifest.parse(
                reply.body, media_type=reply.headers.get("content-type"), where=label
            )
        except ValueError as error:
            raise RegistryError(repo.host, action, detail=str(error)) from None
        announced = reply.headers.get("docker-content-digest")
        if reference.startswith("sha256:") and manifest.digest != reference:
            raise RegistryDigestError(repo.host, f"manifest {label}", reference, manifest.digest)
        if _is_sha256(announced) and announced != manifest.digest:
            assert announced is not None
            raise RegistryDigestError(repo.host, f"manifest {label}", announced, manifest.digest)
        return manifest

    def put_manifest(
        self, reference: str | ImageReference, raw: bytes, media_type: str | None = None
    ) -> str:
        """Upload manifest bytes under the reference's tag (or digest); return the digest."""
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        manifest = Manifest.parse(raw, media_type=media_type, where=str(ref))
        if ref.digest is not None and ref.digest != manifest.digest:
            raise RegistryDigestError(repo.host, f"manifest for {ref}", ref.digest, manifest.digest)
        self._put_manifest(repo, manifest, ref.digest or ref.tag or manifest.digest)
        return manifest.digest

    def _put_manifest(self, repo: Repository, manifest: Manifest, reference: str) -> None:
        url = self._url(repo, f"/v2/{repo.path}/manifests/{reference}")
        action = f"pushing manifest {repo}:{reference}"
        reply = self._call(
            "PUT",
            url,
            repo,
            action,
            scopes=[repo.scope("pull", "push")],
            headers={"Content-Type": manifest.media_type},
            body=manifest.raw,
        )
        self._expect(reply, (200, 201), repo, action)
        stored = reply.headers.get("docker-content-digest")
        if stored and stored != manifest.digest:
            raise RegistryDigestError(
                repo.host, f"manifest {repo}:{reference}", manifest.digest, stored
            )

    def manifest_exists(self, repository: Repository, digest: str) -> bool:
        """Whether the repository has the manifest ``digest`` (one ``HEAD``)."""
        action = f"checking manifest {repository}@{digest}"
        return self._exists(repository, "manifests", digest, action, headers={"Accept": _ACCEPT})

    # -- pull ----------------------------------------------------------------------------------

    def pull(
        self,
        reference: str | ImageReference,
        store: Store,
        *,
        platform: Platform | None = None,
    ) -> PulledImage:
        """Bring one image into ``store``: its manifest, config and layers, verified.

        When the reference names an index, the manifest for ``platform`` (default: this
        machine's) is chosen. Blobs already in the store are not fetched again.
        """
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        top = self.get_manifest(ref, store=store)
        index: Descriptor | None = None
        manifest = top
        if top.is_index:
            wanted = platform or Platform.host()
            chosen = _choose_platform(top, wanted)
            if chosen is None:
                available = [str(d.platform) for d in top.manifests if d.platform is not None]
                raise PlatformNotFoundError(repo.host, str(ref), str(wanted), available)
            index = top.descriptor
            manifest = self._fetch_manifest(repo, chosen.digest, f"{repo}@{chosen.digest}")
            if manifest.is_index:
                raise RegistryError(repo.host, f"pulling {ref}", detail="an index inside an index")
            _store_bytes(store, manifest.digest, manifest.raw)
        if manifest.config is None:
            raise RegistryError(repo.host, f"pulling {ref}", detail="a manifest without config")
        downloaded = self.fetch_blobs(repo, manifest.blobs, store)
        pinned = ImageReference(transport="registry", name=ref.name, tag=ref.tag, digest=top.digest)
        return PulledImage(
            reference=pinned,
            index=index,
            manifest=manifest,
            config=manifest.config,
            layers=manifest.layers,
            bytes_downloaded=downloaded,
        )

    def pull_all(self, reference: str | ImageReference, store: Store) -> Manifest:
        """Bring a manifest or index into ``store`` with everything it reaches (all platforms)."""
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        top = self.get_manifest(ref, store=store)
        blobs: dict[str, Descriptor] = {}
        pending = [top]
        while pending:
            manifest = pending.pop()
            for blob in manifest.blobs:
                blobs.setdefault(blob.digest, blob)
            for child in manifest.manifests:
                if child.media_type in INDEX_TYPES | MANIFEST_TYPES:
                    fetched = self._fetch_manifest(repo, child.digest, f"{repo}@{child.digest}")
                    _store_bytes(store, fetched.digest, fetched.raw)
                    pending.append(fetched)
                else:
                    blobs.setdefault(child.digest, child)
        self.fetch_blobs(repo, list(blobs.values()), store)
        return top

    def fetch_blobs(self, repository: Repository, blobs: Iterable[Descriptor], store: Store) -> int:
        """Fetch blobs into ``store`` in parallel; return the bytes downloaded."""
        unique = {blob.digest: blob for blob in blobs}
        sizes = self._parallel(
            lambda blob: self.fetch_blob(repository, blob, store), list(unique.values())
        )
        return sum(sizes)

    def fetch_blob(self, repository: Repository, blob: Descriptor, store: Store) -> int:
        """Fetch one blob into ``store``, resuming a partial download; return bytes fetched."""
        final = store.blob_path(blob.digest)
        if _has_file(final, blob.size):
            self.progress.transfer_finished(blob.digest, "present")
            return 0
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".partial.{final.name}")
        with open(partial, "a+b") as handle:
            # The lock makes concurrent pulls of one blob (threads or processes) take turns;
            # whoever comes second finds the blob in place.
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            if _has_file(final, blob.size):
                _unlink_if_empty(partial)
                self.progress.transfer_finished(blob.digest, "present")
                return 0
            self.progress.transfer_started(blob.digest, blob.size, "pull")
            download = _Download(handle, blob)
            action = f"fetching blob {repository}@{blob.digest}"
            attempt = functools.partial(self._fetch_attempt, repository, download, action)
            self._retrying(repository.host, action, attempt)
            actual = "sha256:" + download.hasher.hexdigest()
            if download.have != blob.size or actual != blob.digest:
                handle.truncate(0)
                got = actual if actual != blob.digest else f"{download.have} bytes"
                raise RegistryDigestError(
                    repository.host, f"blob {repository}@{blob.digest}", blob.digest, got
                )
            handle.flush()
            os.fsync(handle.fileno())
            os.chmod(partial, 0o444)
            os.replace(partial, final)
            fsync_dir(final.parent)
        self.progress.transfer_finished(blob.digest, "pulled")
        return download.fetched

    def _fetch_attempt(self, repo: Repository, download: _Download, action: str) -> None:
        blob = download.blob
        download.rewind()
        if download.have >= blob.size:
            return
        headers = {"Range": f"bytes={download.have}-"} if download.have else {}
        url = self._url(repo, f"/v2/{repo.path}/blobs/{blob.digest}")
        reply = self._call_once(
            "GET", url, repo, action, scopes=[repo.scope("pull")], headers=headers, stream=True
        )
        try:
            if reply.status == 404:
                raise NotFoundError(repo.host, action, status=404, codes=("BLOB_UNKNOWN",))
            if reply.status == 416 or (reply.status == 200 and download.have):
                download.restart()  # the registry will not resume: take it from the start
                if reply.status == 416:
                    raise _Transient("the registry refused the range; starting over")
            elif reply.status == 206:
                start = reply.headers.get("content-range", "").removeprefix("bytes ")
                if not start.startswith(f"{download.have}-"):
                    download.restart()
                    raise _Transient("the registry answered another range; starting over")
            elif reply.status != 200:
                reply.body = reply.response.read(_MAX_MANIFEST) if reply.response else b""
                self._expect(reply, (200,), repo, action)
            assert reply.response is not None
            download.stream_from(reply.response, self.progress)
            reply.close(reusable=True)
        finally:
            reply.close()

    # -- push ------------------------------------------------------------------------------------

    def push(
        self,
        source: BlobSource,
        manifest: str | Descriptor,
        reference: str | ImageReference,
        *,
        tags: Sequence[str] = (),
        mount_from: Sequence[str] = (),
    ) -> PushResult:
        """Push a manifest (or index) and everything it reaches from ``source``.

        ``manifest`` is the digest (or descriptor) of the manifest bytes in ``source``. The
        top manifest is put under ``tags`` (default: the reference's tag, else by digest).
        ``mount_from`` names other repositories of the same registry to mount blobs from.
        """
        ref = _registry_reference(reference)
        repo = Repository.of(ref)
        digest = manifest.digest if isinstance(manifest, Descriptor) else manifest
        hint = manifest.media_type if isinstance(manifest, Descriptor) else None
        top = _read_manifest(source, digest, hint)
        if ref.digest is not None and ref.digest != top.digest:
            raise RegistryDigestError(repo.host, f"manifest for {ref}", ref.digest, top.digest)
        children: list[Manifest] = []  # child manifests, each before the index that lists it
        blobs: dict[str, Descriptor] = {}

        def walk(node: Manifest) -> None:
            for blob in node.blobs:
                blobs.setdefault(blob.digest, blob)
            for child in node.manifests:
                if child.media_type in INDEX_TYPES | MANIFEST_TYPES:
                    loaded = _read_manifest(source, child.digest, child.media_type)
                    walk(loaded)
                    children.append(loaded)
                else:
                    blobs.setdefault(child.digest, child)

        walk(top)
        outcomes = self._parallel(
            lambda blob: self.push_blob(repo, blob, source, mount_from=mount_from),
            list(blobs.values()),
        )
        pushed_bytes = sum(size for _outcome, size in outcomes)
        for child in children:
            if not self.manifest_exists(repo, child.digest):
                self._put_manifest(repo, child, child.digest)
        names = tuple(tags) or ((ref.tag,) if ref.tag else ())
        for name in names or (top.digest,):
            self._put_manifest(repo, top, name)
        pinned = ImageReference(
            transport="registry", name=ref.name, tag=names[0] if names else None, digest=top.digest
        )
        return PushResult(
            reference=pinned,
            digest=top.digest,
            media_type=top.media_type,
            size=len(top.raw),
            tags=names,
            blobs={d: outcome for d, (outcome, _size) in zip(blobs, outcomes, strict=True)},
            bytes_uploaded=pushed_bytes,
        )

    def blob_exists(self, repository: Repository, digest: str) -> bool:
        """Whether the repository has blob ``digest`` (one ``HEAD``)."""
        return self._exists(repository, "blobs", digest, f"checking blob {repository}@{digest}")

    def _exists(
        self,
        repository: Repository,
        kind: str,
        digest: str,
        action: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """One ``HEAD`` on ``/v2/<repo>/<kind>/<digest>``: 200 is yes, 404 is no."""
        url = self._url(repository, f"/v2/{repository.path}/{kind}/{digest}")
        scopes = [repository.scope("pull")]
        reply = self._call("HEAD", url, repository, action, scopes=scopes, headers=headers)
        if reply.status == 404:
            return False
        self._expect(reply, (200,), repository, action)
        return True

    def push_blob(
        self,
        repository: Repository,
        blob: Descriptor,
        source: BlobSource,
        *,
        mount_from: Sequence[str] = (),
    ) -> tuple[str, int]:
        """Make sure the repository has ``blob``; return (outcome, bytes uploaded).

        The outcome is ``exists`` (nothing sent), ``mounted`` (from a ``mount_from``
        repository) or ``pushed``. A failed chunked upload continues from the offset the
        registry reports; when the registry lost the upload it starts over.
        """
        path = source.blob_path(blob.digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BlobSourceError(blob.digest, str(path), "it does not exist") from None
        if size != blob.size:
            raise BlobSourceError(blob.digest, str(path), f"{size} bytes, not {blob.size}")
        scopes = [repository.scope("pull", "push")]
        scopes += [Repository(repository.host, name).scope("pull") for name in mount_from]
        upload = _Upload(blob=blob, path=path, scopes=tuple(scopes), mount_from=tuple(mount_from))
        action = f"pushing blob {repository}@{blob.digest}"
        self.progress.transfer_started(blob.digest, blob.size, "push")
        outcome = self._retrying(
            repository.host, action, lambda: self._upload_attempt(repository, upload, action)
        )
        self.progress.transfer_finished(blob.digest, outcome)
        return outcome, upload.sent

    def _upload_attempt(self, repo: Repository, upload: _Upload, action: str) -> str:
        blob = upload.blob
        if upload.location is not None and not self._resume_upload(repo, upload, action):
            upload.location = None
        if upload.location is None:
            if self._blob_exists_once(repo, blob.digest, upload.scopes, action):
                return "exists"
            if self._start_upload(repo, upload, action):
                return "mounted"
        assert upload.location is not None
        if blob.size <= self.chunk_size and upload.offset == 0:
            body = _FilePart(upload.path, 0, blob.size, blob.digest)
            target = upload.location.with_query(digest=blob.digest)
            # A failed monolithic PUT may have left part of the body in the upload: it is not
            # resumed, the next attempt starts over.
            upload.location = None
            reply = self._call_once(
                "PUT", target, repo, action, scopes=upload.scopes, body=body,
                headers={"Content-Type": "application/octet-stream"},
            )  # fmt: skip
            self._expect_upload(reply, (201, 204), repo, upload, action)
            upload.sent += blob.size
        else:
            while upload.offset < blob.size:
                end = min(upload.offset + self.chunk_size, blob.size)
                part = _FilePart(upload.path, upload.offset, end - upload.offset, blob.digest)
                reply = self._call_once(
                    "PATCH", upload.location, repo, action, scopes=upload.scopes, body=part,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{upload.offset}-{end - 1}",
                    },
                )  # fmt: skip
                self._expect_upload(reply, (202,), repo, upload, action)
                upload.location = upload.location.join(reply.headers.get("location", ""))
                upload.sent += end - upload.offset
                upload.offset = end
            target = upload.location.with_query(digest=blob.digest)
            reply = self._call_once("PUT", target, repo, action, scopes=upload.scopes)
            self._expect_upload(reply, (201, 204), repo, upload, action)
            upload.location = None
        stored = reply.headers.get("docker-content-digest")
        if stored and stored != blob.digest:
            raise RegistryDigestError(repo.host, f"blob {repo}@{blob.digest}", blob.digest, stored)
        return "pushed"

    def _blob_exists_once(
        self, repo: Repository, digest: str, scopes: Sequence[str], action: str
    ) -> bool:
        url = self._url(repo, f"/v2/{repo.path}/blobs/{digest}")
        reply = self._call_once("HEAD", url, repo, action, scopes=scopes)
        if reply.status == 404:
            return False
        self._expect(reply, (200,), repo, action)
        return True

    def _expect_upload(
        self,
        reply: _Reply,
        statuses: Collection[int],
        repo: Repository,
        upload: _Upload,
        action: str,
    ) -> None:
        """Like :meth:`_expect`, but an upload the registry lost is started again."""
        if reply.status not in statuses and reply.status == 404:
            codes, _message = _error_codes(reply.body)
            if any(code.startswith("BLOB_UPLOAD_") for code in codes):
                upload.location = None
                raise _Transient(f"the registry lost the upload ({', '.join(codes)})")
        self._expect(reply, statuses, repo, action)

    def _start_upload(self, repo: Repository, upload: _Upload, action: str) -> bool:
        """POST a new upload (trying mounts first); True when a mount made the blob."""
        base = self._url(repo, f"/v2/{repo.path}/blobs/uploads/")
        mounts = [
            base.with_query(mount=upload.blob.digest, **{"from": m}) for m in upload.mount_from
        ]
        for url in [*mounts, base]:
            reply = self._call_once("POST", url, repo, action, scopes=upload.scopes)
            if reply.status == 201 and url is not base:
                return True
            self._expect(reply, (202,), repo, action)
            location = reply.headers.get("location")
            if not location:  # registries always send one: the answer's head was cut
                raise _Transient(f"POST {url.path}: an upload without a Location")
            upload.location = url.join(location)
            upload.offset = 0
            return False  # a refused mount answers 202 with an upload to use instead
        raise AssertionError("unreachable")

    def _resume_upload(self, repo: Repository, upload: _Upload, action: str) -> bool:
        """Ask where an interrupted upload stands; False when the registry lost it."""
        assert upload.location is not None
        reply = self._call_once("GET", upload.location, repo, action, scopes=upload.scopes)
        if reply.status in (400, 404, 416):
            return False  # unknown or invalid now (2.x cancels uploads at a wrong offset)
        self._expect(reply, (204,), repo, action)
        stated = reply.headers.get("range", "")
        low, _, high = stated.removeprefix("bytes=").partition("-")
        offset = int(high) + 1 if low.isdigit() and high.isdigit() else 0
        if stated in ("0-0", "bytes=0-0") and upload.offset == 0:
            offset = 0  # distribution writes "0-0" for an empty upload too
        if offset > upload.blob.size:
            return False
        upload.location = upload.location.join(reply.headers.get("location", ""))
        upload.offset = offset
        _log.info("resuming upload of %s at %d bytes", upload.blob.digest, offset)
        return True

    # -- transport --------------------------------------------------------------------------------

    def _url(self, repo: Repository, path: str) -> _Url:
        return _Url(self._scheme(repo), repo.api_host, path)

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
        return self.insecure or _is_loopback(netloc)

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
        if _is_loopback(host):
            try:
                plain = self._ping(_Url("http", host, "/v2/"), repo)
            except _Transient:
                plain = None
            if plain is not None and plain.status != 400:
                return self._probed("http", plain, repo)
        for scheme in ("https", "http"):
            if scheme == "http" and not self._http_allowed(host):
                raise InsecureRegistryError(host)
            url = _Url(scheme, host, "/v2/")
            try:
                reply = self._retrying(host, "connecting", functools.partial(self._ping, url, repo))
            except _PlainHTTP:
                continue
            return self._probed(scheme, reply, repo)
        raise AssertionError("unreachable")

    def _probed(self, scheme: str, reply: _Reply, repo: Repository) -> str:
        if reply.status == 401:
            self._authorizer(repo).challenged(reply.headers.get("www-authenticate"), (), None)
        return scheme

    def _ping(self, url: _Url, repo: Repository) -> _Reply:
        try:
            return self._call_once("GET", url, repo, "connecting", scopes=(), authorize=False)
        except _Transient as failure:
            if isinstance(failure.__cause__, ssl.SSLError) and not isinstance(
                failure.__cause__, ssl.SSLCertVerificationError | ssl.SSLEOFError
            ):
                raise _PlainHTTP from None  # a plain-HTTP server answered the TLS hello
            raise

    def _authorizer(self, repo: Repository) -> Authorizer:
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
        target = _Url.parse(url)
        if target.scheme == "http" and not self._http_allowed(target.netloc):
            raise InsecureRegistryError(target.netloc)
        reply = self._retrying(
            target.netloc,
            "fetching a token",
            lambda: self._exchange(method, target, dict(headers), body, stream=False),
        )
        return reply.status, reply.headers, reply.body

    def _retrying(self, host: str, action: str, attempt: Callable[[], T]) -> T:
        for number in range(1, self.retry.attempts + 1):
            try:
                return attempt()
            except _Transient as failure:
                if number == self.retry.attempts:
                    raise RegistryConnectionError(
                        host, action, attempts=number, cause=failure.cause
                    ) from None
                pause = self.retry.delay(number, failure.retry_after)
                _log.info("%s: %s; retry %d in %.2fs", action, failure.cause, number, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _call(
        self,
        method: str,
        url: _Url,
        repo: Repository,
        action: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: _Body = None,
    ) -> _Reply:
        """One request with its body read, retried on transient failures."""
        return self._retrying(
            repo.host,
            action,
            lambda: self._call_once(
                method, url, repo, action, scopes=scopes, headers=headers, body=body
            ),
        )

    def _call_once(
        self,
        method: str,
        url: _Url,
        repo: Repository,
        action: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: _Body = None,
        stream: bool = False,
        authorize: bool = True,
    ) -> _Reply:
        """One request, authorized (a 401 is answered once), redirects followed.

        Raises :class:`_Transient` for what is worth retrying (a dropped connection, a
        retryable status), :class:`RegistryAuthError` when refused.
        """
        authorizer = self._authorizer(repo) if authorize else None
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
                raise _Transient(f"{method} {target.path} answered {reply.status}", after)
            return reply
        raise RegistryError(repo.host, action, detail="too many redirects")

    def _exchange(
        self, method: str, url: _Url, headers: dict[str, str], body: _Body, *, stream: bool
    ) -> _Reply:
        """Send one request on a pooled connection. Connection failures become _Transient."""
        headers.setdefault("User-Agent", _USER_AGENT)
        for _stale in range(2):
            conn, reused = self._pool.acquire(url.scheme, url.netloc)
            try:
                response = self._send_request(conn, method, url, headers, body)
                data = response.read() if method == "HEAD" or not stream else b""
            except ssl.SSLCertVerificationError as error:
                conn.close()
                raise RegistryError(
                    url.netloc,
                    "connecting",
                    detail=f"TLS verification failed: {error.verify_message}",
                ) from None
            except _TRANSIENT_ERRORS as error:
                conn.close()
                if reused and method in ("GET", "HEAD") and isinstance(error, _STALE_ERRORS):
                    continue  # an idle keep-alive connection the server had closed
                raise _Transient(f"{method} {url.path}: {type(error).__name__}: {error}") from error
            except BaseException:
                conn.close()
                raise
            if isinstance(response, _CheckedResponse) and response.head_cut:
                conn.close()
                raise _Transient(f"{method} {url.path}: the response was cut short")
            reply_headers = {k.lower(): v for k, v in response.getheaders()}
            if method == "HEAD" or not stream:
                if response.will_close:
                    conn.close()
                else:
                    self._pool.release(url.scheme, url.netloc, conn)
                return _Reply(response.status, reply_headers, data)

            def release(
                reusable: bool,
                conn: http.client.HTTPConnection = conn,
                response: http.client.HTTPResponse = response,
            ) -> None:
                if reusable and not response.will_close and response.isclosed():
                    self._pool.release(url.scheme, url.netloc, conn)
                else:
                    conn.close()

            return _Reply(response.status, reply_headers, b"", response, release)
        raise _Transient(f"{method} {url.path}: the connection kept closing")

    def _send_request(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        url: _Url,
        headers: Mapping[str, str],
        body: _Body,
    ) -> http.client.HTTPResponse:
        conn.putrequest(method, url.target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if isinstance(body, bytes):
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        elif isinstance(body, _FilePart):
            conn.putheader("Content-Length", str(body.length))
            conn.endheaders()
            self._send_file(conn, body)
        else:
            if method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", "0")
            conn.endheaders()
        return conn.getresponse()

    def _send_file(self, conn: http.client.HTTPConnection, part: _FilePart) -> None:
        sock = conn.sock
        assert sock is not None
        sent = 0
        with part.path.open("rb") as handle:
            if isinstance(sock, ssl.SSLSocket):
                handle.seek(part.offset)
                buffer = bytearray(_IO_CHUNK)
                view = memoryview(buffer)
                while sent < part.length:
                    n = handle.readinto(view[: min(_IO_CHUNK, part.length - sent)])
                    if not n:
                        raise _Transient(f"{part.path} shrank while being sent")
                    sock.sendall(view[:n])
                    sent += n
                    self.progress.transfer_advanced(part.digest, part.offset + sent)
            else:
                step = 8 * _IO_CHUNK
                while sent < part.length:
                    count = min(step, part.length - sent)
                    n = sock.sendfile(handle, part.offset + sent, count)
                    if not n:
                        raise _Transient(f"{part.path} shrank while being sent")
                    sent += n
                    self.progress.transfer_advanced(part.digest, part.offset + sent)

    def _parallel(self, work: Callable[[Descriptor], T], items: Sequence[Descriptor]) -> list[T]:
        """Run ``work`` over ``items`` in the thread pool; the first failure is raised."""
        if len(items) <= 1 or self.workers == 1:
            return [work(item) for item in items]
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.workers, len(items)), thread_name_prefix="imagedsl-registry"
        ) as pool:
            futures = [pool.submit(work, item) for item in items]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _expect(
        self, reply: _Reply, statuses: Collection[int], repo: Repository, action: str
    ) -> None:
        if reply.status in statuses:
            return
        codes, message = _error_codes(reply.body)
        error_type = NotFoundError if reply.status == 404 else RegistryError
        raise error_type(repo.host, action, status=reply.status, codes=codes, detail=message)


class _PlainHTTP(Exception):
    """The registry answered a TLS hello with plain HTTP."""


@attrs.define
class _Upload:
    """The state of one blob upload across attempts."""

    blob: Descriptor
    path: Path
    scopes: tuple[str, ...]
    mount_from: tuple[str, ...]
    location: _Url | None = None
    offset: int = 0
    sent: int = 0


class _Download:
    """A blob streaming into its partial file, hashed as it goes, resumable."""

    def __init__(self, handle: IO[bytes], blob: Descriptor) -> None:
        self.handle = handle
        self.blob = blob
        self.hasher = hashlib.sha256()
        handle.seek(0)
        self.have = 0
        while chunk := handle.read(_IO_CHUNK):  # what an earlier, interrupted pull left
            self.hasher.update(chunk)
            self.have += len(chunk)
        self.fetched = 0
        if self.have > blob.size:
            self.restart()

    def rewind(self) -> None:
        """Drop anything past what was hashed (a write torn by an interruption)."""
        self.handle.seek(self.have)
        self.handle.truncate()

    def restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.hasher = hashlib.sha256()
        self.have = 0

    def stream_from(self, response: http.client.HTTPResponse, progress: TransferProgress) -> None:
        buffer = bytearray(_IO_CHUNK)
        view = memoryview(buffer)
        try:
            while self.have < self.blob.size:
                n = response.readinto(view[: min(_IO_CHUNK, self.blob.size - self.have)])
                if not n:
                    raise _Transient(f"blob {self.blob.digest}: the download ended early")
                self.handle.write(view[:n])
                self.hasher.update(view[:n])
                self.have += n
                self.fetched += n
                progress.transfer_advanced(self.blob.digest, self.have)
        except _TRANSIENT_ERRORS as error:
            raise _Transient(f"blob {self.blob.digest}: {type(error).__name__}: {error}") from error
        finally:
            self.handle.flush()
        if response.read(1):
            raise _Transient(f"blob {self.blob.digest}: more bytes than its size")


def _registry_reference(reference: str | ImageReference) -> ImageReference:
    ref = parse_reference(reference, step="registry") if isinstance(reference, str) else reference
    if ref.transport != "registry":
        raise ValueError(f"not a registry reference: {ref}")
    return ref


def _choose_platform(index: Manifest, wanted: Platform) -> Descriptor | None:
    for child in index.manifests:
        if child.platform is not None and wanted.matches(child.platform):
            return child
    return None


def _read_manifest(source: BlobSource, digest: str, media_type: str | None) -> Manifest:
    path = source.blob_path(digest)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BlobSourceError(digest, str(path), "the manifest does not exist") from None
    try:
        manifest = Manifest.parse(raw, media_type=media_type, where=str(path))
    except ValueError as error:
        raise BlobSourceError(digest, str(path), str(error)) from None
    if manifest.digest != digest:
        raise BlobSourceError(digest, str(path), f"its bytes hash to {manifest.digest}")
    return manifest


def _has_file(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _unlink_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            path.unlink()


def _store_bytes(store: Store, digest: str, data: bytes) -> None:
    """Put verified small bytes (a manifest) into the store's blobs, atomically."""
    final = store.blob_path(digest)
    if not _has_file(final, len(data)):
        atomic_write(final, data, mode=0o444)

"""Real servers for the registry client tests: registries with TLS and auth, a token server,
a fault-injecting proxy, and images written into a store by hand (not by the code under test).

- :func:`start_custom_registry` runs Debian's ``docker-registry`` with any ``auth``/``tls``
  configuration on a free loopback port.
- :func:`make_ca` / :func:`make_server_cert` make a CA and a server certificate with the
  ``openssl`` command; :func:`write_htpasswd` uses ``htpasswd -B`` (Debian's apache2-utils).
- :class:`TokenServer` answers the distribution token protocol with RS256 JWTs, signed with
  ``openssl dgst`` and carrying the signing certificate in ``x5c`` (what registry 2.x checks
  against its ``rootcertbundle``).
- :class:`FaultProxy` sits between client and registry, reads each request's head, and
  answers 500/429, drops the connection mid-request or mid-response, at random or on cue.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import attrs

from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from imagedsl.oci.platform import Platform
from imagedsl.store import Store, StoreArea
from tests.support.docker import RegistryUnavailable, find_registry_binary

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def sha256(data: bytes) -> str:
    """``sha256:<hex>`` of bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- images written by hand ----------------------------------------------------------------


def put_blob(store: Store, data: bytes, media_type: str) -> Descriptor:
    """Write bytes into the store's blob directory; return their descriptor."""
    digest = sha256(data)
    path = store.blob_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".test.{path.name}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return Descriptor(media_type=media_type, digest=digest, size=len(data))


def layer_bytes(files: Mapping[str, bytes]) -> tuple[bytes, str]:
    """A gzipped tar of ``files`` (fixed metadata) and its diff id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            info.mtime = 1
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256(tar_bytes)


def make_image(
    store: Store,
    layers: Sequence[Mapping[str, bytes]],
    *,
    platform: Platform | None = None,
    cmd: Sequence[str] = ("/bin/sh",),
) -> Descriptor:
    """An OCI image (config, gzip layers, manifest) in the store; the manifest descriptor."""
    platform = platform or Platform("linux", "amd64")
    layer_descriptors, diff_ids = [], []
    for files in layers:
        blob, diff_id = layer_bytes(files)
        layer_descriptors.append(put_blob(store, blob, LAYER))
        diff_ids.append(diff_id)
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if platform.variant:
        config["variant"] = platform.variant
    config_descriptor = put_blob(store, json.dumps(config, sort_keys=True).encode(), CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.to_json(),
        "layers": [d.to_json() for d in layer_descriptors],
    }
    return put_blob(store, json.dumps(manifest, indent=2).encode(), OCI_MANIFEST)


def make_index(store: Store, manifests: Mapping[Platform, Descriptor]) -> Descriptor:
    """An OCI index of per-platform manifests, in the store."""
    entries = [
        attrs.evolve(descriptor, platform=platform).to_json()
        for platform, descriptor in manifests.items()
    ]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return put_blob(store, json.dumps(index, indent=2).encode(), OCI_INDEX)


def random_bytes(size: int, seed: int) -> bytes:
    """Incompressible, reproducible bytes."""
    return random.Random(seed).randbytes(size)


def corrupt_blobs(store: Store) -> list[str]:
    """Names of committed store blobs whose bytes do not hash to their name."""
    root = store.area(StoreArea.BLOBS)
    bad = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith("."):
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
            bad.append(path.name)
    return bad


# --- certificates and passwords ------------------------------------------------------------


@attrs.frozen
class Certificate:
    """A PEM certificate and its key."""

    cert: Path
    key: Path

    def der_base64(self) -> str:
        """The certificate as base64 DER (a JWT header's ``x5c`` entry)."""
        pem = self.cert.read_text()
        body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        return "".join(body.split())


def _openssl(*argv: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RegistryUnavailable("the openssl command is needed for the TLS tests")
    subprocess.run([openssl, *argv], check=True, capture_output=True)


def make_ca(directory: Path) -> Certificate:
    """A self-signed CA (RSA 2048, one day)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "ca.key", directory / "ca.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
        "-days", "1", "-subj", "/CN=imagedsl test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    return Certificate(cert, key)


def make_server_cert(directory: Path, ca: Certificate, host: str = "127.0.0.1") -> Certificate:
    """A server certificate for ``host`` (an IP SAN), signed by ``ca``."""
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text(
        f"subjectAltName=IP:{host},DNS:localhost\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", f"/CN={host}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext),
    )  # fmt: skip
    return Certificate(cert, key)


def write_htpasswd(path: Path, users: Mapping[str, str]) -> None:
    """An htpasswd file with bcrypt hashes (the only kind the registry accepts)."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RegistryUnavailable("htpasswd is needed for Basic auth tests (apache2-utils)")
    lines = []
    for user, password in users.items():
        done = subprocess.run(
            [htpasswd, "-nbB", "-C", "4", user, password],
            check=True,
            capture_output=True,
            text=True,
        )
        lines.append(done.stdout.strip())
    path.write_text("\n".join(lines) + "\n")


# --- registries with any configuration ------------------------------------------------------


@attrs.define
class CustomRegistry:
    """A ``docker-registry serve`` with a configuration of the test's choosing."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    tls: bool
    _log: IO[bytes] = attrs.field(repr=False)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        """The registry's storage root."""
        return self.workdir / "storage"

    def log_text(self) -> str:
        """What the registry logged so far."""
        self._log.flush()
        return (self.workdir / "registry.log").read_text(errors="replace")

    def blob_data(self, digest: str) -> Path:
        """Where the registry's filesystem driver keeps a blob's bytes."""
        hexdigest = digest.removeprefix("sha256:")
        v2 = self.storage / "docker" / "registry" / "v2"
        return v2 / "blobs" / "sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        """Stop it and wait (kill after 10 s)."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            self._log.close()


def start_custom_registry(
    workdir: Path,
    *,
    auth: Mapping[str, Any] | None = None,
    tls: Certificate | None = None,
    timeout: float = 20.0,
) -> CustomRegistry:
    """Start a registry with ``auth`` (the config's ``auth`` section) and optional TLS."""
    binary = find_registry_binary()
    if binary is None:
        raise RegistryUnavailable("looked for docker-registry on PATH and in /usr/bin")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "storage").mkdir(exist_ok=True)
    port = free_port()
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": "imagedsl-test-registry"}
    if tls is not None:
        http["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(workdir / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if auth is not None:
        config["auth"] = dict(auth)
    (workdir / "config.yml").write_text(json.dumps(config, indent=2))
    log = (workdir / "registry.log").open("ab")
    process = subprocess.Popen(
        [binary, "serve", str(workdir / "config.yml")],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = CustomRegistry(process, port, workdir, tls is not None, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return server
        time.sleep(0.05)
    text = server.log_text()
    server.stop()
    raise RuntimeError(f"docker-registry did not start on port {port}:\n{text[-3000:]}")


def ssl_context_for(ca: Certificate) -> ssl.SSLContext:
    """A client context trusting only the test CA."""
    return ssl.create_default_context(cafile=str(ca.cert))


# --- a token server ---------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The distribution token protocol: ``GET /token?service=&scope=`` with optional Basic auth.

    Known users get every action they ask for; anonymous callers get ``pull`` only. Tokens
    are RS256 JWTs that registry 2.x accepts: ``iss``/``aud`` as configured, ``x5c`` holding
    the signing certificate, which is the registry's ``rootcertbundle``.
    """

    issuer = "imagedsl-test-issuer"
    service = "imagedsl-test-registry"

    def __init__(self, signer: Certificate, users: Mapping[str, str], *, expires_in: int = 300):
        self.signer = signer
        self.users = dict(users)
        self.expires_in = expires_in
        #: Tokens to spoil (wrong audience) before good ones are given: tests refresh on 401.
        self.spoil_next = 0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        """The realm URL for the registry's configuration."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def registry_auth(self) -> dict[str, Any]:
        """The registry's ``auth`` section for this server."""
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.signer.cert),
            }
        }

    def stop(self) -> None:
        """Shut the server down."""
        self._server.shutdown()
        self._server.server_close()

    def _user(self, header: str | None) -> str | bool | None:
        """The authenticated user, None for anonymous, False for wrong credentials."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user if self.users.get(user) == password else False

    def issue(self, user: str | None, scopes: Sequence[str]) -> str:
        """A signed token granting ``scopes`` (pull only for anonymous callers)."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a and (user is not None or a == "pull")]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        with self._lock:
            spoil = self.spoil_next > 0
            self.spoil_next -= 1 if spoil else 0
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": "someone-else" if spoil else self.service,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": _b64url(os.urandom(12)),
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.signer.der_base64()]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.signer.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                del format, args  # quiet

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                user = server._user(self.headers.get("Authorization"))
                scopes = query.get("scope", [])
                with server._lock:
                    server.requests.append(
                        {"user": user, "scopes": scopes, "service": query.get("service")}
                    )
                if url.path != "/token" or user is False:
                    self.send_response(401 if user is False else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                assert user is not True
                token = server.issue(user, scopes)
                body = json.dumps(
                    {"token": token, "access_token": token, "expires_in": server.expires_in}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


# --- a fault-injecting proxy ------------------------------------------------------------------

#: What the proxy does to one request: pass it, answer 500 or 429, or cut the connection
#: while the request body is sent or while the response comes back.
Fate = str  # "pass" | "500" | "429" | "drop-request" | "drop-response" | "stall"


@attrs.define
class FaultProxy:
    """An HTTP/1.1-aware TCP proxy on 127.0.0.1 that misbehaves.

    Each request's head is read and ``decide(method, target, number)`` (or, by default, the
    random rates) picks its fate. Requests are relayed one at a time per connection, which is
    how HTTP/1.1 clients without pipelining use a connection.
    """

    upstream: int
    error_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0
    decide: Callable[[str, str, int], Fate] | None = None
    port: int = 0
    faults: dict[str, int] = attrs.field(factory=dict)
    log: list[tuple[str, str, Fate]] = attrs.field(factory=list)
    _rng: random.Random = attrs.field(init=False)
    _listener: socket.socket = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _count: int = 0
    _stopped: bool = False

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` of the proxy."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop accepting connections."""
        self._stopped = True
        self._listener.close()

    def _fate(self, method: str, target: str) -> Fate:
        with self._lock:
            self._count += 1
            number = self._count
            if self.decide is not None:
                fate = self.decide(method, target, number)
            else:
                roll = self._rng.random()
                if roll < self.error_rate:
                    fate = "500"
                elif roll < self.error_rate + self.drop_rate:
                    fate = self._rng.choice(["drop-request", "drop-response"])
                else:
                    fate = "pass"
            self.log.append((method, target, fate))
            if fate != "pass":
                self.faults[fate] = self.faults.get(fate, 0) + 1
            return fate

    def _cut_at(self, length: int) -> int:
        with self._lock:
            return self._rng.randint(0, max(0, length))

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        reader = client.makefile("rb")
        up_reader = upstream.makefile("rb")
        try:
            while self._relay_one(client, reader, upstream, up_reader):
                pass
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _relay_one(
        self,
        client: socket.socket,
        reader: io.BufferedReader,
        upstream: socket.socket,
        up: IO[bytes],
    ) -> bool:
        if reader.peek(1)[:1] == b"\x16":  # a TLS hello: answer as a plain HTTP server does
            client.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            return False
        head = _read_head(reader)
        if head is None:
            return False
        method, target = head.split(b" ", 2)[:2]
        length = _content_length(head)
        fate = self._fate(method.decode(), target.decode())
        if fate in ("500", "429"):
            reason = b"Internal Server Error" if fate == "500" else b"Too Many Requests"
            extra = b"Retry-After: 1\r\n" if fate == "429" else b""
            client.sendall(
                b"HTTP/1.1 " + fate.encode() + b" " + reason + b"\r\n" + extra
                + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )  # fmt: skip
            return False
        if fate == "stall":
            time.sleep(30)
            return False
        upstream.sendall(head)
        if fate == "drop-request":
            _copy(reader, upstream, self._cut_at(length))
            return False
        _copy(reader, upstream, length)
        response_head = _read_head(up)
        if response_head is None:
            return False
        body_length = 0 if method == b"HEAD" else _content_length(response_head)
        if fate == "drop-response":
            wire = response_head + up.read(body_length)
            client.sendall(wire[: self._cut_at(len(wire) - 1)])
            return False
        client.sendall(response_head)
        _copy(up, client, body_length)
        return b"connection: close" not in response_head.lower()


def _read_head(reader: IO[bytes]) -> bytes | None:
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _copy(reader: IO[bytes], sock: socket.socket, length: int) -> None:
    while length > 0:
        chunk = reader.read(min(length, 1 << 20))
        if not chunk:
            raise OSError("peer closed early")
        sock.sendall(chunk)
        length -= len(chunk)

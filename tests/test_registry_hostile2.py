"""The registry client against servers that echo secrets, forge output or send answers no
parser should crash on (the hostile-registry sweep): each ends in one clear error.

Every case is served by a server written here; before these fixes the echoed credentials
were printed, control characters reached the terminal, and the rest ended in tracebacks
(RecursionError, OverflowError, ValueError) instead of the one-line error.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from imagedsl.oci.blobs import BlobStore
from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.mediatypes import OCI_CONFIG, OCI_MANIFEST
from imagedsl.registry.auth import Credentials, DockerConfig
from imagedsl.registry.client import RegistryClient
from imagedsl.registry.errors import RegistryAuthError, RegistryError
from imagedsl.registry.transport import Repository, RetryPolicy
from imagedsl.store import Store
from tests.support.hostile import HostileServer, Request, head

USER, PASSWORD = "sweepuser", "s3cr3t-PASSWORD-xyz"
PAIR = f"{USER}:{PASSWORD}"
BASIC = base64.b64encode(PAIR.encode()).decode()
TOKEN = "tok.en-123_abc"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": [],
    }
).encode()
#: JSON nested past any recursion limit, yet small.
DEEP = b"[" * 200_000 + b"]" * 200_000


def _client(host: str) -> RegistryClient:
    return RegistryClient(
        credentials={host: Credentials(USER, PASSWORD)},
        docker_config=DockerConfig(),
        retry=RetryPolicy(attempts=2, initial_delay=0.01, max_delay=0.02),
        timeout=5,
        deadline=20,
    )


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return (
        head(status, {"Content-Type": "application/json", **(headers or {})}, length=len(body))
        + body
    )


def _basic(
    answer: Callable[[Request], bytes],
) -> Callable[[Request, HostileServer], Iterable[bytes]]:
    """A registry asking for Basic credentials, answering authorized requests with ``answer``."""

    def handle(request: Request, server: HostileServer) -> Iterable[bytes]:
        del server
        if "authorization" not in request.headers:
            return [head(401, {"WWW-Authenticate": 'Basic realm="hostile"'})]
        return [answer(request)]

    return handle


def _bearer(
    token_answer: bytes, realm: str | None = None
) -> Callable[[Request, HostileServer], Iterable[bytes]]:
    """A registry whose token server answers ``token_answer``."""

    def handle(request: Request, server: HostileServer) -> Iterable[bytes]:
        if request.path == "/token":
            return [token_answer]
        if request.headers.get("authorization", "").startswith("Bearer "):
            manifest = MANIFEST
            return [head(200, {"Content-Type": OCI_MANIFEST}, length=len(manifest)) + manifest]
        where = realm or f"http://{server.host}/token"
        return [head(401, {"WWW-Authenticate": f'Bearer realm="{where}",service="h"'})]

    return handle


def _fails(
    handler: Callable[[Request, HostileServer], Iterable[bytes]],
) -> RegistryError | RegistryAuthError:
    with (
        HostileServer(handler) as server,
        _client(server.host) as client,
        pytest.raises((RegistryError, RegistryAuthError)) as caught,
    ):
        client.get_manifest(f"{server.host}/x:1")
    error = caught.value
    assert isinstance(error, RegistryError | RegistryAuthError)
    return error


@pytest.mark.parametrize("status", [400, 409])
def test_credentials_a_registry_echoes_are_never_shown(status: int) -> None:
    """A registry whose error message repeats the Authorization it was sent, decoded too:
    the message is shown with each of them replaced."""

    def echo(request: Request) -> bytes:
        sent = request.headers["authorization"]
        message = f"you sent Authorization: {sent} (pair {PAIR}, password {PASSWORD}, bare {BASIC})"
        return _json(status, {"errors": [{"code": "DENIED", "message": message}]})

    shown = str(_fails(_basic(echo)))
    for secret in (PASSWORD, PAIR, BASIC):
        assert secret not in shown, shown
    assert "Basic ***" in shown


def test_a_bearer_token_a_registry_echoes_is_never_shown() -> None:
    def handle(request: Request, server: HostileServer) -> Iterable[bytes]:
        if request.path == "/token":
            return [_json(200, {"token": TOKEN, "expires_in": 300})]
        sent = request.headers.get("authorization", "")
        if sent.startswith("Bearer "):
            return [_json(400, {"errors": [{"code": "X", "message": f"token {TOKEN} refused"}]})]
        return [head(401, {"WWW-Authenticate": f'Bearer realm="http://{server.host}/token"'})]

    shown = str(_fails(handle))
    assert TOKEN not in shown
    assert "***" in shown


def test_control_characters_from_a_registry_are_escaped_and_long_text_cut() -> None:
    """A message that would erase the line, forge a success line and retitle the terminal
    is shown escaped, one line, and a message of megabytes is cut short."""
    forged = "nope\x1b[2K\r\nbuilt 1 step, 1 cached: oci:/x:t\x1b]0;pwned\x07" + "y" * 100_000

    def answer(request: Request) -> bytes:
        del request
        return _json(400, {"errors": [{"code": "BAD\x1b[31m", "message": forged}]})

    shown = str(_fails(_basic(answer)))
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in shown), repr(shown)
    assert "\\x1b[2K\\x0d\\x0abuilt 1 step" in shown
    assert len(shown) < 1000


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        pytest.param(
            _basic(lambda _: _json(400, DEEP)), RegistryError, id="error-body-nested-deep"
        ),
        pytest.param(_bearer(_json(200, DEEP)), RegistryAuthError, id="token-nested-deep"),
        pytest.param(
            _bearer(_json(200, {"token": "TOK\r\nX-Evil: 1"})),
            RegistryAuthError,
            id="token-with-crlf",
        ),
        pytest.param(
            _bearer(b"", realm="file:///etc/passwd"), RegistryAuthError, id="realm-file-url"
        ),
        pytest.param(
            _bearer(b"", realm="http://[::1/token"), RegistryAuthError, id="realm-malformed"
        ),
        pytest.param(
            _basic(lambda _: head(302, {"Location": "file:///etc/passwd"})),
            RegistryError,
            id="redirect-to-a-file-url",
        ),
    ],
)
def test_hostile_answers_end_in_one_clear_error(
    handler: Callable[[Request, HostileServer], Iterable[bytes]],
    expected: type[RegistryError | RegistryAuthError],
) -> None:
    """Each of these was a traceback; now the registry error the CLI prints in one line.
    A token that would inject a header is refused without being shown."""
    error = _fails(handler)
    assert type(error) is expected, repr(error)
    assert "X-Evil" not in str(error)
    assert "TOK" not in str(error)


def test_a_token_lifetime_past_any_float_is_kept_a_day_at_most() -> None:
    """``expires_in`` of 10**400 overflowed a float (a traceback); NaN was kept forever."""
    for lifetime in (b"1" + b"0" * 400, b"NaN", b"-5"):
        answer = b'{"token": "' + TOKEN.encode() + b'", "expires_in": ' + lifetime + b"}"
        token = _json(200, answer)
        with HostileServer(_bearer(token)) as server, _client(server.host) as client:
            manifest = client.get_manifest(f"{server.host}/x:1")
        assert manifest is not None


def test_a_partial_download_of_other_bytes_is_fetched_again_whole(tmp_path: Path) -> None:
    """A partial file an earlier download left (a hostile registry's bytes) made the next
    fetch of that blob from an honest registry fail, blaming it; it is now fetched whole."""
    blob = b"the honest blob's bytes\n" * 1000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    def honest(request: Request, server: HostileServer) -> Iterable[bytes]:
        del server
        start = int(request.headers.get("range", "bytes=0-")[6:].split("-")[0] or 0)
        if not start:
            return [head(200, length=len(blob)) + blob]
        ranged = {"Content-Range": f"bytes {start}-{len(blob) - 1}/{len(blob)}"}
        return [head(206, ranged, length=len(blob) - start) + blob[start:]]

    store = Store(tmp_path / "store")
    final = BlobStore(store).path(digest)
    final.parent.mkdir(parents=True, exist_ok=True)
    final.with_name(f".partial.{final.name}").write_bytes(b"poison" * 100)
    descriptor = Descriptor(media_type="application/octet-stream", digest=digest, size=len(blob))
    with HostileServer(honest) as server, _client(server.host) as client:
        client.fetch_blob(Repository(server.host, "x"), descriptor, store)
    assert final.read_bytes() == blob


def test_old_partial_downloads_no_fetch_holds_are_swept(tmp_path: Path) -> None:
    """A registry sets a partial file's size (its descriptor's); one left by an interrupted
    download stayed forever, `cache prune` or not. Old ones are removed now, unless a fetch
    holds one (its lock); new ones stay (a fetch may be about to resume them)."""
    blobs = BlobStore(Store(tmp_path / "store"))
    blobs.root.mkdir(parents=True)
    old, held, new = (blobs.root / f".partial.{n * 64}" for n in "abc")
    for path in (old, held, new):
        path.write_bytes(b"x" * 1000)
    for path in (old, held):
        os.utime(path, (time.time() - 2 * 86400,) * 2)
    with open(held, "rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        assert blobs.sweep() == 1
    assert not old.exists()
    assert held.exists()
    assert new.exists()

"""The registry client against hostile servers: every read is bounded, every operation ends.

Each hostile answer is served by a server written here (:mod:`hostile_support`); the client
runs in a fresh interpreter whose peak RSS is measured, since the point is that nothing a
server sends can make the client hold it all in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import pytest

from imagedsl.oci.mediatypes import OCI_MANIFEST
from imagedsl.registry.auth import DockerConfig
from imagedsl.registry.client import RegistryClient
from imagedsl.registry.errors import RegistryDeadlineError, RegistrySettingError
from imagedsl.registry.transport import (
    DEADLINE_ENV,
    DEFAULT_DEADLINE,
    MAX_DOCUMENT,
    TIMEOUT_ENV,
    RetryPolicy,
)
from tests.support.hostile import (
    HostileServer,
    Request,
    endless,
    head,
    registry_handler,
    run_measured,
)

#: Peak RSS allowed to a client facing a hostile server (the issue's bound).
PEAK_LIMIT_KIB = 200 * 1024


def _endless_manifest(request: Request, server: HostileServer) -> Iterable[bytes]:
    del server
    if request.path == "/v2/":
        return [head(200)]
    return chain([head(200, {"Content-Type": OCI_MANIFEST}, length=None), b'{"a": "'], _forever())


def _lying_length(request: Request, server: HostileServer) -> Iterable[bytes]:
    del server
    if request.path == "/v2/":
        return [head(200)]
    return chain([head(200, {"Content-Type": OCI_MANIFEST}, length=10 << 30)], _forever())


def _endless_chunks(request: Request, server: HostileServer) -> Iterable[bytes]:
    del server
    if request.path == "/v2/":
        return [head(200)]
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    start = head(200, {"Content-Type": OCI_MANIFEST, "Transfer-Encoding": "chunked"}, length=None)
    return chain([start], _forever(chunk))


def _endless_error(request: Request, server: HostileServer) -> Iterable[bytes]:
    del server
    if request.path == "/v2/":
        return [head(200)]
    return chain([head(404, {"Content-Type": "application/json"}, length=None)], _forever())


def _endless_token(request: Request, server: HostileServer) -> Iterable[bytes]:
    if request.path == "/token":
        return chain([head(200, {"Content-Type": "application/json"}, length=None)], _forever())
    realm = f'Bearer realm="http://{server.host}/token",service="hostile"'
    return [head(401, {"WWW-Authenticate": realm})]


def _forever(piece: bytes = b"x" * 65536) -> Iterator[bytes]:
    return endless(piece)


ENDLESS = [
    pytest.param(_endless_manifest, "/v2/x/manifests/1", id="manifest-without-length"),
    pytest.param(_lying_length, "/v2/x/manifests/1", id="manifest-of-10-GiB"),
    pytest.param(_endless_chunks, "/v2/x/manifests/1", id="manifest-chunked"),
    pytest.param(_endless_error, "/v2/x/manifests/1", id="error-body"),
    pytest.param(_endless_token, "/token", id="token-reply"),
]

_GET_MANIFEST = """
from imagedsl.registry.auth import DockerConfig
from imagedsl.registry.client import RegistryClient
from imagedsl.registry.errors import RegistryError
from imagedsl.registry.transport import RetryPolicy
retry = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.02)
client = RegistryClient(docker_config=DockerConfig(), retry=retry, timeout={timeout}, deadline={deadline})
try:
    client.get_manifest({reference!r})
except RegistryError as error:
    _report(error=type(error).__name__, message=str(error), exit_code=error.exit_code)
else:
    _report(error=None)
"""


@pytest.mark.parametrize(("handler", "path"), ENDLESS)
def test_endless_replies_are_refused_with_bounded_memory(handler: object, path: str) -> None:
    """A manifest, error or token reply that never ends (or claims 10 GiB) is refused past
    4 MiB, in one request, with the client's peak RSS far below the 200 MB bound."""
    with HostileServer(handler) as server:  # type: ignore[arg-type]
        code = _GET_MANIFEST.format(reference=f"{server.host}/x:1", timeout=30, deadline=120)
        found = run_measured(code)
        assert server.count(path) == 1  # refused, not retried
    assert found["error"] == "RegistryReplyTooLargeError"
    assert f"more than {MAX_DOCUMENT >> 20} MiB" in found["message"]
    assert found["exit_code"] == 1
    assert found["peak_rss_kib"] < PEAK_LIMIT_KIB


def _endless_headers(request: Request, server: HostileServer) -> Iterable[bytes]:
    del server
    if request.path == "/v2/":
        return [head(200)]
    return chain([b"HTTP/1.1 200 X\r\n"], _forever(b"X-Pad: " + b"y" * 1000 + b"\r\n"))


def test_endless_headers_are_refused_with_bounded_memory() -> None:
    """A reply whose head never ends fails each attempt (the head is bounded) and the
    operation gives up after its attempts, with bounded memory."""
    with HostileServer(_endless_headers) as server:
        code = _GET_MANIFEST.format(reference=f"{server.host}/x:1", timeout=30, deadline=120)
        found = run_measured(code)
        assert server.count("/v2/x/manifests/1") == 3  # every attempt, then no more
    assert found["error"] == "RegistryConnectionError"
    assert found["peak_rss_kib"] < PEAK_LIMIT_KIB


def _silent(request: Request, server: HostileServer) -> Iterable[bytes] | None:
    del request, server
    return None


def _trickle(request: Request, server: HostileServer) -> Iterable[bytes]:
    del server
    if request.path == "/v2/":
        return [head(200)]
    return chain([head(200, {"Content-Type": OCI_MANIFEST}, length=1000)], _slowly())


def _slowly() -> Iterator[bytes]:
    import time

    while True:
        time.sleep(0.05)
        yield b" "


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(_silent, id="never-answers"),
        pytest.param(_trickle, id="one-byte-at-a-time"),
    ],
)
def test_a_registry_that_never_finishes_meets_the_operations_deadline(handler: object) -> None:
    """A registry that never answers, or answers a byte at a time, fails the operation at its
    deadline (not after attempts x timeout): far fewer requests than attempts were made."""
    retry = RetryPolicy(attempts=1000, initial_delay=0.01, max_delay=0.02)
    with (
        HostileServer(handler) as server,  # type: ignore[arg-type]
        RegistryClient(docker_config=DockerConfig(), retry=retry, timeout=0.3, deadline=2) as c,
    ):
        with pytest.raises(RegistryDeadlineError) as caught:
            c.get_manifest(f"{server.host}/x:1")
        requests = sum(server.requests.values())
    assert caught.value.deadline == 2
    assert caught.value.exit_code == 1
    assert 1 <= caught.value.attempts < 1000
    assert requests < 1000


def test_a_blob_is_read_no_further_than_its_descriptor(tmp_path: Path) -> None:
    """A blob body that runs on past the descriptor's size is read only to that size, and
    bytes that are not the digest's are refused, with bounded memory."""
    layer = b"a" * 1000
    digest = "sha256:" + "0" * 64  # the bytes served are not these
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/json", "digest": digest, "size": 2},
            "layers": [],
        }
    ).encode()

    def handler(request: Request, server: HostileServer) -> Iterable[bytes]:
        if "/blobs/" in request.path:
            return chain([head(200, length=None)], _forever(layer))
        return registry_handler({"1": (OCI_MANIFEST, manifest)}, {})(request, server) or []

    code = f"""
    from imagedsl.oci.descriptor import Descriptor
    from imagedsl.registry.auth import DockerConfig
    from imagedsl.registry.client import RegistryClient
    from imagedsl.registry.errors import RegistryError
    from imagedsl.registry.transport import Repository, RetryPolicy
    from imagedsl.store import Store
    retry = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.02)
    client = RegistryClient(docker_config=DockerConfig(), retry=retry, timeout=30, deadline=120)
    blob = Descriptor(media_type="application/octet-stream", digest={digest!r}, size=50 << 20)
    try:
        client.fetch_blob(Repository({{host!r}}, "x"), blob, Store({str(tmp_path / "s")!r}))
    except RegistryError as error:
        _report(error=type(error).__name__, message=str(error))
    else:
        _report(error=None)
    """
    with HostileServer(handler) as server:
        found = run_measured(code.replace("{host!r}", repr(server.host)))
    assert found["error"] == "RegistryDigestError"
    assert found["peak_rss_kib"] < PEAK_LIMIT_KIB
    assert not list((tmp_path / "s" / "blobs" / "sha256").glob("[0-9a-f]*"))


def test_deadline_and_timeout_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``$IMAGEDSL_REGISTRY_TIMEOUT`` and ``$IMAGEDSL_REGISTRY_DEADLINE`` set the defaults;
    arguments win; the built-in deadline is 600 s."""
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(DEADLINE_ENV, raising=False)
    assert RegistryClient().transport.deadline == DEFAULT_DEADLINE == 600
    monkeypatch.setenv(TIMEOUT_ENV, "7.5")
    monkeypatch.setenv(DEADLINE_ENV, "90")
    client = RegistryClient()
    assert (client.transport.timeout, client.transport.deadline) == (7.5, 90)
    assert RegistryClient(deadline=5).transport.deadline == 5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param(DEADLINE_ENV, "soon", id="not-a-number"),
        pytest.param(DEADLINE_ENV, "0", id="zero"),
        pytest.param(TIMEOUT_ENV, "-1", id="negative"),
        pytest.param(TIMEOUT_ENV, "inf", id="infinite"),
    ],
)
def test_a_bad_setting_is_an_input_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A deadline or timeout that is not a positive number of seconds is refused (exit 2)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(RegistrySettingError) as caught:
        RegistryClient()
    assert (caught.value.name, caught.value.value) == (name, value)
    assert caught.value.exit_code == 2

"""Registry authentication: Docker's config and credential helpers, Basic over TLS with a CA
made here, token auth with a token server written here, and secrets kept out of everything."""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from imagedsl.errors import InputError
from imagedsl.registry import transport
from imagedsl.registry.auth import (
    Authorizer,
    Challenge,
    Credentials,
    DockerConfig,
    parse_challenges,
)
from imagedsl.registry.client import RegistryClient
from imagedsl.registry.errors import (
    CredentialsError,
    InsecureRegistryError,
    RegistryAuthError,
    RegistryError,
)
from imagedsl.registry.transport import Repository, RetryPolicy, is_loopback
from imagedsl.store import Store
from tests.support import docker
from tests.support import registry as rs
from tests.support.skips import NO_REGISTRY, unavailable

USER = "alice"
PASSWORD = "pa55-w0rd-that-must-not-leak"
FAST_RETRY = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05)


def _unavailable(exc: Exception) -> NoReturn:
    unavailable(NO_REGISTRY, str(exc))


def secrets_of(*tokens: str) -> list[str]:
    """Every form in which the test credentials could leak."""
    pair = f"{USER}:{PASSWORD}".encode()
    return [PASSWORD, base64.b64encode(pair).decode(), *tokens]


# --- Docker's config.json and credential helpers --------------------------------------------


def write_helper(directory: Path, name: str, answers: dict[str, tuple[str, str]]) -> Path:
    """A real ``docker-credential-NAME`` script; it logs the server URLs it was asked for."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / f"docker-credential-{name}"
    table = json.dumps({k: {"Username": u, "Secret": s} for k, (u, s) in answers.items()})
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"table = json.loads({table!r})\n"
        "server = sys.stdin.read().strip()\n"
        f"open({str(directory / 'asked.log')!r}, 'a').write(server + '\\n')\n"
        "if sys.argv[1:] != ['get']:\n"
        "    sys.exit(3)\n"
        "if server == 'broken':\n"
        "    print('partial-secret-output'); sys.exit(2)\n"
        "if server not in table:\n"
        "    print('credentials not found in native keychain'); sys.exit(1)\n"
        "print(json.dumps(dict(table[server], ServerURL=server)))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return directory


def test_inline_auths_in_every_form(tmp_path: Path) -> None:
    """``auth`` (base64), username/password and identity tokens are read, by canonical host."""
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config_file = tmp_path / "config.json"
    config_file.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": encoded},
                    "http://reg.example:5000": {"username": "bob", "password": "b0b"},
                    "tok.example": {"identitytoken": "refresh-me"},
                }
            }
        )
    )
    config = DockerConfig.load(env={"DOCKER_CONFIG": str(tmp_path)})

    assert config.credentials_for("docker.io") == Credentials(USER, PASSWORD)
    assert config.credentials_for("registry-1.docker.io") == Credentials(USER, PASSWORD)
    assert config.credentials_for("reg.example:5000") == Credentials("bob", "b0b")
    token = config.credentials_for("tok.example")
    assert token is not None
    assert token.identity_token == "refresh-me"
    assert config.credentials_for("elsewhere.example") is None
    assert DockerConfig.load(tmp_path / "missing.json").credentials_for("docker.io") is None


def test_malformed_auth_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """An ``auth`` that is not base64 of user:password is an error that does not quote it."""
    config = DockerConfig.from_json({"auths": {"reg.example": {"auth": PASSWORD}}})
    with pytest.raises(CredentialsError) as caught:
        config.credentials_for("reg.example")
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CredentialsError):
        DockerConfig.load(tmp_path / "config.json")


def test_cred_helpers_and_creds_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """credHelpers wins for its host; credsStore serves the others; inline auths are a fallback."""
    bin_dir = write_helper(
        tmp_path / "bin",
        "fake",
        {
            "https://index.docker.io/v1/": (USER, PASSWORD),
            "helped.example": ("<token>", "identity-123"),
            "stored.example": ("carol", "c4r0l"),
        },
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = DockerConfig.from_json(
        {
            "credsStore": "fake",
            "credHelpers": {"helped.example": "fake", "missing.example": "absent"},
            "auths": {"inline.example": {"username": "dan", "password": "d4n"}},
        }
    )

    assert config.credentials_for("docker.io") == Credentials(USER, PASSWORD)
    helped = config.credentials_for("helped.example")
    assert helped is not None
    assert helped.identity_token == "identity-123"
    assert config.credentials_for("stored.example") == Credentials("carol", "c4r0l")
    assert config.credentials_for("inline.example") == Credentials("dan", "d4n")
    asked = (bin_dir / "asked.log").read_text().split()
    assert asked[0] == "https://index.docker.io/v1/"
    with pytest.raises(CredentialsError) as missing:
        config.credentials_for("missing.example")
    assert missing.value.source == "docker-credential-absent"
    with pytest.raises(CredentialsError) as broken:
        config.credentials_for("broken")
    assert "partial-secret-output" not in str(broken.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:a/b:pull,push"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.example/token",
                        "service": "registry.example",
                        "scope": "repository:a/b:pull,push",
                    },
                )
            ],
            id="bearer-with-comma-in-quotes",
        ),
        pytest.param(
            'Basic realm="Registry Realm"',
            [Challenge("basic", {"realm": "Registry Realm"})],
            id="basic",
        ),
        pytest.param(
            'Basic realm="x", Bearer realm="https://t/", error="invalid_token"',
            [
                Challenge("basic", {"realm": "x"}),
                Challenge("bearer", {"realm": "https://t/", "error": "invalid_token"}),
            ],
            id="two-challenges",
        ),
        pytest.param(
            'Bearer realm="a\\"b"', [Challenge("bearer", {"realm": 'a"b'})], id="escaped-quote"
        ),
        pytest.param("", [], id="empty"),
    ],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    """WWW-Authenticate values parse into schemes and parameters, quoted commas included."""
    assert parse_challenges(header) == expected


def test_reprs_hide_secrets() -> None:
    """Credentials, configs, authorizers and clients never show a secret in their repr."""
    credentials = Credentials(USER, PASSWORD, identity_token="idtok-secret")
    config = DockerConfig.from_json(
        {"auths": {"r.example": {"username": USER, "password": PASSWORD}}}
    )
    client = RegistryClient(credentials={"r.example": credentials})
    authorizer = Authorizer("r.example", lambda: credentials, lambda *_: (500, {}, b""))
    for value in (credentials, config, client, authorizer):
        text = repr(value)
        assert PASSWORD not in text
        assert "idtok-secret" not in text
        assert USER not in text or value is config


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        pytest.param("127.0.0.1:5000", True, id="ipv4"),
        pytest.param("127.8.9.1", True, id="ipv4-range"),
        pytest.param("localhost:5000", True, id="localhost"),
        pytest.param("[::1]:5000", True, id="ipv6"),
        pytest.param("registry.example:5000", False, id="name"),
        pytest.param("10.0.0.1:5000", False, id="private"),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    """Plain HTTP is allowed without asking only for loopback registries."""
    assert is_loopback(host) is loopback


# --- Basic auth over TLS --------------------------------------------------------------------


@pytest.fixture(name="tls_ca", scope="module")
def fixture_tls_ca(tmp_path_factory: pytest.TempPathFactory) -> rs.Certificate:
    """A CA made for this module's registries."""
    try:
        return rs.make_ca(tmp_path_factory.mktemp("ca"))
    except docker.RegistryUnavailable as exc:
        _unavailable(exc)
        raise


@pytest.fixture(name="basic_registry")
def fixture_basic_registry(tmp_path: Path, tls_ca: rs.Certificate) -> Iterator[rs.CustomRegistry]:
    """A registry with htpasswd Basic auth, serving TLS with a certificate from ``tls_ca``."""
    try:
        cert = rs.make_server_cert(tmp_path, tls_ca)
        rs.write_htpasswd(tmp_path / "htpasswd", {USER: PASSWORD})
        server = rs.start_custom_registry(
            tmp_path / "basic",
            auth={"htpasswd": {"realm": "imagedsl-test", "path": str(tmp_path / "htpasswd")}},
            tls=cert,
        )
    except docker.RegistryUnavailable as exc:
        _unavailable(exc)
        raise
    yield server
    server.stop()


def test_basic_auth_over_tls_from_docker_config(
    basic_registry: rs.CustomRegistry, tls_ca: rs.Certificate, tmp_path: Path
) -> None:
    """Credentials from config.json authenticate a push and pull over verified TLS."""
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(
        json.dumps({"auths": {basic_registry.host: {"auth": encoded}}})
    )
    config = DockerConfig.load(env={"DOCKER_CONFIG": str(tmp_path / "docker")})
    store = Store(tmp_path / "store")
    manifest = rs.make_image(store, [{"a": b"1"}, {"b": rs.random_bytes(300_000, 1)}])
    ref = f"{basic_registry.host}/secure/app:1"
    with RegistryClient(
        docker_config=config, ssl_context=rs.ssl_context_for(tls_ca), retry=FAST_RETRY
    ) as client:
        client.push(store, manifest, ref)
        pulled = client.pull(ref, Store(tmp_path / "fresh"))
    assert pulled.manifest.digest == manifest.digest


def test_basic_auth_refusals(basic_registry: rs.CustomRegistry, tls_ca: rs.Certificate) -> None:
    """No credentials, or a wrong password, is a RegistryAuthError that names no secret."""
    context = rs.ssl_context_for(tls_ca)
    ref = f"{basic_registry.host}/secure/app:1"
    anonymous = RegistryClient(docker_config=DockerConfig(), ssl_context=context)
    with anonymous, pytest.raises(RegistryAuthError) as no_credentials:
        anonymous.resolve(ref)
    assert no_credentials.value.host == basic_registry.host
    wrong = {basic_registry.host: Credentials(USER, PASSWORD + "-wrong")}
    client = RegistryClient(credentials=wrong, ssl_context=context, retry=FAST_RETRY)
    with client, pytest.raises(RegistryAuthError) as refused:
        client.resolve(ref)
    assert refused.value.status == 401
    for text in (str(refused.value), repr(refused.value)):
        assert PASSWORD not in text


def test_tls_is_verified(basic_registry: rs.CustomRegistry, tmp_path: Path) -> None:
    """An unknown CA is refused (no fallback to plain HTTP); insecure=True skips verification."""
    credentials = {basic_registry.host: Credentials(USER, PASSWORD)}
    ref = f"{basic_registry.host}/secure/app:1"
    strict = RegistryClient(credentials=credentials, retry=FAST_RETRY)
    with strict, pytest.raises(RegistryError) as caught:
        strict.resolve(ref)
    assert "TLS verification failed" in str(caught.value)
    store = Store(tmp_path / "store")
    manifest = rs.make_image(store, [{"a": b"1"}])
    with RegistryClient(credentials=credentials, insecure=True, retry=FAST_RETRY) as lax:
        assert lax.push(store, manifest, ref).digest == manifest.digest


# --- token auth -----------------------------------------------------------------------------


@pytest.fixture(name="token_server")
def fixture_token_server(tls_ca: rs.Certificate) -> Iterator[rs.TokenServer]:
    """A token server signing with the test CA's key; alice may push, anyone may pull."""
    server = rs.TokenServer(tls_ca, {USER: PASSWORD})
    yield server
    server.stop()


@pytest.fixture(name="token_registry")
def fixture_token_registry(
    tmp_path: Path, token_server: rs.TokenServer
) -> Iterator[rs.CustomRegistry]:
    """A plain-HTTP loopback registry that trusts ``token_server``'s tokens."""
    try:
        server = rs.start_custom_registry(tmp_path / "token", auth=token_server.registry_auth())
    except docker.RegistryUnavailable as exc:
        _unavailable(exc)
        raise
    yield server
    server.stop()


def token_client(registry: rs.CustomRegistry, **kwargs: object) -> RegistryClient:
    """A client holding alice's credentials for ``registry``."""
    credentials = {registry.host: Credentials(USER, PASSWORD)}
    return RegistryClient(
        credentials=credentials,
        retry=FAST_RETRY,
        docker_config=DockerConfig(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_token_auth_push_pull_and_caching(
    token_registry: rs.CustomRegistry, token_server: rs.TokenServer, tmp_path: Path
) -> None:
    """A push fetches one token per scope set, sends credentials to the realm, and pulls back."""
    store = Store(tmp_path / "store")
    manifest = rs.make_image(store, [{f"f{i}": rs.random_bytes(50_000, i)} for i in range(5)])
    ref = f"{token_registry.host}/team/app:1"
    with token_client(token_registry) as client:
        result = client.push(store, manifest, ref)
        pulled = client.pull(ref, Store(tmp_path / "fresh"))
    assert set(result.blobs.values()) == {"pushed"}
    assert pulled.manifest.digest == manifest.digest
    scope_sets = [tuple(r["scopes"]) for r in token_server.requests]
    assert scope_sets.count(("repository:team/app:pull,push",)) == 1
    assert len(token_server.requests) <= 3  # push scope, pull scope, and nothing per blob
    assert {r["user"] for r in token_server.requests} == {USER}
    assert {tuple(r["service"]) for r in token_server.requests} == {(token_server.service,)}


def test_token_anonymous_pull_but_no_push(
    token_registry: rs.CustomRegistry, tmp_path: Path
) -> None:
    """Anonymous tokens allow pulls; a push without credentials is refused."""
    store = Store(tmp_path / "store")
    manifest = rs.make_image(store, [{"a": b"1"}])
    ref = f"{token_registry.host}/public/app:1"
    with token_client(token_registry) as owner:
        owner.push(store, manifest, ref)
    with RegistryClient(docker_config=DockerConfig(), retry=FAST_RETRY) as anonymous:
        assert anonymous.pull(ref, Store(tmp_path / "fresh")).manifest.digest == manifest.digest
        with pytest.raises(RegistryAuthError) as refused:
            anonymous.push(store, manifest, f"{token_registry.host}/public/other:1")
    assert refused.value.status == 401


def test_refused_token_is_fetched_again(
    token_registry: rs.CustomRegistry, token_server: rs.TokenServer, tmp_path: Path
) -> None:
    """A token the registry refuses (here: wrong audience) is dropped and fetched anew."""
    store = Store(tmp_path / "store")
    manifest = rs.make_image(store, [{"a": b"1"}])
    token_server.spoil_next = 1
    with token_client(token_registry) as client:
        result = client.push(store, manifest, f"{token_registry.host}/app:1")
    assert result.digest == manifest.digest
    assert token_server.spoil_next == 0


def test_expired_token_is_refreshed(
    token_registry: rs.CustomRegistry,
    token_server: rs.TokenServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token past its announced lifetime is not reused."""
    now = [1000.0]  # the authorizers' clock, moved by the test instead of sleeping
    monkeypatch.setattr(
        transport, "Authorizer", functools.partial(Authorizer, clock=lambda: now[0])
    )
    token_server.expires_in = 1
    store = Store(tmp_path / "store")
    manifest = rs.make_image(store, [{"a": b"1"}])
    ref = f"{token_registry.host}/app:1"
    with token_client(token_registry) as client:
        client.push(store, manifest, ref)
        before = len(token_server.requests)
        client.resolve(ref)
        cached = len(token_server.requests)
        now[0] += 1.05
        client.resolve(ref)
    assert cached - before <= 1  # the pull scope, once
    assert len(token_server.requests) == cached + 1


def test_mount_asks_for_the_source_scope(
    token_registry: rs.CustomRegistry, token_server: rs.TokenServer, tmp_path: Path
) -> None:
    """A cross-repository mount under token auth asks for pull on the source repository."""
    store = Store(tmp_path / "store")
    manifest = rs.make_image(store, [{"a": rs.random_bytes(10_000, 2)}])
    with token_client(token_registry) as client:
        client.push(store, manifest, f"{token_registry.host}/base:1")
        result = client.push(
            store, manifest, f"{token_registry.host}/derived:1", mount_from=["base"]
        )
    assert set(result.blobs.values()) == {"mounted"}
    asked = {scope for r in token_server.requests for scope in r["scopes"]}
    assert "repository:base:pull" in asked


def test_plain_http_realm_off_loopback_is_refused(tmp_path: Path, tls_ca: rs.Certificate) -> None:
    """Credentials are never sent to a plain-HTTP token realm that is not on loopback."""
    token_server = rs.TokenServer(tls_ca, {USER: PASSWORD})
    auth = token_server.registry_auth()
    auth["token"]["realm"] = "http://tokens.example.invalid/token"
    try:
        server = rs.start_custom_registry(tmp_path / "token", auth=auth)
    except docker.RegistryUnavailable as exc:
        token_server.stop()
        _unavailable(exc)
        raise
    try:
        with token_client(server) as client, pytest.raises(InsecureRegistryError) as caught:
            client.resolve(f"{server.host}/app:1")
    finally:
        server.stop()
        token_server.stop()
    assert token_server.requests == []
    assert caught.value.host == "tokens.example.invalid"  # the realm's host, not the registry
    assert caught.value.action == "connecting"
    assert caught.value.status is None
    assert "insecure=True" in caught.value.detail
    assert isinstance(caught.value, InputError)  # exit 2: the user's setting decides


# --- secrets go nowhere ---------------------------------------------------------------------


def test_secrets_never_leak(
    token_registry: rs.CustomRegistry,
    token_server: rs.TokenServer,
    basic_registry: rs.CustomRegistry,
    tls_ca: rs.Certificate,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Passwords and tokens appear in no log record, output, error, repr or stored file."""
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []
    issue = token_server.issue

    def remember(user: str | None, scopes: Sequence[str]) -> str:
        token = issue(user, scopes)
        issued.append(token)
        return token

    token_server.issue = remember  # type: ignore[method-assign]
    store = Store(tmp_path / "store")
    manifest = rs.make_image(store, [{"a": rs.random_bytes(100_000, 5)}])
    texts: list[str] = []
    credentials = {
        token_registry.host: Credentials(USER, PASSWORD),
        basic_registry.host: Credentials(USER, PASSWORD),
    }
    with RegistryClient(
        credentials=credentials,
        ssl_context=rs.ssl_context_for(tls_ca),
        docker_config=DockerConfig(),
        retry=FAST_RETRY,
    ) as client:
        for host in (token_registry.host, basic_registry.host):
            result = client.push(store, manifest, f"{host}/leak/check:1")
            pulled = client.pull(f"{host}/leak/check:1", Store(tmp_path / f"pull-{host[-5:]}"))
            texts += [repr(result), repr(pulled), repr(client)]
            with pytest.raises(RegistryError) as missing:
                client.resolve(f"{host}/leak/check:absent")
            texts += [str(missing.value), repr(missing.value)]
        texts.append(
            repr(client.transport.authorizer(Repository(token_registry.host, "leak/check")))
        )
    wrong = {basic_registry.host: Credentials(USER, PASSWORD + "x")}
    bad = RegistryClient(credentials=wrong, ssl_context=rs.ssl_context_for(tls_ca))
    with bad, pytest.raises(RegistryAuthError) as refused:
        bad.resolve(f"{basic_registry.host}/leak/check:1")
    texts += [str(refused.value), repr(refused.value), repr(refused.value.args)]

    assert issued, "the token server was used"
    out, err = capsys.readouterr()
    texts += [out, err, caplog.text, *(r.getMessage() for r in caplog.records)]
    stores = [tmp_path / "store", *tmp_path.glob("pull-*")]
    stored = [
        path.read_bytes().decode("latin-1")
        for root in stores
        for path in root.rglob("*")
        if path.is_file()
    ]
    assert len(stored) >= 6
    for secret in secrets_of(*issued):
        for text in texts + stored:
            assert secret not in text

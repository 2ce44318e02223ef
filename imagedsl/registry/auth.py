"""Registry credentials and authorization: Docker's ``config.json``, Basic, and Bearer tokens.

Used by :mod:`imagedsl.registry.transport` only. Credentials come from Docker's configuration
(``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``): ``credHelpers`` for the host,
else ``credsStore``, else the inline ``auths`` entry. They are looked up lazily, the first time a
registry asks for them, so anonymous registries never run a credential helper.

An :class:`Authorizer` holds what one registry host asked for (its ``WWW-Authenticate``
challenge) and answers with an ``Authorization`` header: Basic with the credentials, or a
Bearer token fetched from the challenge's realm for the scopes a request needs, cached until
shortly before it expires and fetched again when the registry refuses it.

Secrets never leave this module except inside an ``Authorization`` header: the classes that
hold them hide them from ``repr``, and no error message, log line or file carries them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final, Protocol

import attrs

from imagedsl.registry.errors import CredentialsError, RegistryAuthError

#: Docker's name for Docker Hub in config files and credential helpers.
DOCKER_HUB_CONFIG_KEY: Final = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: Tokens are refreshed this long before the expiry the token server announced.
_EXPIRY_MARGIN: Final = 10.0
#: The token lifetime the distribution token spec says to assume when none is given.
_DEFAULT_TOKEN_LIFETIME: Final = 60.0
_HELPER_TIMEOUT: Final = 60.0
#: A token is kept at most a day, whatever its server says.
_MAX_TOKEN_LIFETIME: Final = 86400.0
#: RFC 6750's b64token: what a Bearer value may hold.
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9._~+/-]+=*")


@attrs.frozen
class Credentials:
    """A user name and secret for one registry; ``repr`` never shows either."""

    username: str = attrs.field(repr=False)
    password: str = attrs.field(repr=False)
    #: An OAuth refresh token (Docker's ``identitytoken``), used instead of the password.
    identity_token: str | None = attrs.field(default=None, repr=False)

    def basic_header(self) -> str:
        """The ``Authorization`` value for Basic auth."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def canonical_host(host: str) -> str:
    """The host as config files name it: Docker Hub's aliases all become ``docker.io``."""
    host = host.lower()
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host


def _config_key_host(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://h:5000`` -> ``h:5000``."""
    text = key.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    return canonical_host(text.split("/", 1)[0])


def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    env = os.environ if env is None else env
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory).expanduser() / "config.json"
    return Path.home() / ".docker" / "config.json"


class HelperRunner(Protocol):
    """Runs ``docker-credential-<name> get`` with ``server`` on stdin; returns (code, stdout)."""

    def __call__(self, program: str, server: str) -> tuple[int, bytes]: ...


def run_helper(program: str, server: str) -> tuple[int, bytes]:
    """The real helper runner: stdout is captured (it holds the secret), stderr discarded."""
    try:
        done = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise CredentialsError(program, "the credential helper is not installed") from None
    except subprocess.TimeoutExpired:
        raise CredentialsError(program, f"no answer within {_HELPER_TIMEOUT:.0f}s") from None
    return done.returncode, done.stdout


@attrs.frozen(kw_only=True)
class DockerConfig:
    """The parts of Docker's ``config.json`` that say where credentials are."""

    path: Path | None = None
    #: Canonical host -> the inline ``auths`` entry (hidden: it holds secrets).
    auths: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict, repr=False, hash=False)
    creds_store: str | None = None
    cred_helpers: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    helper_runner: HelperRunner = attrs.field(default=run_helper, repr=False, eq=False)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
    ) -> DockerConfig:
        """Read ``path`` (default :func:`docker_config_path`); a missing file means no config."""
        config_path = Path(path) if path is not None else docker_config_path(env)
        try:
            data = config_path.read_bytes()
        except FileNotFoundError:
            return cls(path=config_path)
        except OSError as error:
            raise CredentialsError(str(config_path), f"cannot read it: {error.strerror}") from None
        try:
            payload = json.loads(data)
        except ValueError:
            raise CredentialsError(str(config_path), "it is not valid JSON") from None
        if not isinstance(payload, dict):
            raise CredentialsError(str(config_path), "it is not a JSON object")
        return cls.from_json(payload, path=config_path)

    @classmethod
    def from_json(cls, payload: Mapping[str, object], *, path: Path | None = None) -> DockerConfig:
        """Build from the parsed file; entries of the wrong shape are ignored, as Docker does."""
        auths: dict[str, Mapping[str, str]] = {}
        raw_auths = payload.get("auths")
        if isinstance(raw_auths, dict):
            for key, entry in raw_auths.items():
                if isinstance(key, str) and isinstance(entry, dict):
                    fields = {k: v for k, v in entry.items() if isinstance(v, str)}
                    auths[_config_key_host(key)] = fields
        helpers: dict[str, str] = {}
        raw_helpers = payload.get("credHelpers")
        if isinstance(raw_helpers, dict):
            for key, name in raw_helpers.items():
                if isinstance(key, str) and isinstance(name, str) and name:
                    helpers[_config_key_host(key)] = name
        store = payload.get("credsStore")
        return cls(
            path=path,
            auths=auths,
            creds_store=store if isinstance(store, str) and store else None,
            cred_helpers=helpers,
        )

    def credentials_for(self, host: str) -> Credentials | None:
        """Credentials for ``host`` (``127.0.0.1:5000``, ``docker.io``), or None."""
        key = canonical_host(host)
        helper = self.cred_helpers.get(key)
        if helper is not None:
            return self._from_helper(helper, key)
        if self.creds_store is not None:
            found = self._from_helper(self.creds_store, key)
            if found is not None:
                return found
        return self._inline(key)

    def _inline(self, key: str) -> Credentials | None:
        entry = self.auths.get(key)
        if not entry:
            return None
        source = f"{self.path or 'config.json'} (auths entry for {key})"
        username, password = entry.get("username", ""), entry.get("password", "")
        encoded = entry.get("auth", "")
        if encoded:
            try:
                decoded = base64.b64decode(encoded, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise CredentialsError(
                    source, "its 'auth' is not base64 of user:password"
                ) from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise CredentialsError(source, "its 'auth' is not base64 of user:password")
        token = entry.get("identitytoken") or None
        if not username and not password and token is None:
            return None
        return Credentials(username, password, identity_token=token)

    def _from_helper(self, name: str, key: str) -> Credentials | None:
        program = f"docker-credential-{name}"
        server = DOCKER_HUB_CONFIG_KEY if key == "docker.io" else key
        code, stdout = self.helper_runner(program, server)
        if code != 0:
            # The helper protocol's "not found" answer; any other failure is reported without
            # its output, which might hold part of a secret.
            if b"credentials not found" in stdout.lower():
                return None
            raise CredentialsError(program, f"'get' exited with status {code}")
        try:
            answer = json.loads(stdout)
            username, secret = answer["Username"], answer["Secret"]
        except (ValueError, KeyError, TypeError):
            raise CredentialsError(program, "'get' did not print the expected JSON") from None
        if not isinstance(username, str) or not isinstance(secret, str):
            raise CredentialsError(program, "'get' did not print the expected JSON")
        if username == "<token>":
            return Credentials("", "", identity_token=secret)
        return Credentials(username, secret)


# -- challenges -----------------------------------------------------------------------------

_TOKEN_CHARS: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM: Final = re.compile(
    rf'\s*({_TOKEN_CHARS})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN_CHARS}))\s*(?:,|$)'
)
_SCHEME: Final = re.compile(rf"\s*,?\s*({_TOKEN_CHARS})(?:\s+|$)")


@attrs.frozen
class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme (lower case) and its parameters."""

    scheme: str
    params: Mapping[str, str] = attrs.field(factory=dict, hash=False)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 7235), which may hold several challenges."""
    challenges: list[Challenge] = []
    position = 0
    while position < len(header):
        scheme = _SCHEME.match(header, position)
        if scheme is None:
            break
        position = scheme.end()
        params: dict[str, str] = {}
        while position < len(header):
            param = _PARAM.match(header, position)
            if param is None:
                break
            quoted, bare = param.group(2), param.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            params[param.group(1).lower()] = value
            position = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


# -- authorization ---------------------------------------------------------------------------


class Sender(Protocol):
    """Sends one HTTP request for the authorizer (the registry client's transport).

    Returns (status, lower-cased headers, body). It enforces the client's TLS policy and its
    retries; it raises the client's own errors when the realm cannot be reached.
    """

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]: ...


@attrs.frozen
class _Token:
    value: str = attrs.field(repr=False)
    expires_at: float


class Authorizer:
    """What one registry host asked for, and the tokens it gave us. Thread safe."""

    def __init__(
        self,
        host: str,
        lookup: Callable[[], Credentials | None],
        send: Sender,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self._lookup = lookup
        self._send = send
        self._clock = clock
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._credentials: Credentials | None = None
        self._looked_up = False
        self._tokens: dict[frozenset[str], _Token] = {}

    def __repr__(self) -> str:
        scheme = self._challenge.scheme if self._challenge else None
        return f"Authorizer(host={self.host!r}, scheme={scheme!r})"

    def secrets(self) -> list[str]:
        """What was (or may be) sent to this host that no message may show: the password,
        the pair and its Basic value, an identity token, the Bearer tokens held."""
        with self._lock:
            found = [token.value for token in self._tokens.values()]
            credentials = self._credentials
        if credentials is not None:
            pair = f"{credentials.username}:{credentials.password}"
            found += [credentials.password, pair, credentials.basic_header().split(" ", 1)[1]]
            found += [credentials.identity_token] if credentials.identity_token else []
        return found

    def header_for(self, scopes: Iterable[str]) -> str | None:
        """The ``Authorization`` value to send for a request needing ``scopes``, if any.

        Before the registry has challenged us this is None (the first request goes out
        anonymously). Afterwards a Bearer token for these scopes is fetched when none is
        cached, so later requests need no extra round trip.
        """
        wanted = frozenset(scopes)
        with self._lock:
            challenge = self._challenge
            if challenge is None:
                return None
            if challenge.scheme == "basic":
                credentials = self._credentials_locked()
                return credentials.basic_header() if credentials is not None else None
            if challenge.scheme != "bearer" or not wanted:
                return None
            token = self._tokens.get(wanted)
            if token is None or token.expires_at <= self._clock():
                token = self._tokens[wanted] = self._fetch_token_locked(challenge, wanted)
            return f"Bearer {token.value}"

    def challenged(self, header: str | None, scopes: Iterable[str], sent: str | None) -> bool:
        """The registry answered 401 with ``header``; True if a retry may now succeed.

        ``sent`` is the Authorization value of the refused request: a refused token is
        dropped and fetched again (it expired or lacked a scope), refused Basic credentials
        are not tried twice.
        """
        challenges = parse_challenges(header or "")
        chosen = next((c for c in challenges if c.scheme == "bearer"), None) or next(
            (c for c in challenges if c.scheme == "basic"), None
        )
        if chosen is None:
            return False
        wanted = frozenset(scopes) | frozenset(chosen.params.get("scope", "").split())
        with self._lock:
            self._challenge = chosen
            if chosen.scheme == "basic":
                credentials = self._credentials_locked()
                if credentials is None:
                    raise RegistryAuthError(
                        self.host, "it asks for a user name and password and none is configured"
                    )
                return sent != credentials.basic_header()
            if not wanted:
                return sent is None
            refused = self._tokens.pop(frozenset(scopes), None)
            self._tokens.pop(wanted, None)
            token = self._fetch_token_locked(chosen, wanted)
            self._tokens[frozenset(scopes)] = token
            if refused is not None and refused.value == token.value:
                return False
            return sent != f"Bearer {token.value}"

    def _credentials_locked(self) -> Credentials | None:
        if not self._looked_up:
            self._credentials = self._lookup()
            self._looked_up = True
        return self._credentials

    def _fetch_token_locked(self, challenge: Challenge, scopes: frozenset[str]) -> _Token:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryAuthError(self.host, "its Bearer challenge names no realm")
        try:
            parts = urllib.parse.urlsplit(realm)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryAuthError(
                self.host, "its Bearer challenge names a realm that is not an http(s) URL"
            )
        credentials = self._credentials_locked()
        service = challenge.params.get("service")
        ordered = sorted(scopes)
        headers = {"Accept": "application/json"}
        if credentials is not None and credentials.identity_token is not None:
            # An identity token is an OAuth2 refresh token: exchanged by POST (distribution's
            # "OAuth2 token authentication"); plain user/password use the GET form below.
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": "imagedsl",
                "scope": " ".join(ordered),
            }
            if service:
                form["service"] = service
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urllib.parse.urlencode(form).encode()
            status, _headers, answer = self._send("POST", realm, headers, body)
        else:
            query = [("service", service)] if service else []
            query += [("scope", scope) for scope in ordered]
            url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
            if credentials is not None:
                headers["Authorization"] = credentials.basic_header()
            status, _headers, answer = self._send("GET", url, headers, None)
        if status != 200:
            problem = "the token server refused the credentials"
            if credentials is None:
                problem = "the token server refused an anonymous token; configure credentials"
            raise RegistryAuthError(self.host, problem, status=status, scopes=ordered)
        return self._parse_token(answer, ordered)

    def _parse_token(self, answer: bytes, scopes: list[str]) -> _Token:
        try:
            payload = json.loads(answer)
            value = payload.get("token") or payload.get("access_token")
            lifetime = payload.get("expires_in", _DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, RecursionError):
            value, lifetime = None, None
        if not isinstance(value, str) or not value:
            raise RegistryAuthError(
                self.host, "the token server's answer holds no token", scopes=scopes
            )
        if not _B64TOKEN.fullmatch(value):  # it goes into a header: never a line break
            raise RegistryAuthError(
                self.host,
                "the token server's token is not a Bearer token (RFC 6750)",
                scopes=scopes,
            )
        seconds = _DEFAULT_TOKEN_LIFETIME
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool):
            try:
                seconds = min(float(lifetime), _MAX_TOKEN_LIFETIME)
            except OverflowError:  # an integer past any float
                seconds = _MAX_TOKEN_LIFETIME
        if not math.isfinite(seconds) or seconds <= 0:
            seconds = _DEFAULT_TOKEN_LIFETIME
        margin = min(_EXPIRY_MARGIN, seconds / 10)
        return _Token(value, self._clock() + seconds - margin)

"""The registry client's errors: what a registry, its token server, Docker's credentials or a
source of blobs to push answered or lacked. Each keeps its data as attributes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from imagedsl.errors import EnvironmentFailure, InputError, string_tuple

#: What is shown of a text a server wrote (an error message, a Location): at most this long.
_SHOWN_LENGTH: Final = 300
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: An Authorization value a server may echo back.
_AUTHORIZATION: Final = re.compile(r"(?i)\b(basic|bearer)(\s+)[A-Za-z0-9._~+/=-]+")


def shown(text: str, secrets: Iterable[str] = ()) -> str:
    """A server's ``text`` as it may be printed: the ``secrets`` sent to it (and any Basic or
    Bearer value) replaced by ``***``, control characters escaped (no forged lines, no
    terminal escapes), cut to a few hundred characters."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _AUTHORIZATION.sub(r"\1\2***", text)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= _SHOWN_LENGTH else text[:_SHOWN_LENGTH] + "..."


@attrs.define
class RegistryError(EnvironmentFailure):
    """A registry answered an operation with an error (the codes are the spec's error codes)."""

    host: str
    action: str
    status: int | None = attrs.field(default=None, kw_only=True)
    codes: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=string_tuple)
    detail: str = attrs.field(default="", kw_only=True)

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


@attrs.define
class RegistryDeadlineError(RegistryError):
    """An operation (every attempt and pause of it) outlasted its deadline."""

    deadline: float
    attempts: int
    cause: str

    def __str__(self) -> str:
        attempts = "attempt" if self.attempts == 1 else "attempts"
        return (
            f"registry {self.host}: {self.action} did not finish within its deadline of "
            f"{self.deadline:g} s ({self.attempts} {attempts}; last: {self.cause})"
        )


@attrs.define
class RegistryReplyTooLargeError(RegistryError):
    """A reply that is read whole (a manifest, an index, a token, an error) was larger than
    the client reads into memory."""

    limit: int

    def __str__(self) -> str:
        size = f"{self.limit >> 20} MiB" if self.limit % (1 << 20) == 0 else f"{self.limit} bytes"
        return (
            f"registry {self.host}: {self.action} answered more than {size}, the most read "
            "for a manifest, index, token or error; refused"
        )


@attrs.define
class RegistrySettingError(InputError):
    """A registry client setting (an environment variable or an argument) is not usable."""

    name: str
    value: str
    problem: str

    def __str__(self) -> str:
        return f"{self.name}={self.value!r}: {self.problem}"


class RegistryDigestError(RegistryError):
    """Bytes from (or accepted by) a registry are not those their digest names."""

    def __init__(self, host: str, what: str, expected: str, actual: str) -> None:
        super().__init__(host, f"verifying {what}", detail=f"expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class InsecureRegistryError(InputError, RegistryError):
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


@attrs.define
class BlobSourceError(EnvironmentFailure):
    """A blob to push is missing from its source, or has the wrong size there."""

    digest: str
    path: str
    problem: str

    def __str__(self) -> str:
        return f"cannot push blob {self.digest} from {self.path}: {self.problem}"


@attrs.define
class RegistryAuthError(EnvironmentFailure):
    """A registry or its token server refused us, or asked for credentials we do not have."""

    host: str
    problem: str
    status: int | None = attrs.field(default=None, kw_only=True)
    scopes: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=string_tuple)

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        scopes = f" for {' '.join(self.scopes)}" if self.scopes else ""
        return f"registry {self.host}: authentication failed{scopes}{status}: {self.problem}"


@attrs.define
class CredentialsError(EnvironmentFailure):
    """Docker's configuration or a credential helper could not give credentials."""

    source: str
    problem: str

    def __str__(self) -> str:
        return f"credentials from {self.source}: {self.problem}"


@attrs.define
class PushSourceError(InputError):
    """What to push cannot be read: not a layout, no such tag, a damaged archive."""

    source: str
    problem: str

    def __str__(self) -> str:
        return f"cannot push {self.source}: {self.problem}"

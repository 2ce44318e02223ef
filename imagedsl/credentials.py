"""What looks like a credential: variable names, value formats and files; and masking.

One module answers "is this a secret?" for everyone who asks: ``imagedsl check`` (ENV and ARG
values, context files), the planner (which masks secret-looking values in every table, JSON
and DOT it prints) and ``imagedsl inspect`` (files in image layers). It knows patterns only:
nothing here reads a file or a store.

A *name* looks secret when one of its words (split at ``_``, ``-``, ``.`` and camelCase) is a
credential word (``PASSWORD``, ``TOKEN``, ``SECRET``, a final ``KEY``, ...) and its last word
does not say the value is only about the secret (``_FILE``, ``_PATH``, ``_URL``, ``_ID``,
...). A *value* is a credential by its format (cloud keys, GitHub/GitLab/Slack/npm/PyPI
tokens, private keys, JWTs, URLs with a password) whatever its name.
"""

from __future__ import annotations

import posixpath
import re
from typing import Final

#: Words that make a variable name secret-looking.
_SECRET_WORDS: Final = frozenset(
    {
        "password", "passwd", "pwd", "passphrase", "pass", "secret", "secrets", "token",
        "tokens", "apikey", "credential", "credentials", "creds", "privatekey", "auth",
    }
)  # fmt: skip
#: Credential words that may end a longer word (``PGPASSWORD``).
_SECRET_SUFFIXES: Final = ("password", "passwd", "secret", "token", "apikey", "credentials")
#: A last word that makes the value a reference to a secret, or a fact about one.
_ABOUT_WORDS: Final = frozenset(
    {
        "file", "files", "path", "dir", "url", "uri", "endpoint", "host", "port", "id", "ids",
        "name", "names", "type", "length", "len", "size", "min", "max", "env", "var", "field",
        "header", "expiry", "expires", "ttl", "timeout", "version", "algorithm", "alg",
        "format", "mode", "enabled", "disabled", "required", "user", "username", "count",
        "location", "policy", "prefix", "method", "provider",
    }
)  # fmt: skip
#: Words saying that a key is meant to be public (a GPG fingerprint, a public key).
_PUBLIC_WORDS: Final = frozenset({"public", "pub", "gpg", "pgp", "fingerprint", "keyring"})

#: Words before a final KEY that make it a lookup key rather than a credential.
_LOOKUP_WORDS: Final = frozenset(
    {"cache", "sort", "partition", "primary", "foreign", "lookup", "index", "routing", "shard",
     "group", "bucket", "hash", "map", "dict", "idempotency", "unique", "composite"}
)  # fmt: skip

_WORD: Final = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_REFERENCE: Final = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?:[:?+-][^}]*)?\}?\Z")
_PLACEHOLDERS: Final = frozenset(
    {
        "changeme", "change-me", "change_me", "changethis", "secret", "password", "token",
        "none", "null", "nil", "undefined", "todo", "tbd", "dummy", "example", "placeholder",
        "redacted", "unset", "empty", "default", "test", "true", "false", "yes", "no", "on",
        "off",
    }
)  # fmt: skip
#: Example values published in vendor documentation: not credentials.
_DOCUMENTED_EXAMPLES: Final = frozenset(
    {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
)

#: Value formats, each with the kind reported for it. Order matters only for overlaps.
VALUE_FORMATS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("private-key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    ("aws-access-key", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")),
    ("github-token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})")),
    ("gitlab-token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}")),
    ("slack-token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("slack-webhook", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}")),
    ("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("stripe-key", re.compile(r"\b[sr]k_live_[0-9A-Za-z]{20,}")),
    ("npm-token", re.compile(r"\bnpm_[A-Za-z0-9]{36}\b")),
    ("pypi-token", re.compile(r"\bpypi-AgE[A-Za-z0-9_-]{50,}")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("url-password", re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@]+:([^\s/@]{3,})@[^\s/]")),
)
#: Cheap substrings at least one of which every format above contains: text without any of
#: them is skipped without running the expressions (it is most text).
_FORMAT_HINTS: Final = (
    "PRIVATE KEY", "AKIA", "ASIA", "ABIA", "ACCA", "gh", "github_pat_", "glpat-", "xox",
    "hooks.slack", "AIza", "_live_", "npm_", "pypi-", "eyJ", "://",
)  # fmt: skip


def name_words(name: str) -> list[str]:
    """``AWS_SECRET_ACCESS_KEY`` -> ``["aws", "secret", "access", "key"]``; camelCase too."""
    return [word.lower() for word in _WORD.findall(name)]


def secret_name(name: str) -> bool:
    """Whether a variable of this name is meant to hold a credential."""
    words = name_words(name)
    if not words or words[-1] in _ABOUT_WORDS or _PUBLIC_WORDS.intersection(words):
        return False
    if _SECRET_WORDS.intersection(words):
        return True
    # Words run together still end in one (PGPASSWORD, GHTOKEN); TOKENIZERS does not.
    if any(word.endswith(_SECRET_SUFFIXES) for word in words):
        return True
    # A KEY at the end is a key (API_KEY, STRIPE_KEY), unless it is a lookup key (CACHE_KEY).
    return len(words) > 1 and words[-1] in ("key", "keys") and words[-2] not in _LOOKUP_WORDS


def trivial_value(value: str) -> bool:
    """Whether a value cannot be a credential: empty, a ``$VAR`` reference, a path, a
    placeholder, a number or a flag, one repeated character, or a ``<template>``."""
    text = value.strip()
    if not text or _REFERENCE.match(text) or text.startswith(("/", "./", "~/")):
        return True
    if text.lower() in _PLACEHOLDERS or text in _DOCUMENTED_EXAMPLES:
        return True
    if text.isdigit() and len(text) <= 6:
        return True
    return len(set(text)) == 1 or (text[0], text[-1]) in (("<", ">"), ("{", "}"), ("%", "%"))


def value_format(text: str) -> str | None:
    """The kind of the first credential format found in ``text``, or None."""
    if not any(hint in text for hint in _FORMAT_HINTS):
        return None
    for kind, pattern in VALUE_FORMATS:
        for match in pattern.finditer(text):
            if match.group(0) not in _DOCUMENTED_EXAMPLES:
                return kind
    return None


def secret_pair(name: str, value: str) -> str | None:
    """Why ``name=value`` looks like a credential (``"name"`` or a value format), or None."""
    found = value_format(value)
    if found is not None:
        return found
    if secret_name(name) and not trivial_value(value):
        return "name"
    return None


def mask(value: str) -> str:
    """A value shown without giving it away: a long value keeps 4 characters, no more."""
    return value[:4] + "****" if len(value) >= 16 else "****"


def mask_pair(name: str, value: str) -> str:
    """``value`` masked when ``name=value`` looks like a credential, else unchanged."""
    if secret_name(name) and not trivial_value(value):
        return mask(value)
    return mask_text(value)


def mask_text(text: str) -> str:
    """``text`` with every credential-formatted substring masked."""
    if not any(hint in text for hint in _FORMAT_HINTS):
        return text
    for kind, pattern in VALUE_FORMATS:
        if kind == "url-password":
            text = pattern.sub(_mask_url_password, text)
        else:
            text = pattern.sub(_mask_match, text)
    return text


def _mask_match(match: re.Match[str]) -> str:
    found = match.group(0)
    return found if found in _DOCUMENTED_EXAMPLES else mask(found)


def _mask_url_password(match: re.Match[str]) -> str:
    start, end = match.span(1)
    whole = match.group(0)
    offset = match.start()
    return whole[: start - offset] + "****" + whole[end - offset :]


# -- files -------------------------------------------------------------------------------------

#: Basenames that are credentials whatever they hold.
_SECRET_FILES: Final = {
    ".netrc": "netrc",
    "_netrc": "netrc",
    ".git-credentials": "git-credentials",
    "application_default_credentials.json": "gcp-credentials",
    "accessTokens.json": "azure-credentials",
    "id_rsa": "private-key",
    "id_dsa": "private-key",
    "id_ecdsa": "private-key",
    "id_ed25519": "private-key",
}
_KEYSTORE_SUFFIXES: Final = (".p12", ".pfx", ".jks", ".keystore", ".ppk")
_ENV_TEMPLATES: Final = (".example", ".sample", ".template", ".dist", ".defaults", ".tmpl")
#: Config files that are credentials only when they hold a token: (basename, pattern).
_TOKEN_FILES: Final = {
    ".npmrc": (
        "npmrc",
        re.compile(rb"(?m)^\s*[^#;\s]*:?_(?:authToken|auth|password)\s*=\s*[^\s$]"),
    ),
    ".yarnrc.yml": ("yarnrc", re.compile(rb"(?m)^\s*npmAuth(?:Token|Ident)\s*:\s*[\"']?[^\s\"'$]")),
    ".pypirc": ("pypirc", re.compile(rb"(?m)^\s*password\s*[=:]\s*[^\s$]")),
    "config.json": ("docker-config", re.compile(rb"\"auth\"\s*:\s*\"[A-Za-z0-9+/=]{8,}\"")),
}
#: Read at most this much of a file to look for credentials in it.
CONTENT_LIMIT: Final = 64 << 10
_PEM_PRIVATE: Final = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")


def path_kind(path: str) -> str | None:
    """The kind of credential a file is by its path alone (``.git`` included), or None."""
    if ".git" in path and ".git" in path.strip("/").split("/"):
        return "git-directory"
    directory, _, base = path.rstrip("/").rpartition("/")
    if base in _SECRET_FILES:
        return _SECRET_FILES[base]
    if base.startswith(".env") and (
        base == ".env" or (base.startswith(".env.") and not base.endswith(_ENV_TEMPLATES))
    ):
        return "dotenv"
    if base == "credentials" and directory.rpartition("/")[2] == ".aws":
        return "aws-credentials"
    if base.endswith(_KEYSTORE_SUFFIXES):
        return "putty-key" if base.endswith(".ppk") else "keystore"
    return None


#: Extensions of source code, markup and media: files whose bytes ``check`` does not read
#: (keys live in key files and configuration; reading every source file of a big context on
#: each edit would cost more than the plan).
_NOT_KEY_FILES: Final = frozenset(
    {
        ".py", ".pyi", ".pyc", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".go", ".rs", ".c",
        ".h", ".cc", ".cpp", ".hpp", ".java", ".kt", ".scala", ".rb", ".php", ".cs", ".swift",
        ".css", ".scss", ".less", ".html", ".htm", ".svg", ".md", ".rst", ".png", ".jpg",
        ".jpeg", ".gif", ".ico", ".webp", ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp3",
        ".mp4", ".zip", ".gz", ".tgz", ".whl", ".jar", ".so", ".o", ".a", ".class", ".map",
    }
)  # fmt: skip


#: Extensions (lowercased) of the files whose bytes are not read: :func:`source_or_media`.
UNREAD_SUFFIXES: Final = _NOT_KEY_FILES
#: Every path :func:`path_kind` names holds one of these: a path with none of them is no
#: credential by its path (what lets a reader of many paths skip most of them at once).
#: (Few, as each is a pass over the paths: ``netrc`` stands for ``.netrc`` and ``_netrc``,
#: ``id_`` for the SSH keys; ``.git-credentials`` holds ``.git``, the GCP file
#: ``credentials``.)
PATH_HINTS: Final = (
    ".git", ".env", "credentials", "netrc", "id_", "accessTokens.json", *_KEYSTORE_SUFFIXES
)  # fmt: skip


def needs_content(path: str, size: int) -> bool:
    """Whether :func:`content_kind` should see this context file's bytes: small files, not
    known by name, and not source code, markup or media."""
    if not 0 < size <= CONTENT_LIMIT or path_kind(path) is not None:
        return False
    return not source_or_media(path)


def source_or_media(path: str) -> bool:
    """Whether a path names source code, markup or media (by its extension)."""
    base = path.rpartition("/")[2]
    dot = base.rfind(".")
    return dot > 0 and base[dot:].lower() in _NOT_KEY_FILES


def content_kind(path: str, data: bytes) -> str | None:
    """The kind of credential a file holds by its content, or None."""
    base = posixpath.basename(path)
    token_file = _TOKEN_FILES.get(base)
    if token_file is not None:
        kind, pattern = token_file
        in_place = (
            kind != "docker-config" or posixpath.basename(posixpath.dirname(path)) == ".docker"
        )
        if in_place and pattern.search(data):
            return kind
    if data.startswith(b"PuTTY-User-Key-File-"):
        return "private-key"
    if b"PRIVATE KEY" in data and _PEM_PRIVATE.search(data):
        return "private-key"
    if base.endswith(".json") and b'"private_key"' in data and b'"service_account"' in data:
        return "gcp-credentials"
    return None


def file_kind(path: str, data: bytes | None) -> str | None:
    """:func:`path_kind`, else :func:`content_kind` when the bytes are given."""
    return path_kind(path) or (None if data is None else content_kind(path, data))


#: The formats worth looking for in any file of an image: specific enough that documentation
#: and test data do not match them by accident (JWTs and URLs with passwords are left out).
_FILE_FORMATS: Final = frozenset(
    {"aws-access-key", "github-token", "gitlab-token", "slack-token", "slack-webhook",
     "google-api-key", "stripe-key", "npm-token", "pypi-token"}
)  # fmt: skip
#: One pass over a file finds whether any of those formats may be in it.
_FILE_HINT: Final = re.compile(
    rb"AKIA|ASIA|gh[pousr]_|github_pat_|glpat-|xox|hooks\.slack\.com|AIza|k_live_|npm_|pypi-AgE"
)


def token_in_file(data: bytes) -> str | None:
    """The kind of the first token in a specific credential format in a file's bytes."""
    if b"\0" in data[:1024] or _FILE_HINT.search(data) is None:
        return None
    text = data.decode("latin-1")
    for kind, pattern in VALUE_FORMATS:
        if kind in _FILE_FORMATS:
            for match in pattern.finditer(text):
                if match.group(0) not in _DOCUMENTED_EXAMPLES:
                    return kind
    return None

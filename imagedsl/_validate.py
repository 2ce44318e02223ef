"""Argument checks for the DSL: each refuses a wrong value where ``build.py`` wrote it.

Every check takes the step and argument it checks (for the message of the
:class:`~imagedsl.errors.StepArgumentError` it raises) and returns the value normalised as
the steps store it. :func:`caller_location` finds the user's line that made a value.
"""

from __future__ import annotations

import posixpath
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from imagedsl.errors import SourceLocation, StepArgumentError
from imagedsl.oci.platform import canonical_platform

_PACKAGE_DIR: Final = str(Path(__file__).resolve().parent)


def caller_location() -> SourceLocation | None:
    """Return the first stack frame outside the imagedsl package: the user's line."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_PACKAGE_DIR):
            return SourceLocation(filename, frame.f_lineno)
        frame = frame.f_back  # type: ignore[assignment]
    return None


# -- argument checks -------------------------------------------------------------------------


def check_str(step: str, argument: str, value: object, *, empty: bool = False) -> str:
    """Refuse anything but a string (and, unless allowed, an empty one)."""
    if not isinstance(value, str):
        raise StepArgumentError(step, argument, f"must be a str, not {type(value).__name__}")
    if not empty and not value:
        raise StepArgumentError(step, argument, "must not be empty")
    if "\x00" in value:
        raise StepArgumentError(step, argument, "must not contain NUL characters")
    return value


def check_str_seq(
    step: str, argument: str, value: object, *, empty: bool = False
) -> tuple[str, ...]:
    """Refuse anything but a non-string sequence of strings, non-empty unless ``empty`` (an
    exec-form argument may be ``""``: ``ENTRYPOINT [""]``)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise StepArgumentError(step, argument, "must be a list of str")
    return tuple(
        check_str(step, f"{argument}[{i}]", item, empty=empty) for i, item in enumerate(value)
    )


def check_bool(step: str, argument: str, value: object) -> bool:
    """Refuse anything but a real bool (``1`` or ``"yes"`` are mistakes, not flags)."""
    if not isinstance(value, bool):
        raise StepArgumentError(step, argument, f"must be a bool, not {type(value).__name__}")
    return value


def check_int(step: str, argument: str, value: object, *, low: int, high: int) -> int:
    """Refuse non-integers and integers out of ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise StepArgumentError(step, argument, f"must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise StepArgumentError(step, argument, f"must be between {low} and {high}, got {value}")
    return value


def check_choice(step: str, argument: str, value: object, choices: Sequence[str]) -> str:
    """Refuse a value outside ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise StepArgumentError(step, argument, f"must be one of {allowed}, got {value!r}")
    return str(value)


def check_abs_path(step: str, argument: str, value: object) -> str:
    """Refuse a non-absolute container path; return it cleaned (no ``..`` above root)."""
    path = check_str(step, argument, value)
    if not path.startswith("/"):
        raise StepArgumentError(step, argument, f"must be an absolute path, got {path!r}")
    return clean_container_path(path)


_VARIABLE: Final = re.compile(r"(?<!\\)\$(?:\{|[A-Za-z_])")


def has_variable(path: str) -> bool:
    """Whether a path holds a ``$VAR``/``${VAR}`` (``\\$`` is a literal ``$``)."""
    return "$" in path and _VARIABLE.search(path) is not None


def check_stage_path(step: str, argument: str, value: object) -> str:
    """A path inside a stage: absolute and cleaned, or holding variables (kept as written,
    expanded and cleaned by the planner with the stage's ARG and ENV values)."""
    path = check_str(step, argument, value)
    if is_template(path):
        return path
    return check_abs_path(step, argument, path)


def clean_container_path(path: str) -> str:
    """Normalise a container path like Go's ``path.Clean`` (``..`` cannot climb above /)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


#: An ENV or ARG name as BuildKit takes it: anything up to ``=`` but blanks (Java and Spring
#: read ``spring.profiles.active``); no ``$`` or quote, which a Dockerfile line would read as
#: expansion or quoting. A shell cannot expand such a name, but the process gets it.
_ENV_NAME: Final = re.compile(r"[^\s=$\"'`\\]+\Z")
#: A LABEL key: anything but ``=`` (BuildKit splits a pair at its first one), on one line.
_LABEL_KEY: Final = re.compile(r"[^=\n\r]+\Z")
_PORT: Final = re.compile(r"(?P<low>\d{1,5})(?:-(?P<high>\d{1,5}))?(?:/(?P<proto>tcp|udp|sctp))?\Z")
_PLATFORM: Final = re.compile(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?\Z")
#: ``user``, ``user:group`` or ``:group`` (BuildKit's user is then root), names or ids.
_OWNER: Final = re.compile(r"(?:[^\s:]+(?::[^\s:]+)?|:[^\s:]+)\Z")
_CHMOD: Final = re.compile(r"[0-7]{1,5}\Z")
_SIGNAL: Final = re.compile(r"(?:SIG)?[A-Z][A-Z0-9+-]*\Z|\d{1,2}\Z")
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+\Z")


def check_env_name(step: str, argument: str, value: object) -> str:
    """Refuse a name no Dockerfile could set (see :data:`_ENV_NAME`)."""
    name = check_str(step, argument, value)
    if not _ENV_NAME.match(name):
        raise StepArgumentError(step, argument, f"is not a valid variable name: {name!r}")
    return name


def is_template(text: str) -> bool:
    """Whether ``text`` names ``$VAR``s, to be checked once the planner has expanded them."""
    return "$" in text


def check_platform(step: str, argument: str, value: object) -> str:
    """Refuse a platform that is not ``os/arch[/variant]`` (or a ``$VAR`` template)."""
    platform = check_str(step, argument, value)
    if is_template(platform):
        return platform
    try:
        return canonical_platform(platform)
    except ValueError:
        pass
    if not _PLATFORM.match(platform):
        raise StepArgumentError(
            step, argument, f"must look like 'linux/amd64' or 'linux/arm/v7', got {platform!r}"
        )
    return platform


def check_owner(step: str, argument: str, value: object) -> str:
    """Refuse an owner that is not ``user``, ``user:group`` or ``:group`` (names or ids: an
    empty user is root, as BuildKit reads ``--chown=:group``). One holding
    ``$VAR``s is kept as written: BuildKit splits it at ``:`` once expanded, so a ``:`` in
    ``${NAME:-app}`` is no separator."""
    owner = check_str(step, argument, value)
    if is_template(owner):
        if any(c.isspace() for c in owner):
            raise StepArgumentError(step, argument, f"must hold no spaces, got {owner!r}")
        return owner
    if not _OWNER.match(owner):
        raise StepArgumentError(
            step, argument, f"must be 'user', 'user:group' or ':group', got {owner!r}"
        )
    return owner


def check_user(step: str, user: object, group: object) -> str:
    """``USER``'s value from a user and an optional group, each a name or an id:
    ``1000`` -> ``"1000"``, ``(1000, 1000)`` -> ``"1000:1000"``; ``"app:app"`` is kept."""

    def part(argument: str, value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(check_int(step, argument, value, low=0, high=2**32 - 1))
        text = check_str(step, argument, value)
        if ":" in text and group is not None and not is_template(text):
            raise StepArgumentError(step, argument, f"holds ':' and a group is given: {text!r}")
        return text

    owner = part("user", user)
    if group is not None:
        owner += ":" + part("group", group)
    if owner.startswith(":"):  # a --chown may name only a group; a USER names its user
        raise StepArgumentError(step, "user", f"must be 'user' or 'user:group', got {owner!r}")
    return check_owner(step, "user", owner)


#: Instructions BuildKit accepts after ``ONBUILD`` (not ONBUILD, FROM or MAINTAINER).
TRIGGER_INSTRUCTIONS: Final = frozenset(
    {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "HEALTHCHECK", "LABEL",
        "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
    }
)  # fmt: skip


def check_trigger(step: str, value: object) -> str:
    """Refuse an ``ONBUILD`` trigger that BuildKit would refuse: not one line, or not one of
    :data:`TRIGGER_INSTRUCTIONS` followed by its arguments. Return it trimmed."""
    text = check_str(step, "instruction", value).strip()
    if "\n" in text or "\r" in text or not text.isprintable():
        raise StepArgumentError(step, "instruction", f"must be one printable line, got {value!r}")
    keyword, _, rest = text.partition(" ")
    if keyword.upper() not in TRIGGER_INSTRUCTIONS:
        allowed = ", ".join(sorted(TRIGGER_INSTRUCTIONS))
        raise StepArgumentError(
            step, "instruction", f"must start with one of {allowed}, got {keyword!r}"
        )
    if not rest.strip():
        raise StepArgumentError(step, "instruction", f"{keyword} needs arguments")
    return text


def check_chmod(step: str, argument: str, value: object) -> str:
    """Accept an int mode (``0o755``) or octal digits (``"755"``); return four octal digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0o7777:
            raise StepArgumentError(step, argument, f"must be a mode up to 0o7777, got {value:#o}")
        return f"{value:04o}"
    text = check_str(step, argument, value)
    if not _CHMOD.match(text) or int(text, 8) > 0o7777:
        raise StepArgumentError(step, argument, f"must be octal digits like '755', got {text!r}")
    return f"{int(text, 8):04o}"  # as BuildKit reads it: "7" is 0007, "00755" is 0755


def check_duration(step: str, argument: str, value: object) -> str:
    """Accept seconds (int/float) or a Go duration ("30s", "1m30s"); return the Go form."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise StepArgumentError(step, argument, f"must not be negative, got {value}")
        return f"{value:g}s"
    text = check_str(step, argument, value)
    if not _DURATION.match(text):
        raise StepArgumentError(step, argument, f"must be a duration like '30s', got {text!r}")
    return text


def _check_mapping(step: str, argument: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise StepArgumentError(step, argument, "must be a mapping of str to str")
    return value


def env_items(step: str, values: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """Check ``ENV``/``LABEL``-like pairs, keeping the user's order."""
    pairs = []
    for name, value in _check_mapping(step, "values", values).items():
        pairs.append((check_env_name(step, "name", name), check_str(step, name, value, empty=True)))
    if not pairs:
        raise StepArgumentError(step, "values", "must name at least one variable")
    return tuple(pairs)


def parse_port(step: str, value: object) -> str:
    """Normalise ``8080``, ``"8080"``, ``"53/udp"``, ``"8000-8010/tcp"`` to ``PORT/proto``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = check_str(step, "ports", value)
    if is_template(text):
        return text
    match = _PORT.match(text)
    if not match:
        raise StepArgumentError(step, "ports", f"must look like 8080 or '53/udp', got {text!r}")
    low = int(match["low"])
    high = int(match["high"]) if match["high"] else low
    if not 1 <= low <= high <= 65535:
        raise StepArgumentError(step, "ports", f"must be in 1..65535 (low <= high), got {text!r}")
    span = f"{low}-{high}" if high != low else str(low)
    return f"{span}/{match['proto'] or 'tcp'}"


def parse_signal(step: str, value: object) -> str:
    """Accept ``"SIGTERM"``, ``"TERM"`` (in any case) or a number; return it as written, as
    BuildKit keeps it in the image config once it has checked it."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = check_str(step, "signal", value)
    if not _SIGNAL.match(text.upper()):
        raise StepArgumentError(step, "signal", f"must be a signal name or number, got {text!r}")
    if text.isdigit() and not 1 <= int(text) <= 64:
        raise StepArgumentError(step, "signal", f"must be in 1..64, got {text}")
    return text


def parse_label_items(step: str, values: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """Check LABEL pairs: keys are free-form (``org.opencontainers.image.source``)."""
    pairs = []
    for key, value in _check_mapping(step, "labels", values).items():
        key_text = check_str(step, "label key", key)
        if not _LABEL_KEY.match(key_text):
            raise StepArgumentError(
                step, "label key", f"is empty, has '=' or a line break: {key!r}"
            )
        pairs.append((key_text, check_str(step, key_text, value, empty=True)))
    if not pairs:
        raise StepArgumentError(step, "labels", "must name at least one label")
    return tuple(pairs)

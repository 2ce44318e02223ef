"""A base image's ONBUILD triggers, read into the steps the OCI backend runs for them.

A build ``FROM`` an image whose config holds ``OnBuild`` triggers runs them first, in order,
as BuildKit does (each is a Dockerfile instruction's text, ``RUN make`` say). The OCI backend
reads each one into the same step values ``build.py`` makes (:mod:`imagedsl.steps`), with
``$VAR`` expressions kept for the build state to expand, exactly as a Dockerfile's would be.

Triggers that read outside the base image are refused, naming the base and the trigger:
``COPY`` and ``ADD`` read the Dockerfile's build context, which a ``build.py`` has no one
of, and ``ARG`` takes a ``--build-arg`` that no cache key of a base covers. So are RUN flags
(``--mount``, ``--network``) and a word whose spelling this reader cannot keep exact (a
literal backslash right before a ``$`` expression).
"""

from __future__ import annotations

import json
import re
from typing import Final

import attrs

from imagedsl._validate import (
    check_duration,
    check_int,
    check_str,
    parse_port,
    parse_signal,
)
from imagedsl.errors import InputError, SourceLocation, StepArgumentError
from imagedsl.steps import (
    Cmd,
    Entrypoint,
    Env,
    Expose,
    Healthcheck,
    Label,
    Run,
    Shell,
    Step,
    StopSignal,
    User,
    Volume,
    Workdir,
)

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEALTH_OPTION: Final = re.compile(r"--(interval|timeout|start-period|retries)=(\S+)\Z")
_HEALTHCHECK: Final = re.compile(
    r"(?P<options>(?:--\S+\s+)*)CMD\s+(?P<command>\S.*)\Z", re.I | re.S
)


@attrs.define
class TriggerError(InputError):
    """A base image's ONBUILD trigger that a backend cannot run."""

    base: str
    trigger: str
    problem: str

    def __str__(self) -> str:
        return f"{self.base}: ONBUILD {self.trigger}: {self.problem}"


#: Triggers that read what no key of the base covers, refused by both backends.
_READS_OUTSIDE: Final = {
    **{
        keyword: f"{keyword} in a trigger reads the Dockerfile's build context, which a "
        "build.py has none of; copy the files in build.py after the FROM instead"
        for keyword in ("COPY", "ADD")
    },
    "ARG": "ARG in a trigger takes a --build-arg no cache key of a base covers",
}


def check_reads_inside(base: str, triggers: object, location: SourceLocation | None) -> None:
    """Refuse a base whose ``OnBuild`` triggers (as its config holds them) read outside it: the
    docker backend's BuildKit runs the others itself, keyed by the base's identity."""
    for text in triggers if isinstance(triggers, list) else ():
        keyword = str(text).strip().partition(" ")[0].upper()
        if keyword in _READS_OUTSIDE:
            error = TriggerError(base, str(text), _READS_OUTSIDE[keyword])
            raise error.with_location(location)


class _Unreadable(ValueError):
    """The trigger's text cannot be read exactly; the message says why."""


def parse_trigger(base: str, text: str, location: SourceLocation | None = None) -> Step:
    """The step an ONBUILD trigger of ``base`` (the FROM at ``location``) stands for (raises
    :class:`TriggerError`)."""
    keyword, _, rest = text.strip().partition(" ")
    rest = rest.strip()
    try:
        return _parse(keyword.upper(), rest)
    except (_Unreadable, StepArgumentError) as error:
        raise TriggerError(base, text, str(error)).with_location(location) from None


def _parse(keyword: str, rest: str) -> Step:
    if not rest:
        raise _Unreadable(f"{keyword} needs arguments")
    match keyword:
        case "RUN":
            if rest.startswith("--"):
                raise _Unreadable("RUN flags (--mount, --network) are not supported in triggers")
            argv, shell_form = _command(rest)
            return Run(command=argv, shell_form=shell_form)
        case "CMD" | "ENTRYPOINT":
            argv, shell_form = _command(rest)
            if keyword == "CMD":
                return Cmd(command=argv, shell_form=shell_form)
            return Entrypoint(command=argv, shell_form=shell_form)
        case "ENV":
            return Env(items=_pairs(rest))
        case "LABEL":
            return Label(items=_pairs(rest))
        case "WORKDIR":
            return Workdir(path=check_str("WORKDIR", "path", _word(rest)))
        case "USER":
            return User(user=check_str("USER", "user", _word(rest)))
        case "EXPOSE":
            return Expose(ports=tuple(parse_port("EXPOSE", p) for p in _words(rest)))
        case "VOLUME":
            paths = _json_list(rest)
            return Volume(paths=tuple(paths if paths is not None else _words(rest)))
        case "STOPSIGNAL":
            signal = _word(rest)
            parse_signal("STOPSIGNAL", signal)
            return StopSignal(signal=signal)  # kept as written, as BuildKit keeps it
        case "SHELL":
            shell = _json_list(rest)
            if not shell:
                raise _Unreadable("SHELL takes a JSON array of strings")
            return Shell(command=tuple(shell))
        case "HEALTHCHECK":
            return _healthcheck(rest)
        case "COPY" | "ADD" | "ARG":
            raise _Unreadable(_READS_OUTSIDE[keyword])
    raise _Unreadable(f"{keyword} is not an instruction a trigger can hold")


def _json_list(text: str) -> list[str] | None:
    """The strings of a JSON array (exec form), or None when ``text`` is not one."""
    if not text.startswith("["):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
        return None
    return parsed


def _command(text: str) -> tuple[tuple[str, ...], bool]:
    """(argv, shell form) of RUN, CMD and ENTRYPOINT: exec form when a JSON array."""
    argv = _json_list(text)
    if argv is not None:
        return tuple(argv), False
    return (text,), True


def _healthcheck(text: str) -> Healthcheck:
    if text.upper() == "NONE":
        return Healthcheck(test=None)
    parts = _HEALTHCHECK.match(text)
    if parts is None:
        raise _Unreadable("HEALTHCHECK takes [--option=value ...] CMD command, or NONE")
    options: dict[str, str] = {}
    for word in parts["options"].split():
        option = _HEALTH_OPTION.match(word)
        if option is None:
            raise _Unreadable(f"unknown HEALTHCHECK option {word!r}")
        options[option[1]] = option[2]
    argv, shell_form = _command(parts["command"].strip())
    step = "HEALTHCHECK"

    def duration(name: str) -> str | None:
        value = options.get(name)
        return None if value is None else check_duration(step, name, value)

    retries = options.get("retries")
    return Healthcheck(
        test=argv,
        shell_form=shell_form,
        interval=duration("interval"),
        timeout=duration("timeout"),
        start_period=duration("start-period"),
        retries=None if retries is None else _retries(retries),
    )


def _retries(text: str) -> int:
    if not text.isdigit():
        raise _Unreadable(f"--retries must be a number, got {text!r}")
    return check_int("HEALTHCHECK", "retries", int(text), low=0, high=1_000_000)


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    """ENV and LABEL: ``k=v k2="v 2"``, or the old ``k value with spaces``."""
    words = _split(text)
    if "=" not in words[0][0]:
        # The old form: a name, then the rest of the line as one value.
        name = _Lexer(words[0][0]).word()
        return ((name, _word(text[words[0][1] :].strip())),)
    pairs = []
    for raw, _ in words:
        word = _Lexer(raw).word()
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise _Unreadable(f"expected NAME=VALUE, got {raw!r}")
        pairs.append((name, value))
    return tuple(pairs)


def _word(text: str) -> str:
    """The rest of a line as one word (blanks kept, as BuildKit reads WORKDIR and USER)."""
    return _Lexer(text).word()


def _words(text: str) -> list[str]:
    return [_Lexer(raw).word() for raw, _ in _split(text)]


def _split(text: str) -> list[tuple[str, int]]:
    """Blank-separated raw words (quotes and escapes kept), with where each ends."""
    words: list[tuple[str, int]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        quote = ""
        while i < n and (quote or not text[i].isspace()):
            char = text[i]
            if char == "\\" and quote != "'" and i + 1 < n:
                i += 2
                continue
            if quote and char == quote:
                quote = ""
            elif not quote and char in "'\"":
                quote = char
            i += 1
        words.append((text[start:i], i))
    if not words:
        raise _Unreadable("expected arguments")
    return words


class _Lexer:
    """One word as BuildKit's shell lexer reads it, in imagedsl's expansion syntax: quotes
    and escapes resolved, ``$`` expressions kept for the build state to expand, a literal
    ``$`` written ``\\$``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0
        self.out: list[str] = []

    def word(self) -> str:
        """The word (blanks in it are kept: a remainder of a line reads as one word)."""
        text = self.text
        while self.at < len(text):
            char = text[self.at]
            if char == "'":
                end = text.find("'", self.at + 1)
                if end < 0:
                    raise _Unreadable(f"unterminated quote in {text!r}")
                self._literal(text[self.at + 1 : end])
                self.at = end + 1
            elif char == '"':
                self._double_quoted()
            elif char == "\\":
                self._literal(text[self.at + 1 : self.at + 2])
                self.at += 2
            elif char == "$":
                self._expression()
            else:
                self._literal(char)
                self.at += 1
        return "".join(self.out)

    def _literal(self, piece: str) -> None:
        for char in piece:
            self.out.append("\\$" if char == "$" else char)

    def _double_quoted(self) -> None:
        text = self.text
        self.at += 1
        while self.at < len(text):
            char = text[self.at]
            if char == '"':
                self.at += 1
                return
            if char == "\\" and text[self.at + 1 : self.at + 2] in ('"', "$", "\\"):
                self._literal(text[self.at + 1])
                self.at += 2
            elif char == "$":
                self._expression()
            else:
                self._literal(char)
                self.at += 1
        raise _Unreadable(f"unterminated quote in {text!r}")

    def _expression(self) -> None:
        text = self.text
        if self.out and self.out[-1] == "\\":
            raise _Unreadable(f"a literal backslash before ${text[self.at + 1 :]!r}")
        if text[self.at + 1 : self.at + 2] == "{":
            depth, end = 0, self.at + 1
            while end < len(text):
                if text[end] == "{":
                    depth += 1
                elif text[end] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                end += 1
            else:
                raise _Unreadable(f"no closing '}}' in {text!r}")
            self.out.append(text[self.at : end + 1])
            self.at = end + 1
            return
        name = _NAME.match(text, self.at + 1)
        if name is None:
            self._literal("$")  # a lone $ (or $1, $@): BuildKit keeps it
            self.at += 1
            return
        self.out.append(text[self.at : name.end()])
        self.at = name.end()

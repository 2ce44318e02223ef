"""Spelling strings as Dockerfile words, so that BuildKit reads back exactly what we meant.

BuildKit runs most arguments through its shell-word lexer (quotes, backslash escapes and
``$VAR`` expansion); RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK are not expanded at all. Two
kinds of words come out of imagedsl values:

- *expanding* words (ENV and ARG values, WORKDIR, USER, LABEL, VOLUME, COPY destinations):
  imagedsl expands ``$VAR``, ``${VAR}``, ``${VAR:-word}``, ``${VAR:+word}`` and
  ``${VAR:?word}`` and reads ``\\$`` as a literal ``$`` (:func:`imagedsl.buildstate.expand`, whose own
  :func:`~imagedsl.buildstate.split_expressions` finds them here, nested ones too). Those
  expressions are written out for BuildKit to expand; every other character is escaped so
  BuildKit takes it literally (a lone ``$1`` stays ``$1``, a backslash stays a backslash).
- *literal* words (paths of files in the build context, ``COPY --from`` paths): imagedsl never
  expands them, so every ``$`` is escaped.

A Dockerfile instruction is one line; a value with a line break cannot be spelled in one
except inside JSON, which only exec-form instructions accept. :class:`Unspellable` says why a
value cannot be written; the lowering turns it into an error that names the step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Final

from imagedsl.buildstate import Expression, split_expressions

#: Characters that need no quoting in any word context we write.
_PLAIN: Final = re.compile(r"[A-Za-z0-9_./:@%+,=~^-]+\Z")
#: Characters BuildKit's lexer treats specially inside double quotes.
_IN_DOUBLE_QUOTES: Final = re.compile(r'(["\\$])')
#: Characters BuildKit's lexer treats specially outside quotes (and inside ``${...}``).
_UNQUOTED_SPECIAL: Final = re.compile(r"([\\\"'$}\s])")
#: ``<<WORD``: a heredoc to Dockerfile parsers that support them (1.4+): never in a shell form.
_HEREDOC: Final = re.compile(r"<<-?\s*[\"']?[A-Za-z_]")


class Unspellable(ValueError):
    """A value cannot be written in the Dockerfile position it is needed in."""

    def __init__(self, value: str, problem: str) -> None:
        super().__init__(value, problem)
        self.value = value
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.value!r} {self.problem}"


def check_one_line(value: str) -> str:
    """Refuse what cannot stand inside one Dockerfile line."""
    if "\n" in value or "\r" in value:
        raise Unspellable(value, "contains a line break, which no Dockerfile word can hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Unspellable(value, "is not valid Unicode (a lone surrogate)") from None
    return value


def _expression(expression: Expression, following: str) -> str:
    """Re-spell one expression so BuildKit reads the same one."""
    name = expression.name
    if not expression.braced:
        # BuildKit's names run over any letter or digit (Unicode ones too): brace when needed.
        if following and (following[0].isalnum() or following[0] == "_"):
            return "${" + name + "}"
        return "$" + name
    if expression.op is None:
        return "${" + name + "}"
    pieces = split_expressions(expression.word or "")
    inner = "".join(
        _expression(piece, _following(pieces, i) or "}")
        if isinstance(piece, Expression)
        else _UNQUOTED_SPECIAL.sub(r"\\\1", piece)
        for i, piece in enumerate(pieces)
    )
    return "${" + name + expression.op + inner + "}"


def _following(pieces: Sequence[str | Expression], index: int) -> str:
    """The text right after piece ``index`` (empty at the end)."""
    for piece in pieces[index + 1 :]:
        text = piece.text if isinstance(piece, Expression) else piece
        if text:
            return text
    return ""


def _spell(pieces: Sequence[str | Expression], *, quote: bool) -> str:
    out: list[str] = []
    for i, piece in enumerate(pieces):
        if isinstance(piece, Expression):
            out.append(_expression(piece, _following(pieces, i)))
        elif quote:
            out.append(_IN_DOUBLE_QUOTES.sub(r"\\\1", piece))
        else:
            out.append(piece)
    text = "".join(out)
    return f'"{text}"' if quote else text


#: ``${NAME-word}``, ``${NAME+word}``, ``${NAME?word}`` and ``${NAME:?word}``: forms the
#: Dockerfile frontend built into Docker 20.10 refuses ("missing ':' in substitution").
_NEWER_EXPANSION: Final = re.compile(r"(?<!\\)\$\{[A-Za-z_][A-Za-z0-9_]*(?:[-+?]|:\?)")


def newer_expansion(lines: Sequence[str]) -> bool:
    """Whether instruction ``lines`` BuildKit expands hold an expansion newer frontends add."""
    return any(_NEWER_EXPANSION.search(line) for line in lines)


def expanding_word(value: str) -> str:
    """A word BuildKit expands to what imagedsl expands ``value`` to (quoted when needed)."""
    check_one_line(value)
    pieces = split_expressions(value)
    plain = all(isinstance(piece, Expression) or _PLAIN.match(piece) for piece in pieces)
    return _spell(pieces, quote=not (plain and value))


def literal_word(value: str) -> str:
    """A word BuildKit reads as exactly ``value`` (quoted when needed, ``$`` escaped)."""
    check_one_line(value)
    if value and _PLAIN.match(value):
        return value
    return _spell([value], quote=True)


def json_word(value: str, *, expanding: bool) -> str:
    """One element of a JSON-form COPY/ADD/VOLUME: BuildKit still runs it through its lexer."""
    check_one_line(value)
    pieces = split_expressions(value) if expanding else [value]
    out: list[str] = []
    for i, piece in enumerate(pieces):
        if isinstance(piece, Expression):
            out.append(_expression(piece, _following(pieces, i)))
        else:
            out.append(re.sub(r"([\\\"'$])", r"\\\1", piece))
    return "".join(out)


def is_plain(value: str) -> bool:
    """Whether ``value`` needs no quoting or escaping anywhere."""
    return bool(value) and bool(_PLAIN.match(value))


def json_array(items: Sequence[str]) -> str:
    """A JSON array of strings as exec-form instructions take it (no lexer runs on it)."""
    for item in items:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise Unspellable(item, "is not valid Unicode (a lone surrogate)") from None
    return json.dumps(list(items), ensure_ascii=False)


def shell_form_is_exact(command: str) -> bool:
    """Whether ``RUN command`` (shell form) hands BuildKit exactly ``command``.

    The parser trims the line, joins a line ending in a backslash with the next, takes leading
    ``--words`` for flags, reads a line starting with ``[`` that parses as a JSON array as exec
    form, and (1.4+) reads ``<<WORD`` as a heredoc. Anything that is not printable on one line goes to exec form too.
    """
    if not command or command != command.strip() or not command.isprintable():
        return False
    if command.endswith("\\") or command.startswith("--") or _HEREDOC.search(command):
        return False
    if command.startswith("["):
        try:
            parsed = json.loads(command)
        except ValueError:
            return True
        return not isinstance(parsed, list)
    return True


_FLAG_REFERENCE: Final = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")


def expanding_flag_value(value: str, *, what: str) -> str:
    """A flag value BuildKit expands (``--chown``): plain characters and ``$VAR``/``${VAR}``
    references, kept as written so that a ``--build-arg`` still reaches them."""
    rest = _FLAG_REFERENCE.sub("x", value)
    if not is_plain(rest) or "," in rest:
        raise Unspellable(
            value,
            f"cannot be written as {what} (only letters, digits, ._/:@%+=~^- and $VAR are safe)",
        )
    return value


def flag_value(value: str, *, what: str) -> str:
    """A ``--flag=value`` or ``--mount`` option value: plain characters only."""
    if not is_plain(value) or "," in value:
        raise Unspellable(
            value, f"cannot be written as {what} (only letters, digits and ._/:@%+=~^- are safe)"
        )
    return value

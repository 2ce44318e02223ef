"""An independent model of how BuildKit's Dockerfile frontend reads a word, for the tests.

Written from the Dockerfile reference and BuildKit's documented lexer behaviour (not from
imagedsl's spelling code): single quotes keep everything; inside double quotes a backslash
escapes only ``"``, ``$`` and ``\\``; outside quotes a backslash escapes any character;
``$NAME``, ``${NAME}``, ``${NAME:-word}``, ``${NAME:+word}`` and ``${NAME:?word}`` (and the
forms without ``:``) expand. ``test_docker_backend`` checks this model against a real engine.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

_SPECIAL_PARAMETERS = "@*#?-$!0"


def _is_letter(char: str) -> bool:
    """Go's unicode.IsLetter: a code point in a letter category."""
    return bool(char) and unicodedata.category(char).startswith("L")


def _is_digit(char: str) -> bool:
    """Go's unicode.IsDigit: a decimal digit (category Nd), not superscripts and the like."""
    return bool(char) and unicodedata.category(char) == "Nd"


class LexError(ValueError):
    """BuildKit would refuse the word."""


class _Reader:
    def __init__(self, text: str, env: Mapping[str, str]) -> None:
        self.text = text
        self.env = env
        self.at = 0

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        self.at += 1
        return char

    def word(self, stop: str = "") -> str:
        out: list[str] = []
        while self.at < len(self.text):
            char = self.peek()
            if stop and char == stop:
                self.take()
                return "".join(out)
            if char == "'":
                out.append(self.single_quoted())
            elif char == '"':
                out.append(self.double_quoted())
            elif char == "$":
                out.append(self.dollar())
            elif char == "\\":
                self.take()
                if self.at < len(self.text):
                    out.append(self.take())
            else:
                out.append(self.take())
        if stop:
            raise LexError(f"no closing {stop!r} in {self.text!r}")
        return "".join(out)

    def single_quoted(self) -> str:
        self.take()
        end = self.text.find("'", self.at)
        if end < 0:
            raise LexError(f"unterminated single quote in {self.text!r}")
        value = self.text[self.at : end]
        self.at = end + 1
        return value

    def double_quoted(self) -> str:
        self.take()
        out: list[str] = []
        while True:
            char = self.peek()
            if not char:
                raise LexError(f"unterminated double quote in {self.text!r}")
            if char == '"':
                self.take()
                return "".join(out)
            if char == "$":
                out.append(self.dollar())
                continue
            self.take()
            if char == "\\":
                following = self.peek()
                if not following:
                    continue
                if following in '"$\\':
                    char = self.take()
            out.append(char)

    def name(self) -> str:
        first = self.peek()
        if _is_digit(first):
            digits = []
            while _is_digit(self.peek()):
                digits.append(self.take())
            return "".join(digits)
        if first and first in _SPECIAL_PARAMETERS:
            return self.take()
        chars = []
        while self.peek() and (
            _is_letter(self.peek()) or _is_digit(self.peek()) or self.peek() == "_"
        ):
            chars.append(self.take())
        return "".join(chars)

    def dollar(self) -> str:
        self.take()
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.take()
        if self.peek() in ("", "{", "}", ":"):
            raise LexError(f"bad substitution in {self.text!r}")
        name = self.name()
        operator = self.take()
        if operator == "}":
            return self.env.get(name, "")
        null_is_unset = operator == ":"
        if null_is_unset:
            operator = self.take()
        if operator not in "+-?" or not operator:
            raise LexError(f"unsupported modifier {operator!r} in {self.text!r}")
        word = self.word(stop="}")
        value = self.env.get(name)
        is_set = value is not None and not (null_is_unset and value == "")
        if operator == "-":
            return value if is_set and value is not None else word
        if operator == "+":
            return word if is_set else ""
        if not is_set:
            raise LexError(f"{name}: {word or 'is not set'}")
        return value or ""


def read_word(text: str, env: Mapping[str, str] | None = None) -> str:
    """What BuildKit makes of one Dockerfile word, with ``env`` as the variables in scope."""
    return _Reader(text, env or {}).word()

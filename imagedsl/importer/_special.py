"""Expressions BuildKit's lexer reads that imagedsl's ``$NAME`` syntax does not.

BuildKit expands a special parameter (``$@``, ``$*``, ``$#``, ``$?``, ``$-``, ``$$``, ``$!``)
and a positional one (``$0``, ``$1``, ``${12}``) in every word it expands (ENV, LABEL,
WORKDIR, COPY...): unset, each expands to nothing (``ENV PASSWORD=pa$$word`` is ``paword``).
imagedsl reads them as literal text, so the import drops them, as BuildKit does. (A file that
declares ``ARG 1=x`` itself would set ``$1`` in BuildKit; no real file was seen to.)

Dockerfile 1.7 also reads ``${NAME%pattern}``, ``${NAME#pattern}`` and ``${NAME/old/new}``
(earlier versions refuse them); imagedsl has no such expansion, so they are refused.
"""

from __future__ import annotations

import re
from typing import Final

_SPECIAL: Final = "@*#?-$!"
_POSITIONAL: Final = re.compile(r"[0-9]+")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATTERN_OPERATORS: Final = ("%", "#", "/")
_MODIFIER: Final = re.compile(r"\}|:?[-+?]")


class ExpressionError(ValueError):
    """An expression BuildKit reads that imagedsl cannot hold."""


def empty_parameter_end(text: str, start: int) -> int | None:
    """The end of the special or positional parameter at ``text[start] == "$"``, which
    BuildKit expands to nothing; None when none starts there."""
    at = start + 1
    braced = text.startswith("{", at)
    if braced:
        at += 1
    positional = _POSITIONAL.match(text, at)
    if positional is not None:
        end = positional.end()
    elif at < len(text) and text[at] in _SPECIAL:
        end = at + 1
    else:
        return None
    if not braced:
        return end
    if text.startswith("}", end):
        return end + 1
    close = text.find("}", end)
    shown = text[start : close + 1] if close >= 0 else text[start:]
    raise ExpressionError(
        f"{shown!r}: a special or positional parameter with a modifier "
        "(BuildKit reads it as unset; write the value itself)"
    )


def check_braced(expression: str) -> None:
    """Refuse ``${NAME%...}``, ``${NAME#...}`` and ``${NAME/...}`` (pattern expansions that
    BuildKit computes and imagedsl would keep as literal text) and modifiers BuildKit refuses
    (``${NAME:1}``)."""
    name = _NAME.match(expression, 2)
    if not expression.startswith("${") or name is None:
        return
    rest = expression[name.end() :]
    if rest[:1] in _PATTERN_OPERATORS:
        raise ExpressionError(
            f"{expression!r}: imagedsl has no pattern expansion (%, #, /) "
            "(compute the value in a RUN, or pass it as a build argument)"
        )
    if not _MODIFIER.match(rest):
        raise ExpressionError(f"{expression!r}: a modifier BuildKit refuses too")

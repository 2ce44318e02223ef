"""Reading Dockerfile words as BuildKit's lexer does, into imagedsl's strings.

BuildKit removes quotes and backslash escapes from most arguments and expands ``$VAR``
expressions. imagedsl expands the same expressions itself (``imagedsl.steps.expand``) and
reads ``\\$`` as a literal ``$``, so a word becomes an imagedsl string by removing the quoting
and keeping each expression as written; a ``$`` that the Dockerfile quoted or escaped becomes
``\\$``.
"""

from __future__ import annotations

import re
from typing import Final

from imagedsl._validate import clean_container_path
from imagedsl.buildstate import split_expressions
from imagedsl.importer._special import ExpressionError, check_braced, empty_parameter_end

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def defaults_to_itself(name: str, default: str) -> bool:
    """Whether a global ``ARG NAME=default`` of an automatic ARG keeps the value the build
    gives it: ``$NAME``, ``${NAME}``, ``${NAME:-x}`` or ``${NAME-x}``. BuildKit expands the
    default with the automatic value, which is never empty, so only these change nothing
    (any other default replaces the platform's value)."""
    pattern = rf"\$(?:{name}|\{{{name}(?::?-[^${{}}]*)?\}})"
    return re.fullmatch(pattern, default.removeprefix('"').removesuffix('"')) is not None


class WordError(ValueError):
    """A word that BuildKit would refuse or that imagedsl cannot hold."""


def expression_end(text: str, start: int, escape: str = "\\") -> int:
    """The end of the ``$...`` expression starting at ``start`` (``text[start] == "$"``):
    a ``}`` closes the innermost open ``${`` (BuildKit nests ``${A:-${B}}``)."""
    if start + 1 < len(text) and text[start + 1] == "{":
        depth = 0
        at = start
        while at < len(text):
            char = text[at]
            if char == escape:
                at += 2
                continue
            if text.startswith("${", at):
                depth += 1
                at += 2
                continue
            if char == "}":
                depth -= 1
                if depth == 0:
                    return at + 1
            at += 1
        raise WordError(f"missing '}}' in {text!r}")
    match = _NAME.match(text, start + 1)
    if match is None:
        return start + 1  # a lone "$" is literal
    return match.end()


def split_template(template: str) -> list[tuple[str, str]]:
    """An imagedsl string as (literal text, the ``$`` expression after it, or "") pairs."""
    pairs: list[tuple[str, str]] = []
    start = at = 0
    while (at := template.find("$", at)) >= 0:
        end = expression_end(template, at)
        if end > at + 1 and template[at - 1 : at] != "\\":  # "\$" is a literal "$"
            pairs.append((template[start:at], template[at:end]))
            start = end
        at = end
    pairs.append((template[start:], ""))
    return pairs


def read_word(text: str, escape: str = "\\", *, quotes: bool = True) -> str:
    """The imagedsl string for one Dockerfile word (quotes removed, expressions kept).
    Without ``quotes`` (a heredoc's body), quote characters are plain ones."""
    out: list[str] = []
    i = 0
    quote = ""
    while i < len(text):
        char = text[i]
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                out.append(_literal_dollar(out, text, i + 1) if char == "$" else char)
            i += 1
        elif char == escape and i + 1 < len(text):
            nxt = text[i + 1]
            if quote == '"' and nxt not in ('"', "$", escape):
                out.append(char)
                i += 1
                continue
            out.append(_literal_dollar(out, text, i + 2) if nxt == "$" else nxt)
            i += 2
        elif quotes and char in "'\"" and (not quote or char == quote):
            quote = "" if quote else char
            i += 1
        elif char == "$":
            try:
                empty = empty_parameter_end(text, i)
            except ExpressionError as error:
                raise WordError(str(error)) from None
            if empty is not None:
                i = empty  # BuildKit expands it to nothing
                continue
            end = expression_end(text, i, escape)
            if end == i + 1:
                out.append(_literal_dollar(out, text, end))  # a lone "$" is literal
            else:
                _no_backslash_before(out, text)
                out.append(_expression_text(text[i:end], escape))
            i = end
        else:
            out.append(char)
            i += 1
    if quote:
        raise WordError(f"unmatched {quote} in {text!r}")
    return "".join(out)


_WITH_WORD: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-+?])(.*)\}\Z", re.DOTALL)


def _expression_text(expression: str, escape: str) -> str:
    """An expression as imagedsl writes it: the word of ``${NAME:-word}`` (and ``:+``, ``:?``)
    is read as BuildKit's lexer reads it (its quotes and backslash escapes removed), the rest
    as written."""
    try:
        check_braced(expression)
    except ExpressionError as error:
        raise WordError(str(error)) from None
    match = _WITH_WORD.match(expression)
    if match is None:
        return expression
    word = read_word(match[3], escape)  # quotes included: ${U:-"a b"} is a b to BuildKit
    if any(isinstance(p, str) and "}" in p for p in split_expressions(word)):
        # An escaped "}" in the word: imagedsl's word ends at the first "}" it holds.
        raise WordError(f"an escaped '}}' inside {expression!r}")
    return f"${{{match[1]}{match[2]}{word}}}"


def _no_backslash_before(out: list[str], text: str) -> None:
    """imagedsl reads ``\\$`` as an escaped ``$``: a literal backslash just before an
    expression cannot be written, so such a word is refused rather than changed."""
    if out and out[-1].endswith("\\") and not out[-1].endswith("\\$"):
        raise WordError(f"a literal backslash before an expression in {text!r}")


def _literal_dollar(out: list[str], text: str, after: int) -> str:
    """A literal ``$``: escaped only where imagedsl would read an expression (``$A``, ``${``)
    or where a literal backslash comes just before it (imagedsl would read the two as an
    escaped ``$`` and drop the backslash), so equal values are spelled alike (a step's key
    holds its text)."""
    following = text[after : after + 1]
    after_backslash = bool(out) and out[-1].endswith("\\")
    return "\\$" if after_backslash or re.match(r"[{A-Za-z_]", following) else "$"


def heredoc_text(body: str) -> str:
    """The text an unquoted ``COPY <<EOF`` writes, read as BuildKit reads its body (its lexer
    with a backslash escape whatever the ``# escape`` directive, quotes as plain characters):
    ``\\$`` is a ``$``, ``\\\\`` one backslash, a backslash before a line break goes,
    ``$(`` is literal, and special and positional parameters (``$@``) expand to nothing. A
    body that names a variable is a :class:`WordError`: an inline file is not expanded."""
    word = read_word(body, "\\", quotes=False)
    expression = next((e for _, e in split_template(word) if e), None)
    if expression is not None:
        raise WordError(f"expands {expression} in the file")
    return word.replace("\\$", "$")  # imagedsl's escaped "$", literal in an inline file


def has_variable(value: str) -> bool:
    """Whether an imagedsl string holds an expression imagedsl would expand."""
    return bool(re.search(r"(?<!\\)\$(?:\{|[A-Za-z_])", value))


def mount_fields(spec: str) -> list[str]:
    """The comma-separated fields of a ``--mount`` value (double quotes group)."""
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    for char in spec:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return [f for f in fields if f]


def in_context(source: str) -> str:
    """A context path as BuildKit reads it: from the context's root, which ``..`` cannot
    leave (``../a.txt`` is ``a.txt``); a trailing slash is kept (it says "directory")."""
    if has_variable(source) or ".." not in source.split("/"):
        return source
    clean = clean_container_path("/" + source).lstrip("/") or "."
    return clean + "/" if source.endswith("/") and clean != "." else clean


def is_url(source: str) -> bool:
    """Whether a COPY/ADD source is a URL, as BuildKit tells one."""
    return source.startswith(("http://", "https://"))


def is_git(source: str) -> bool:
    """A git source of ADD, as BuildKit tells one: by its scheme (a local ``.git`` directory,
    or ``repo.git``, is a path of the context). An http(s) URL's path must end in ``.git``;
    its query (``?branch=main``) and fragment (``#ref``) are options of the clone."""
    if source.startswith(("git@", "git://", "ssh://")):
        return True
    path = re.split(r"[?#]", source, maxsplit=1)[0]
    return is_url(source) and path.rstrip("/").endswith(".git")

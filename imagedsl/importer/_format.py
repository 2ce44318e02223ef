"""A small formatter for the code the importer writes, in ``ruff format``'s style.

The importer writes only assignments of call chains (``name = head.call(...).call(...)``) and a
few expressions: calls, lists, dicts and atoms. Within those, ruff's layout is simple: a
statement that fits in 100 columns stays on one line; a chain with at least two calls after
its head breaks into a parenthesised chain, one call per line; any other call that does not
fit puts its arguments on one indented line, or, when that does not fit either, one argument
per line with a trailing comma (a sole argument gets no comma and is split itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

LINE_LENGTH = 100
INDENT = "    "


@attrs.frozen
class Atom:
    """Code that is never split: a name, a number, a string literal."""

    text: str


@attrs.frozen
class Call:
    """``func(args...)``; keyword arguments are ``(name, value)`` pairs."""

    func: str
    args: tuple[Expr | tuple[str, Expr], ...] = ()


@attrs.frozen
class ListExpr:
    items: tuple[Expr, ...]


@attrs.frozen
class DictExpr:
    items: tuple[tuple[Expr, Expr], ...]


Expr = Atom | Call | ListExpr | DictExpr


@attrs.frozen
class Link:
    """One ``.method(args)`` of a chain, with the comment lines written above it."""

    call: Call
    comments: tuple[str, ...] = ()


@attrs.frozen
class Chain:
    """``head.link.link...``."""

    head: Expr
    links: tuple[Link, ...] = ()


def flat(expr: Expr | Chain) -> str:
    """The expression on one line."""
    if isinstance(expr, Atom):
        return expr.text
    if isinstance(expr, Chain):
        return flat(expr.head) + "".join("." + flat(link.call) for link in expr.links)
    if isinstance(expr, Call):
        return f"{expr.func}({', '.join(_flat_arg(a) for a in expr.args)})"
    if isinstance(expr, ListExpr):
        return "[" + ", ".join(flat(i) for i in expr.items) + "]"
    return "{" + ", ".join(f"{flat(k)}: {flat(v)}" for k, v in expr.items) + "}"


def _flat_arg(arg: Expr | tuple[str, Expr]) -> str:
    if isinstance(arg, tuple):
        return f"{arg[0]}={flat(arg[1])}"
    return flat(arg)


def _parts(expr: Expr) -> tuple[str, list[str], str] | None:
    """The opening text, the items and the closing bracket of a splittable expression."""
    if isinstance(expr, Call):
        return f"{expr.func}(", [_flat_arg(a) for a in expr.args], ")"
    if isinstance(expr, ListExpr):
        return "[", [flat(i) for i in expr.items], "]"
    if isinstance(expr, DictExpr):
        return "{", [f"{flat(k)}: {flat(v)}" for k, v in expr.items], "}"
    return None


def _children(expr: Expr) -> list[tuple[str, Expr]]:
    if isinstance(expr, Call):
        return [(f"{a[0]}=", a[1]) if isinstance(a, tuple) else ("", a) for a in expr.args]
    if isinstance(expr, ListExpr):
        return [("", i) for i in expr.items]
    if isinstance(expr, DictExpr):
        return [(f"{flat(k)}: ", v) for k, v in expr.items]
    return []


def layout(expr: Expr, indent: int, prefix: str = "", suffix: str = "") -> list[str]:
    """Lines for ``prefix + expr + suffix`` starting at ``indent`` levels."""
    pad = INDENT * indent
    one = pad + prefix + flat(expr) + suffix
    parts = _parts(expr)
    if len(one) <= LINE_LENGTH or parts is None or not parts[1]:
        return [one]
    opening, items, closing = parts
    joined = INDENT * (indent + 1) + ", ".join(items)
    if len(joined) <= LINE_LENGTH:
        return [pad + prefix + opening, joined, pad + closing + suffix]
    children = _children(expr)
    lines = [pad + prefix + opening]
    comma = "," if len(children) > 1 or not isinstance(expr, Call) else ""
    for name, child in children:
        lines.extend(layout(child, indent + 1, name, comma))
    lines.append(pad + closing + suffix)
    return lines


def _is_fluent(chain: Chain) -> bool:
    """ruff's fluent style: at least two calls made on the result of a call."""
    count = len(chain.links) - (0 if isinstance(chain.head, Call) else 1)
    return count >= 2


def assignment(name: str, value: Expr | Chain) -> list[str]:
    """``name = value`` laid out as ruff lays it out."""
    if not isinstance(value, Chain):
        return layout(value, 0, f"{name} = ")
    comments = [c for link in value.links for c in link.comments]
    one = f"{name} = {flat(value)}"
    if not _is_fluent(value):
        # Too few calls for a parenthesised chain: comments go above the statement.
        head = flat(value.head) + "".join("." + flat(link.call) for link in value.links[:-1])
        if not value.links:
            return [*comments, *layout(value.head, 0, f"{name} = ")]
        last = value.links[-1].call
        return [*comments, *layout(Call(f"{head}.{last.func}", last.args), 0, f"{name} = ")]
    above: list[str] = []
    if isinstance(value.head, Atom):
        # ruff keeps a name and its first call together (``deps.copy(...)`` then
        # ``.run(...)``): the first call's comments go above the statement.
        above = list(value.links[0].comments)
        comments = [c for link in value.links[1:] for c in link.comments]
    if len(one) <= LINE_LENGTH and not comments:
        return [*above, one]
    inside = INDENT + flat(value)
    if len(inside) <= LINE_LENGTH and not comments:
        return [*above, f"{name} = (", inside, ")"]
    lines = [*above, f"{name} = ("]
    links = value.links
    if isinstance(value.head, Atom):
        first = links[0]
        lines.extend(layout(Call(f"{value.head.text}.{first.call.func}", first.call.args), 1))
        links = links[1:]
    else:
        lines.extend(layout(value.head, 1))
    for link in links:
        lines.extend(INDENT + c for c in link.comments)
        lines.extend(layout(link.call, 1, "."))
    lines.append(")")
    return lines


def module(blocks: Sequence[Sequence[str]]) -> str:
    """Blocks of lines separated by one blank line, ending with a line break."""
    return "\n\n".join("\n".join(block) for block in blocks if block) + "\n"


def string_literal(value: str, prefix: str = "") -> str:
    """``value`` as a Python string literal (``prefix`` ``f`` for an f-string)."""
    quote = "'" if value.count('"') > value.count("'") else '"'
    out: list[str] = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif char == quote:
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif not char.isprintable():
            code = ord(char)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return prefix + quote + "".join(out) + quote

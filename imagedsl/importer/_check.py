"""What the DSL would refuse, found while importing rather than when the build.py loads.

Each call the importer writes whose arguments are literals (strings, numbers, lists, dicts and
the ``dsl`` constructors of such values) is made once, on a scratch stage: a value the DSL
cannot hold (an owner, a signal or a duration BuildKit refuses too) becomes a
refusal naming the Dockerfile's line, never a build.py that does not load. Calls naming
context selections, stages or global ARGs are not made; their literal parts are.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Callable
from typing import Any, Final

from imagedsl import dsl
from imagedsl.errors import InputError
from imagedsl.importer._format import Atom, Call, DictExpr, Expr, ListExpr

#: The constructors of values, by the name the build.py calls them with.
_CONSTRUCTORS: Final[dict[str, Callable[..., Any]]] = {
    "dsl.cache": dsl.cache,
    "dsl.image": dsl.image,
    "dsl.inline": dsl.inline,
    "dsl.script": dsl.script,
    "dsl.secret": dsl.secret,
    "dsl.tmpfs": dsl.tmpfs,
    "dsl.url": dsl.url,
}


class _NotLiteral(Exception):
    """An expression whose value is known only when the build.py runs."""


def refusal(call: Call, *, method: bool) -> str | None:
    """Why the DSL refuses ``call`` (``.call(...)`` on a stage when ``method``, else a call
    of its own), or None when it takes it or its value is not known here."""
    try:
        _check_parts(call)
        if method:
            args, kwargs = _arguments(call)
            getattr(dsl.scratch(), call.func)(*args, **kwargs)
        else:
            _value(call)
    except _NotLiteral:
        return None
    except InputError as error:
        return str(error)
    return None


def _check_parts(expr: Expr | Call) -> None:
    """Make the literal constructor calls inside ``expr`` (a mount among context binds)."""
    items: tuple[Any, ...] = ()
    if isinstance(expr, Call):
        items = tuple(a[1] if isinstance(a, tuple) else a for a in expr.args)
        if expr.func in _CONSTRUCTORS:
            with contextlib.suppress(_NotLiteral):
                _value(expr)
    elif isinstance(expr, ListExpr):
        items = expr.items
    elif isinstance(expr, DictExpr):
        items = tuple(v for _, v in expr.items)
    for item in items:
        _check_parts(item)


def _arguments(call: Call) -> tuple[list[Any], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for arg in call.args:
        if isinstance(arg, tuple):
            kwargs[arg[0]] = _value(arg[1])
        else:
            args.append(_value(arg))
    return args, kwargs


def _value(expr: Expr) -> Any:
    if isinstance(expr, Atom):
        try:
            return ast.literal_eval(expr.text)  # an f-string or a name is no literal
        except (ValueError, SyntaxError):
            raise _NotLiteral from None
    if isinstance(expr, ListExpr):
        return [_value(item) for item in expr.items]
    if isinstance(expr, DictExpr):
        return {_value(key): _value(value) for key, value in expr.items}
    constructor = _CONSTRUCTORS.get(expr.func)
    if constructor is None:
        raise _NotLiteral
    args, kwargs = _arguments(expr)
    return constructor(*args, **kwargs)

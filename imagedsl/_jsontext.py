"""``json.dumps(value, indent=2, ensure_ascii=False)``, the same text, faster.

With an indent, :mod:`json` encodes in pure Python through nested generators (its C encoder
takes no indent), which costs more than the rest of ``imagedsl inspect --json`` on a large
image. This writes the same text directly: strings through json's own C string encoder,
numbers as json writes them. Anything it does not know (keys that are not strings, values
that are not JSON's) goes to :func:`json.dumps`, so the text is always json's.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any, Final

_NAMES: Final = {None: "null", True: "true", False: "false"}


class _Unknown(Exception):
    """A value this writer leaves to :mod:`json`."""


def dumps(value: Any) -> str:
    """``json.dumps(value, indent=2, ensure_ascii=False)``."""
    try:
        return _text(value, "\n")
    except _Unknown:
        return json.dumps(value, indent=2, ensure_ascii=False)


def _scalar(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    if value is None or value is True or value is False:
        return _NAMES[value]
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise _Unknown
        return float.__repr__(value)
    raise _Unknown


_CONTAINERS: Final = frozenset((dict, list, tuple))
#: ``"KEY": `` of the first keys seen.
_LEADS: dict[str, str] = {}
_INTS: Final = frozenset((int,))
_STRINGS: Final = frozenset((str,))


def _flat(items: list[Any] | tuple[Any, ...], newline: str) -> str | None:
    """The text of a non-empty list of scalars (None if it holds a list or an object)."""
    kinds = set(map(type, items))
    if kinds == _INTS:
        shown = map(int.__repr__, items)
    elif kinds == _STRINGS:
        shown = map(encode_basestring, items)
    elif _CONTAINERS.isdisjoint(kinds):
        shown = map(_scalar, items)
    else:
        return None
    inner = newline + "  "
    return f"[{inner}{(',' + inner).join(shown)}{newline}]"


def _text(value: Any, newline: str) -> str:
    """``value``'s text; ``newline``: a line break and the indent of its level."""
    kind = type(value)
    if kind is dict:
        if not value:
            return "{}"
        inner = newline + "  "
        items = []
        for key, item in value.items():
            lead = _LEADS.get(key) if type(key) is str else None
            if lead is None:
                if type(key) is not str:
                    raise _Unknown
                lead = encode_basestring(key) + ": "
                if len(_LEADS) < 512:  # a schema's keys, not every key ever seen
                    _LEADS[key] = lead
            item_kind = type(item)
            if item_kind is str:
                items.append(lead + encode_basestring(item))
            elif item_kind is int:
                items.append(lead + int.__repr__(item))
            elif item_kind is list or item_kind is tuple:
                items.append(lead + ((item and _flat(item, inner)) or _text(item, inner)))
            elif item_kind is dict:
                items.append(lead + _text(item, inner))
            else:
                items.append(lead + _scalar(item))
        return f"{{{inner}{(',' + inner).join(items)}{newline}}}"
    if kind is list or kind is tuple:
        if not value:
            return "[]"
        flat = _flat(value, newline)
        if flat is not None:
            return flat
        inner = newline + "  "
        return f"[{inner}{(',' + inner).join([_text(item, inner) for item in value])}{newline}]"
    return _scalar(value)

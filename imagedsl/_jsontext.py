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
    out: list[str] = []
    try:
        _write(value, out, "\n")
    except _Unknown:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return "".join(out)


def _scalar(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if value is None or value is True or value is False:
        return _NAMES[value]
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise _Unknown
        return float.__repr__(value)
    raise _Unknown


def _write(value: Any, out: list[str], newline: str) -> None:
    """Append ``value``'s text; ``newline``: a line break and the indent of its level."""
    kind = type(value)
    if kind is dict:
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        separator = "," + inner
        out.append("{")
        lead = inner
        for key, item in value.items():
            if type(key) is not str:
                raise _Unknown
            out.append(lead)
            out.append(encode_basestring(key))
            out.append(": ")
            item_kind = type(item)
            if item_kind is dict or item_kind is list or item_kind is tuple:
                _write(item, out, inner)
            else:
                out.append(_scalar(item))
            lead = separator
        out.append(newline)
        out.append("}")
    elif kind is list or kind is tuple:
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        out.append("[")
        out.append(inner)
        if any(type(item) in (dict, list, tuple) for item in value):
            separator = "," + inner
            lead = ""
            for item in value:
                out.append(lead)
                _write(item, out, inner)
                lead = separator
        else:
            out.append(("," + inner).join(map(_scalar, value)))
        out.append(newline)
        out.append("]")
    else:
        out.append(_scalar(value))

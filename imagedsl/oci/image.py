"""Layers and images whose blobs are in the store, and the checks a base image's config passes.

A base's config comes from wherever its ``FROM`` points (a registry, a layout, an archive, the
engine), and parts of it are carried into every image built on it: :func:`parse_base_config`
reads it once, where the base is imported, and refuses anything that is not the shape the
OCI image spec gives, so later code reads only well-typed values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from imagedsl.errors import InputError
from imagedsl.oci.digest import is_sha256

#: The largest image config read, refused (from its descriptor's size) before it is fetched
#: or read: a config is read whole, as a manifest is, and those are capped at 4 MiB too.
MAX_CONFIG: Final = 4 << 20
#: How deep a config's JSON may nest (the spec's own fields go four levels deep).
MAX_CONFIG_NESTING: Final = 32


@attrs.frozen(kw_only=True)
class LayerBlob:
    """A layer: its blob digest and size, its diff_id, and its media type."""

    digest: str
    size: int
    diff_id: str
    media_type: str
    uncompressed_size: int

    def to_json(self) -> dict[str, object]:
        """The form kept in the store's layer index."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class BaseImage:
    """A base image in the store: its manifest digest, config, and layers as they were."""

    reference: str
    manifest_digest: str
    config: Mapping[str, Any] = attrs.field(eq=False, repr=False)
    layers: tuple[LayerBlob, ...]
    #: The name the image is known by, for its ``base.name`` annotation: a registry
    #: reference without its digest, or the name recorded inside a local image; never a path
    #: (the same archive at two paths makes the same image). None when it has no name.
    name: str | None = None


@attrs.define
class BaseImageError(InputError):
    """A base image cannot be read from where its reference says."""

    reference: str
    problem: str

    def __str__(self) -> str:
        return f"base image {self.reference}: {self.problem}"


@attrs.define
class BaseConfigError(BaseImageError):
    """A base image's config is not what the OCI image spec says a config is: ``field`` is
    where (``config.Env``, ``history[2].created_by``; empty for the whole document)."""

    field: str = attrs.field(kw_only=True)

    def __str__(self) -> str:
        where = f"its config's {self.field}" if self.field else "its config"
        return f"base image {self.reference}: {where} {self.problem}"


@attrs.define
class BaseConfigTooLargeError(BaseImageError):
    """A base image's config is larger than :data:`MAX_CONFIG` (refused before reading it)."""

    size: int = attrs.field(kw_only=True)
    limit: int = attrs.field(kw_only=True)


def check_config_size(reference: str, size: object) -> None:
    """Refuse a config whose size (a descriptor's, a file's, or the bytes read) is over
    :data:`MAX_CONFIG`; a size that is not a count is left to the descriptor's own checks."""
    if isinstance(size, int) and not isinstance(size, bool) and size > MAX_CONFIG:
        problem = (
            f"its config is {size} bytes, more than the {MAX_CONFIG >> 20} MiB a config may "
            "be; refused before reading it"
        )
        raise BaseConfigTooLargeError(reference, problem, size=size, limit=MAX_CONFIG)


def parse_base_config(raw: bytes, reference: str) -> dict[str, Any]:
    """A base image's config from its bytes: UTF-8 JSON, an object, no deeper than
    :data:`MAX_CONFIG_NESTING`, with every field the spec defines of the spec's type (null
    stands for an unset optional field). Anything else is a :class:`BaseConfigError`."""
    check_config_size(reference, len(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BaseConfigError(reference, "is not UTF-8", field="") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BaseConfigError(reference, "nests too deeply to be read", field="") from None
    except ValueError:
        raise BaseConfigError(reference, "is not valid JSON", field="") from None
    if not isinstance(value, dict):
        raise BaseConfigError(reference, "is not a JSON object", field="")
    problem = _config_problem(value)
    if problem is not None:
        field, what = problem
        raise BaseConfigError(reference, what, field=field)
    return value


def diff_ids_of(config: Mapping[str, Any]) -> list[str]:
    """The diff_ids of a config :func:`parse_base_config` read (none when it lists none)."""
    rootfs = config.get("rootfs") or {}
    diff_ids: list[str] = rootfs.get("diff_ids") or []
    return diff_ids


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


# -- the shape -----------------------------------------------------------------------------------

#: A check of one value, and what the value should have been (for the message).
_Check = tuple[Callable[[object], bool], str]


def _is_string(value: object) -> bool:
    return isinstance(value, str)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_object(value: object) -> bool:
    return isinstance(value, dict)


def _is_set(value: object) -> bool:
    """``ExposedPorts`` and ``Volumes``: keys, each mapped to an (empty) object."""
    return isinstance(value, dict) and all(isinstance(item, dict) for item in value.values())


def _is_string_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


_STRING: Final[_Check] = (_is_string, "is not a string")
_STRINGS: Final[_Check] = (_is_strings, "is not a list of strings")
_COUNT: Final[_Check] = (_is_count, "is not an integer")
_OBJECT: Final[_Check] = (_is_object, "is not an object")

#: The top-level fields, each may be null or absent except ``architecture`` and ``os``.
_TOP: Final[Mapping[str, _Check]] = {
    "created": _STRING,
    "author": _STRING,
    "variant": _STRING,
    "os.version": _STRING,
    "os.features": _STRINGS,
}
#: The fields of ``config`` (the runtime defaults), each may be null (unset).
_CONTAINER: Final[Mapping[str, _Check]] = {
    "User": _STRING,
    "WorkingDir": _STRING,
    "StopSignal": _STRING,
    "Env": _STRINGS,
    "Cmd": _STRINGS,
    "Entrypoint": _STRINGS,
    "OnBuild": _STRINGS,
    "Shell": _STRINGS,
    "ExposedPorts": (_is_set, "is not an object of objects"),
    "Volumes": (_is_set, "is not an object of objects"),
    "Labels": (_is_string_map, "is not an object of strings"),
    "Healthcheck": _OBJECT,
}
_HEALTHCHECK: Final[Mapping[str, _Check]] = {
    "Test": _STRINGS,
    "Interval": _COUNT,
    "Timeout": _COUNT,
    "StartPeriod": _COUNT,
    "StartInterval": _COUNT,
    "Retries": _COUNT,
}
_HISTORY: Final[Mapping[str, _Check]] = {
    "created": _STRING,
    "author": _STRING,
    "created_by": _STRING,
    "comment": _STRING,
    "empty_layer": (lambda value: isinstance(value, bool), "is not true or false"),
}


def _config_problem(config: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first field of ``config`` that is not of its type: (field, what is wrong)."""
    for name, value in config.items():
        problem = _text_problem(value)
        if problem is not None:
            return name, problem
    for name in ("architecture", "os"):
        if name in config and not isinstance(config[name], str):
            return name, "is not a string"
    found = _fields_problem(config, _TOP, "")
    if found is not None:
        return found
    rootfs = config.get("rootfs")
    if rootfs is not None:  # absent or null: no layers, as the manifest must then say
        if not isinstance(rootfs, dict):
            return "rootfs", "is not an object"
        found = _fields_problem(rootfs, {"type": _STRING}, "rootfs.")
        if found is not None:
            return found
        diff_ids = rootfs.get("diff_ids")
        if diff_ids is not None and not isinstance(diff_ids, list):
            return "rootfs.diff_ids", "is not a list"
        for i, diff_id in enumerate(diff_ids or ()):
            if not is_sha256(diff_id):
                return f"rootfs.diff_ids[{i}]", "is not a digest sha256:<64 hex digits>"
    history = config.get("history")
    if history is not None:
        if not isinstance(history, list):
            return "history", "is not a list"
        for i, entry in enumerate(history):
            if not isinstance(entry, dict):
                return f"history[{i}]", "is not an object"
            found = _fields_problem(entry, _HISTORY, f"history[{i}].")
            if found is not None:
                return found
    container = config.get("config")
    if container is not None:
        if not isinstance(container, dict):
            return "config", "is not an object"
        found = _fields_problem(container, _CONTAINER, "config.")
        if found is not None:
            return found
        healthcheck = container.get("Healthcheck")
        if healthcheck is not None:
            return _fields_problem(healthcheck, _HEALTHCHECK, "config.Healthcheck.")
    return None


def _fields_problem(
    document: Mapping[str, Any], checks: Mapping[str, _Check], prefix: str
) -> tuple[str, str] | None:
    for name, (check, what) in checks.items():
        value = document.get(name)
        if value is not None and not check(value):
            return prefix + name, what
    return None


def _text_problem(value: object) -> str | None:
    """Whether a value nests too deeply, or holds a string that is not Unicode text (a lone
    surrogate escape, which no UTF-8 document can carry on), without recursing."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and not encodes_utf8(item):
                return "holds a string that is not Unicode text"
        elif isinstance(item, dict | list):
            if depth > MAX_CONFIG_NESTING:
                return f"nests deeper than {MAX_CONFIG_NESTING} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return None


def encodes_utf8(text: str) -> bool:
    """Whether ``text`` is UTF-8 (bytes that are not are held as surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

"""Content digests. Blob digests are sha256 (the spec requires it; blake3 stays internal)."""

from __future__ import annotations

_HEX = frozenset("0123456789abcdef")


def is_sha256(value: object) -> bool:
    """Whether ``value`` is ``sha256:<64 lowercase hex digits>`` (a digest names a file here)."""
    if not isinstance(value, str) or not value.startswith("sha256:") or len(value) != 71:
        return False
    return _HEX.issuperset(value[7:])

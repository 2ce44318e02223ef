"""Image platforms: ``linux/amd64``, ``linux/arm64/v8``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

import attrs

_ARCHITECTURES: Final = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


#: Architecture spellings BuildKit accepts for the canonical ones (and the variant they imply).
_ALIASES: Final = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
}
_KNOWN_OS: Final = frozenset(
    {"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "wasip1"}
)
_KNOWN_ARCH: Final = frozenset(
    {"amd64", "arm64", "arm", "386", "ppc64le", "ppc64", "s390x", "riscv64", "mips64le", "mips64",
     "mipsle", "mips", "loong64", "wasm"}
)  # fmt: skip


def canonical_platform(text: str) -> str:
    """A platform as BuildKit normalises it: ``linux/x86_64`` and ``linux/amd64/v1`` are
    ``linux/amd64``, ``linux/aarch64`` and ``linux/arm64/v8`` are ``linux/arm64``, ``linux/arm``
    is ``linux/arm/v7``. Raises ValueError for anything that is not ``os/arch[/variant]`` of a
    known OS and architecture."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"not a platform (OS/ARCH[/VARIANT]): {text!r}")
    os_name, arch = parts[0], parts[1]
    variant = parts[2] if len(parts) == 3 else ""
    arch, implied = _ALIASES.get(arch, (arch, ""))
    variant = variant or implied
    if os_name not in _KNOWN_OS or arch not in _KNOWN_ARCH:
        raise ValueError(f"unknown platform {text!r} (os/arch like linux/amd64 or linux/arm64)")
    if (arch == "arm64" and variant == "v8") or (arch == "amd64" and variant == "v1"):
        variant = ""
    if arch == "arm" and not variant:
        variant = "v7"
    return f"{os_name}/{arch}/{variant}" if variant else f"{os_name}/{arch}"


def canonical_platforms(value: str | Sequence[str]) -> tuple[str, ...]:
    """One platform or several (``linux/amd64,linux/arm64``, or a sequence of such texts),
    each canonical as :func:`canonical_platform` makes it, in the order given, each once.
    Raises ValueError naming the first value that is not a platform, or for an empty list."""
    texts = [value] if isinstance(value, str) else list(value)
    found: list[str] = []
    for text in texts:
        for part in text.split(","):
            if not part.strip():
                raise ValueError(f"empty platform in {text!r} (OS/ARCH[,OS/ARCH...])")
            platform = canonical_platform(part)
            if platform not in found:
                found.append(platform)
    if not found:
        raise ValueError("no platform given")
    return tuple(found)


@attrs.frozen
class Platform:
    """An image platform: ``linux/amd64``, ``linux/arm64/v8``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``OS/ARCH[/VARIANT]``."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"not a platform (OS/ARCH[/VARIANT]): {text!r}")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine (Linux images for any host OS, as Docker does)."""
        machine = os.uname().machine.lower()
        architecture = _ARCHITECTURES.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
        return cls("linux", architecture, variant)

    @classmethod
    def from_json(cls, value: object) -> Platform | None:
        """The ``platform`` object of a descriptor, or None when absent or malformed."""
        if not isinstance(value, dict):
            return None
        os_name, architecture = value.get("os"), value.get("architecture")
        variant = value.get("variant")
        if not isinstance(os_name, str) or not isinstance(architecture, str):
            return None
        return cls(os_name, architecture, variant if isinstance(variant, str) and variant else None)

    def to_json(self) -> dict[str, str]:
        """The descriptor form."""
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def normalized(self) -> Platform:
        """Equal for platforms that name the same thing (``arm64`` is ``arm64/v8``)."""
        default_variant = {"arm64": "v8", "arm": "v7", "amd64": "v1"}.get(self.architecture)
        variant = self.variant or default_variant
        return Platform(self.os.lower(), self.architecture.lower(), variant)

    def matches(self, other: Platform) -> bool:
        """Whether an image for ``other`` is an image for this platform."""
        return self.normalized() == other.normalized()

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

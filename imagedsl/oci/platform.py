"""Image platforms: ``linux/amd64``, ``linux/arm64/v8``."""

from __future__ import annotations

import platform as host_platform
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


def normalize_platform(text: str) -> str:
    """The canonical spelling of ``OS/ARCH[/VARIANT]``, as BuildKit normalises a platform.

    Aliases name one platform: ``linux/x86_64`` and ``linux/amd64/v1`` are ``linux/amd64``,
    ``linux/aarch64`` and ``linux/arm64/v8`` are ``linux/arm64``, ``linux/arm`` is
    ``linux/arm/v7``. Text that is not a platform is returned as it is (the caller checks it).
    """
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        return text
    os_name, architecture = parts[0].lower(), parts[1].lower()
    variant = parts[2].lower() if len(parts) == 3 else ""
    if os_name == "macos":
        os_name = "darwin"
    if architecture in ("i386", "i686", "x86"):
        architecture, variant = "386", ""
    elif architecture in ("x86_64", "x86-64", "amd64"):
        architecture = "amd64"
        variant = "" if variant == "v1" else variant
    elif architecture in ("aarch64", "arm64"):
        architecture = "arm64"
        variant = "" if variant in ("8", "v8") else variant
    elif architecture == "armhf":
        architecture, variant = "arm", "v7"
    elif architecture == "armel":
        architecture, variant = "arm", "v6"
    elif architecture == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return "/".join(p for p in (os_name, architecture, variant) if p)


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
        machine = host_platform.machine().lower()
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

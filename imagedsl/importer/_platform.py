"""``FROM --platform`` values as BuildKit reads them, written as a build.py takes them."""

from __future__ import annotations

from imagedsl._validate import check_platform
from imagedsl.errors import InputError
from imagedsl.importer._words import has_variable
from imagedsl.oci.platform import canonical_platform

__all__ = ["PlatformError", "from_platform"]


class PlatformError(ValueError):
    """A platform the import refuses; the message says why."""


def from_platform(text: str) -> str:
    """The platform ``FROM --platform=text`` names. BuildKit parses it with containerd's
    ``platforms.Parse`` on its (Linux) daemon, so an architecture alone is that architecture
    on Linux (``amd64``: ``linux/amd64``); ``$VAR`` forms are expanded when the build plans."""
    value = text
    if not has_variable(text) and "/" not in text:
        try:
            value = canonical_platform(f"linux/{text}")
        except ValueError:
            # An OS alone takes the daemon's own architecture, which a build.py cannot know.
            raise PlatformError(
                f"FROM --platform={text}: not an architecture; write OS/ARCH (linux/amd64)"
            ) from None
    try:
        return check_platform("FROM", "platform", value)
    except InputError as error:
        raise PlatformError(str(error)) from None

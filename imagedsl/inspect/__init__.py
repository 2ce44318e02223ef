"""``imagedsl inspect``: what an image's layers cost, what they waste, and what they leak.

:func:`inspect_image` opens an image wherever it is (:mod:`.sources`: an OCI layout or
archive, a ``docker save`` archive, the local engine, a registry), reads each layer once as a
stream (:mod:`.analysis`, with :mod:`._tar` for the headers) and returns an
:class:`~.model.InspectReport`: per layer its sizes, the build-file step that made it (when
imagedsl built it) and what it changed; dive's wasted bytes and efficiency; credentials found
in any layer, deleted later or not. :mod:`.html` draws the report as one self-contained page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagedsl.inspect.model import (
    INSPECT_SCHEMA,
    InspectReport,
    LayerReport,
    LayerSecret,
    WastedPath,
)

if TYPE_CHECKING:
    from imagedsl.reporting import Reporter
    from imagedsl.store import Store

__all__ = [
    "INSPECT_SCHEMA",
    "InspectReport",
    "LayerReport",
    "LayerSecret",
    "WastedPath",
    "inspect_image",
]


def inspect_image(
    source: str,
    *,
    store: Store | None = None,
    platform: str = "linux/amd64",
    insecure: bool = False,
    reporter: Reporter | None = None,
) -> InspectReport:
    """Read the image ``source`` names (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
    ``docker-archive:FILE[:TAG]``, ``docker:NAME``, or a registry reference) and report."""
    from imagedsl.inspect.analysis import analyse
    from imagedsl.inspect.sources import open_image

    with open_image(
        source, store=store, platform=platform, insecure=insecure, reporter=reporter
    ) as image:
        return analyse(image, reporter)

"""Where ``imagedsl inspect`` reads an image from, read in place whenever it can be.

- ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:TAG]``: the layout or
  archive is read where it is (:func:`imagedsl.oci.layout.read_local_image`), nothing copied;
- ``docker:NAME[:TAG]`` (or ``docker-daemon:``): the local engine's ``docker save`` into a
  temporary archive, read like a docker-archive;
- anything else is a registry reference: the registry client pulls the image into the store
  (verified, and kept: inspecting it again fetches nothing), and it is read from there.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

from imagedsl.errors import InputError
from imagedsl.oci.layout import LocalImage, read_local_image
from imagedsl.oci.reference import ImageReference, parse_reference

if TYPE_CHECKING:
    from imagedsl.reporting import Reporter
    from imagedsl.store import Store


@attrs.define
class ImageSourceError(InputError):
    """An image reference ``inspect`` cannot read."""

    source: str
    problem: str

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"


@attrs.frozen(kw_only=True)
class SourceLayer:
    """A layer to read: what its manifest says, and how to open its bytes."""

    digest: str | None
    diff_id: str | None
    size: int
    media_type: str | None
    opener: Callable[[], contextlib.AbstractContextManager[IO[bytes]]] = attrs.field(
        eq=False, repr=False
    )

    def open(self) -> contextlib.AbstractContextManager[IO[bytes]]:
        """The layer's bytes as stored (compressed or not)."""
        return self.opener()


@attrs.frozen(kw_only=True)
class ImageSource:
    """An image opened for reading: its config and its layers, bottom first."""

    reference: str
    manifest_digest: str | None
    config: Mapping[str, Any] = attrs.field(eq=False, repr=False)
    layers: tuple[SourceLayer, ...]


@contextlib.contextmanager
def open_image(
    text: str,
    *,
    store: Store | None = None,
    platform: str = "linux/amd64",
    insecure: bool = False,
    reporter: Reporter | None = None,
) -> Iterator[ImageSource]:
    """Open the image ``text`` names (see the module docstring) for as long as the block runs."""
    transport, _, rest = text.partition(":")
    if transport in ("docker", "docker-daemon"):
        if not rest:
            raise ImageSourceError(text, "names no image (docker:NAME[:TAG])")
        with _saved_from_engine(rest, store) as archive:
            reference = parse_reference(f"docker-archive:{archive}")
            with read_local_image(reference, platform) as image:
                yield _local(image, shown=text)
        return
    reference = parse_reference(text, step="inspect", argument="image")
    if reference.transport in ("oci", "oci-archive", "docker-archive"):
        with read_local_image(reference, platform) as image:
            yield _local(image, shown=text)
        return
    yield _pulled(reference, store, platform, insecure, reporter)


def _local(image: LocalImage, shown: str) -> ImageSource:
    def opener(layer: Any) -> Callable[[], contextlib.AbstractContextManager[IO[bytes]]]:
        return lambda: contextlib.closing(image.open(layer))

    layers = tuple(
        SourceLayer(
            digest=layer.digest,
            diff_id=layer.diff_id,
            size=layer.size,
            media_type=layer.media_type,
            opener=opener(layer),
        )
        for layer in image.layers
    )
    return ImageSource(
        reference=shown, manifest_digest=image.manifest_digest, config=image.config, layers=layers
    )


@contextlib.contextmanager
def _saved_from_engine(name: str, store: Store | None) -> Iterator[Path]:
    """``docker save NAME`` into a temporary archive (beside the store's blobs when given)."""
    from imagedsl.backends.engine import require_docker

    engine = require_docker(buildkit=False)
    found = engine.run("image", "inspect", "--format", "{{.Id}}", name, check=False)
    if found.returncode != 0:
        raise ImageSourceError(f"docker:{name}", "the local engine has no such image")
    where = None
    if store is not None:
        from imagedsl.store import StoreArea

        where = store.area(StoreArea.TMP)
        where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imagedsl-inspect-", dir=where) as scratch:
        archive = Path(scratch, "image.tar")
        engine.run("save", "-o", str(archive), name, timeout=None)
        yield archive


def _pulled(
    reference: ImageReference,
    store: Store | None,
    platform: str,
    insecure: bool,
    reporter: Reporter | None,
) -> ImageSource:
    """Pull a registry image into the store (blobs already there are not fetched again)."""
    from imagedsl.oci.blobs import BlobStore
    from imagedsl.oci.image import parse_base_config
    from imagedsl.oci.platform import Platform
    from imagedsl.registry.client import RegistryClient
    from imagedsl.store import Store, default_store_path

    store = store or Store(default_store_path())
    blobs = BlobStore(store)
    with RegistryClient(insecure=insecure, progress=reporter) as client:
        pulled = client.pull(reference, store, platform=Platform.parse(platform))
    config = parse_base_config(blobs.read(pulled.config.digest), reference.familiar)
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    diff_ids += [None] * (len(pulled.layers) - len(diff_ids))

    def opener(digest: str) -> Callable[[], contextlib.AbstractContextManager[IO[bytes]]]:
        return lambda: blobs.path(digest).open("rb")

    layers = tuple(
        SourceLayer(
            digest=layer.digest,
            diff_id=diff_id,
            size=layer.size,
            media_type=layer.media_type,
            opener=opener(layer.digest),
        )
        for layer, diff_id in zip(pulled.layers, diff_ids, strict=False)
    )
    return ImageSource(
        reference=str(reference),
        manifest_digest=pulled.manifest.digest,
        config=config,
        layers=layers,
    )

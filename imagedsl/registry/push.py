"""Pushing images to registries: from an OCI layout or archive, or from the store after a build.

``imagedsl push oci:DIR[:TAG] REF`` and ``imagedsl build --backend oci --push REF`` both end
in :func:`push_manifest`, which hands the manifest to :meth:`RegistryClient.push`: blobs the
registry has are skipped, blobs of an earlier destination on the same registry are mounted.

Destinations: ``REF`` (``HOST/NAME[:TAG]``, tag ``latest`` when none) and each ``-t`` value,
which is either a bare tag (``v2``: another tag in REF's repository) or a full reference
(``HOST/OTHER:TAG``: the image is pushed there too).

Progress goes to the client's ``progress`` hooks (a :class:`~imagedsl.reporting.Reporter`
serves). Nothing here prints a credential; they stay inside :mod:`imagedsl.registry.auth`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from imagedsl.oci.annotations import REF_NAME
from imagedsl.oci.blobs import BlobSource
from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.layout import LayoutBlobs, split_path_tag
from imagedsl.oci.reference import ImageReference, parse_reference
from imagedsl.registry.client import PushResult, RegistryClient
from imagedsl.registry.errors import PushSourceError

__all__ = [
    "destinations",
    "open_layout",
    "push_manifest",
]

_LAYOUT_FILE: Final = re.compile(r"index\.json|oci-layout|blobs/sha256/[0-9a-f]{64}")
_MAX_INDEX: Final = 16 << 20


# -- where to -----------------------------------------------------------------------------------


def destinations(
    reference: str, extra_tags: Sequence[str] = ()
) -> list[tuple[ImageReference, tuple[str, ...]]]:
    """Each repository to push to, with its tags, in order (``reference``'s first)."""
    main = parse_reference(reference, step="push", argument="REF")
    if main.transport != "registry":
        raise PushSourceError(reference, "the destination must be a registry reference")
    groups: dict[str, list[str]] = {main.name: [main.tag] if main.tag else []}
    for text in extra_tags:
        if "/" not in text and ":" not in text:
            name, tag = main.name, text
        else:
            other = parse_reference(text, step="push", argument="-t")
            if other.transport != "registry" or other.tag is None:
                raise PushSourceError(text, "-t takes a tag or a registry reference NAME:TAG")
            name, tag = other.name, other.tag
        parse_reference(f"{name}:{tag}", step="push", argument="-t")  # checks the tag's syntax
        tags = groups.setdefault(name, [])
        if tag not in tags:
            tags.append(tag)
    return [
        (
            ImageReference(
                transport="registry",
                name=name,
                tag=tags[0] if tags else None,
                digest=main.digest if name == main.name else None,
            ),
            tuple(tags),
        )
        for name, tags in groups.items()
    ]


def push_manifest(
    client: RegistryClient,
    source: BlobSource,
    manifest: Descriptor,
    reference: str,
    extra_tags: Sequence[str] = (),
    *,
    mount_from: Sequence[str] = (),
) -> list[PushResult]:
    """Push ``manifest`` (and what it reaches, from ``source``) to every destination.

    ``mount_from`` names repositories (``HOST/NAME``, e.g. the base image's) that may hold
    some of the blobs: those on a destination's registry are asked to mount them first.
    """
    results: list[PushResult] = []
    candidates = list(mount_from)
    for ref, tags in destinations(reference, extra_tags):
        host = ref.name.partition("/")[0]
        mounts = [
            name.partition("/")[2]
            for name in candidates
            if name.partition("/")[0] == host and name != ref.name
        ]
        results.append(client.push(source, manifest, ref, tags=tags, mount_from=mounts))
        candidates.insert(0, ref.name)
    return results


# -- what ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_layout(text: str) -> Iterator[tuple[BlobSource, Descriptor]]:
    """The blobs and chosen manifest of ``oci:DIR[:TAG]`` or ``oci-archive:FILE[:TAG]``.

    Without a tag the layout must hold exactly one image. An archive's layout files (and only
    those: ``index.json``, ``oci-layout``, ``blobs/sha256/<hex>``) are copied into a temporary
    directory for the time of the push.
    """
    ref = parse_reference(text, step="push", argument="SRC")
    if ref.transport not in ("oci", "oci-archive"):
        raise PushSourceError(text, "expected oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
    path, tag = split_path_tag(ref.name, ref.tag)
    if ref.transport == "oci":
        if not (path / "index.json").is_file():
            raise PushSourceError(text, f"{path} is not an OCI layout (it has no index.json)")
        yield LayoutBlobs(path), _choose(path / "index.json", tag, ref.digest, text)
        return
    if not path.is_file():
        raise PushSourceError(text, f"{path} is not a file")
    with tempfile.TemporaryDirectory(prefix="imagedsl-push-") as tmp:
        root = Path(tmp)
        _extract_layout(path, root, text)
        yield LayoutBlobs(root), _choose(root / "index.json", tag, ref.digest, text)


def _extract_layout(archive: Path, root: Path, shown: str) -> None:
    try:
        with tarfile.open(archive, "r:") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not member.isreg() or not _LAYOUT_FILE.fullmatch(name):
                    continue
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - a regular member always has data
                    continue
                target = root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with handle, target.open("wb") as out:
                    shutil.copyfileobj(handle, out, 1 << 20)
    except (OSError, tarfile.TarError) as error:
        raise PushSourceError(shown, f"cannot read {archive} as a tar archive: {error}") from None
    if not (root / "index.json").is_file():
        raise PushSourceError(shown, f"{archive} holds no OCI layout (no index.json)")


def _ref_name(entry: dict[str, Any]) -> object:
    """An index entry's tag; None when its annotations are not an object (a hostile file)."""
    annotations = entry.get("annotations")
    return annotations.get(REF_NAME) if isinstance(annotations, dict) else None


def _choose(index_file: Path, tag: str | None, digest: str | None, shown: str) -> Descriptor:
    try:
        with index_file.open("rb") as handle:
            index = json.loads(handle.read(_MAX_INDEX))
    except (OSError, ValueError, RecursionError):
        raise PushSourceError(shown, "its index.json cannot be read as JSON") from None
    manifests = index.get("manifests") if isinstance(index, dict) else None
    entries = [m for m in manifests if isinstance(m, dict)] if isinstance(manifests, list) else []
    if digest is not None:
        chosen = [m for m in entries if m.get("digest") == digest]
    elif tag is not None:
        chosen = [m for m in entries if _ref_name(m) == tag]
    else:
        chosen = entries
    if len(chosen) != 1:
        names = sorted(str(_ref_name(m)) for m in entries)
        wanted = digest or (f"tag {tag!r}" if tag else "one image (no tag was given)")
        raise PushSourceError(shown, f"its index.json has not exactly {wanted}; it holds {names}")
    try:
        return Descriptor.from_json(chosen[0], "index.json")
    except ValueError as error:
        raise PushSourceError(shown, str(error)) from None

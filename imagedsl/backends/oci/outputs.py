"""Where a built image goes: an OCI layout, one archive for oci-archive and docker-archive,
or the local engine.

An OCI layout directory (``oci:DIR[:TAG]``) gets verified copies of its blobs from the store
(reflinks where the filesystem makes them; never hard links, so editing the output cannot
reach the store), then ``index.json`` replaced atomically, last; then blobs that nothing in
``index.json`` reaches any more are removed (as ``umoci gc`` does), so a layout written again
and again holds what its tags name and nothing else. ``oci-archive:FILE[:TAG]`` and
``docker-archive:FILE[:TAG]`` are one archive format: an OCI layout in a tar that also carries
Docker's ``manifest.json``, which is what ``docker load``, ``podman load`` and skopeo's
``oci-archive:`` and ``docker-archive:`` transports each look for. ``docker[:TAG]`` loads that
archive into the local engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from imagedsl.backends import BuildRequestError
from imagedsl.oci.annotations import CONTAINERD_IMAGE_NAME, REF_NAME
from imagedsl.oci.blobs import BlobStore
from imagedsl.oci.image import LayerBlob
from imagedsl.oci.layout import blob_name
from imagedsl.oci.manifest import canonical_json
from imagedsl.oci.mediatypes import (
    LAYER_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    READABLE_LAYER_TYPES,
)
from imagedsl.oci.reference import is_ref_name, normalise_tag
from imagedsl.store import atomic_file, atomic_write, fsync_dir

if TYPE_CHECKING:
    from imagedsl.backends.engine import DockerEngine

_OUTPUT_KINDS: Final = ("oci", "oci-archive", "docker-archive", "docker")


@attrs.frozen(kw_only=True)
class Output:
    """Where a built image goes: ``kind`` is oci, oci-archive, docker-archive or docker."""

    kind: str
    path: str | None
    tag: str | None

    @classmethod
    def parse(cls, text: str, tags: Sequence[str] = ()) -> Output:
        """Parse ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:TAG]``,
        ``docker[:TAG]``; ``tags`` (``-t``) name a ``docker`` output without a TAG."""
        kind, sep, rest = text.partition(":")
        if kind not in _OUTPUT_KINDS:
            raise BuildRequestError(
                f"--output {text!r}: expected oci:DIR[:TAG], oci-archive:FILE[:TAG], "
                "docker-archive:FILE[:TAG] or docker[:TAG]"
            )
        if kind == "docker":
            for name in [rest] if rest else tags:  # refused before building, not dropped
                check_docker_name(name, f"--output {text!r}" if rest else "-t")
            return cls(kind=kind, path=None, tag=rest or None)
        if not sep or not rest:
            raise BuildRequestError(f"--output {text!r}: {kind}: needs a path")
        path, _, tag = rest.partition(":")
        if not path:
            raise BuildRequestError(f"--output {text!r}: {kind}: needs a path")
        if tag:
            check_tag(tag, f"--output {text!r}")
        made = cls(kind=kind, path=path, tag=tag or None)
        made.docker_names()  # refused before building, not after
        return made

    def docker_names(self) -> tuple[str, ...] | None:
        """What Docker calls an archive output's image (its ``RepoTags``), when its TAG says:
        ``app.tar:myorg/app:1.0`` is ``myorg/app:1.0``; a bare tag takes the file's name
        (``app.tar:1.0`` is ``app:1.0``, never ``1.0:latest``). None: from the ``-t`` names."""
        if self.kind not in ("oci-archive", "docker-archive") or not self.tag:
            return None
        assert self.path is not None
        named = ":" in self.tag or "/" in self.tag
        if self.kind == "oci-archive" and named and not _is_docker_name(normalise_tag(self.tag)):
            return ()  # an OCI name Docker has no spelling for: the index keeps it
        return (archive_docker_name(self.path, self.tag),)


def check_tag(tag: str, where: str) -> str:
    """Refuse a tag that is not an OCI reference name (``v 1``, ``-x``, ``a::b``)."""
    if not is_ref_name(tag):
        raise BuildRequestError(
            f"{where}: {tag!r} is not a valid tag (letters and digits, with one of . _ - : @ +"
            " or -- between them, and / between components)"
        )
    return tag


def check_docker_name(tag: str, where: str) -> str:
    """Refuse a name Docker would not tag an image with (``Org/App``: repositories are lower
    case): Docker loads the image untagged, and a build must not report a name it lacks."""
    check_tag(tag, where)
    if not _is_docker_name(normalise_tag(tag)):
        raise BuildRequestError(
            f"{where}: {tag!r} is not an image name Docker accepts (a repository is lower "
            "case letters, digits and . _ - /, then :TAG)"
        )
    return normalise_tag(tag)


def archive_docker_name(path: str, tag: str) -> str:
    """The Docker name of an archive's TAG: itself when it names an image (``NAME:TAG`` or
    ``ORG/NAME``), else ``<file name>:<TAG>``; refused when the file gives no usable name."""
    if ":" in tag or "/" in tag:
        return check_docker_name(tag, f"--output {path}:{tag}")
    stem = re.sub(r"(\.tar)?(\.(gz|zst|zstd))?$", "", Path(path).name.lower())
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("._-")
    name = f"{stem}:{tag}"
    if not stem or not _is_docker_name(name):
        raise BuildRequestError(
            f"--output {path}:{tag}: {tag!r} is a tag without an image name, and the file's "
            f"name gives none: write {path}:NAME:{tag}"
        )
    return name


@attrs.frozen(kw_only=True)
class BuiltImage:
    """An image whose blobs are all in the store."""

    manifest: bytes = attrs.field(repr=False)
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerBlob, ...]

    @property
    def media_type(self) -> str:
        """An image manifest's."""
        return OCI_MANIFEST

    @property
    def blob_digests(self) -> list[str]:
        """Config and layers (the manifest apart)."""
        return [self.config_digest, *(layer.digest for layer in self.layers)]


@attrs.frozen(kw_only=True)
class BuiltIndex:
    """An image index of images built for several platforms, all in the store: ``manifest``
    is the index document (what a tag names)."""

    manifest: bytes = attrs.field(repr=False)
    manifest_digest: str
    images: tuple[BuiltImage, ...]

    @property
    def media_type(self) -> str:
        """An image index's."""
        return OCI_INDEX

    @property
    def blob_digests(self) -> list[str]:
        """Every image's blobs and manifest, in order, each once (the index apart)."""
        found: dict[str, None] = {}
        for image in self.images:
            found.update(dict.fromkeys([*image.blob_digests, image.manifest_digest]))
        return list(found)


def _index_entry(image: BuiltImage | BuiltIndex, tag: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "mediaType": image.media_type,
        "digest": image.manifest_digest,
        "size": len(image.manifest),
    }
    if tag:
        entry["annotations"] = {REF_NAME: tag}
    return entry


def write_layout(
    directory: Path, image: BuiltImage | BuiltIndex, tags: Sequence[str], blobs: BlobStore
) -> None:
    """Add ``image`` to an OCI layout directory (made if missing) under ``tags``.

    Blobs go in first (each a verified copy put atomically under its name), ``index.json``
    last, replaced
    atomically: a build killed at any point leaves the layout as it was or with the image.
    Then blobs no tag reaches any more are removed (:func:`collect_layout_garbage`). Writers
    of one layout take turns (flock on the directory), so one never removes what another has
    linked but not yet named.
    """
    directory.mkdir(parents=True, exist_ok=True)
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _write_layout(directory, image, tags, blobs)
        collect_layout_garbage(directory)
    finally:
        os.close(handle)


def _write_layout(
    directory: Path, image: BuiltImage | BuiltIndex, tags: Sequence[str], blobs: BlobStore
) -> None:
    marker = directory / "oci-layout"
    if not marker.exists():
        atomic_write(marker, canonical_json({"imageLayoutVersion": "1.0.0"}))
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    blobs.place([*image.blob_digests, image.manifest_digest], blob_dir)  # absent or damaged
    fsync_dir(blob_dir)
    manifests: list[dict[str, Any]] = []
    index_file = directory / "index.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        old = json.loads(index_file.read_bytes())
        manifests = [m for m in old.get("manifests", []) if isinstance(m, dict)]
    wanted: list[str | None] = [*tags] or [None]
    kept = []
    for item in manifests:
        name = (item.get("annotations") or {}).get(REF_NAME)
        if name in wanted or (name is None and item.get("digest") == image.manifest_digest):
            continue
        kept.append(item)
    kept.extend(_index_entry(image, tag) for tag in wanted)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": kept}
    atomic_write(index_file, canonical_json(index))


def collect_layout_garbage(directory: Path) -> int:
    """Remove the blobs of an OCI layout that its ``index.json`` no longer reaches; return how
    many. Reachable: every descriptor of the index, and, inside manifests and indexes, their
    config, layers, blobs, manifests and subject. When a reachable manifest or index cannot be
    read, nothing is removed (better a stale blob than a broken image)."""
    blob_dir = directory / "blobs" / "sha256"
    try:
        index = json.loads((directory / "index.json").read_bytes())
        present = {name for name in os.listdir(blob_dir) if _HEX64.fullmatch(name)}
    except (OSError, ValueError):
        return 0
    reachable: set[str] = set()
    pending = list(_descriptors(index))
    while pending:
        descriptor = pending.pop()
        digest = descriptor.get("digest")
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            continue
        name = digest.removeprefix("sha256:")
        if name in reachable:
            continue
        reachable.add(name)
        if descriptor.get("mediaType") in _LAYER_TYPES or name not in present:
            continue  # a layer, or a blob kept elsewhere (a registry): nothing inside it
        if int(descriptor.get("size") or 0) > _MAX_DOCUMENT:
            continue
        try:
            document = json.loads((blob_dir / name).read_bytes())
        except OSError:
            return 0
        except ValueError:
            continue  # a config or another non-JSON blob
        pending.extend(_descriptors(document))
    removed = 0
    for name in sorted(present - reachable):
        with contextlib.suppress(FileNotFoundError):
            (blob_dir / name).unlink()
            removed += 1
    if removed:
        fsync_dir(blob_dir)
    return removed


_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_MAX_DOCUMENT: Final = 16 << 20
_LAYER_TYPES: Final = frozenset(LAYER_MEDIA_TYPES.values()) | frozenset(READABLE_LAYER_TYPES)


def _descriptors(document: object) -> list[dict[str, Any]]:
    """The descriptors a manifest or an index refers to directly."""
    if not isinstance(document, dict):
        return []
    found: list[object] = []
    for key in ("manifests", "layers", "blobs"):
        value = document.get(key)
        if isinstance(value, list):
            found.extend(value)
    for key in ("config", "subject"):
        found.append(document.get(key))
    return [item for item in found if isinstance(item, dict)]


def write_archive(
    path: Path,
    image: BuiltImage | BuiltIndex,
    tags: Sequence[str],
    blobs: BlobStore,
    *,
    mtime: int,
    docker_names: Sequence[str] | None = None,
) -> None:
    """One tar that is both an OCI layout and a ``docker save`` archive, written atomically.

    ``tags`` are the index's ``ref.name``s; ``docker_names`` what Docker calls the image, one
    per tag (default: each tag that is a Docker name, with ``:latest`` added to a bare one).
    An index (several platforms) is an OCI archive only: Docker's ``manifest.json`` names one
    image per name, so it is left out.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if docker_names is None:
        docker_names = [normalise_tag(t) for t in tags]
    known = [n if _is_docker_name(n) else None for n in docker_names]
    docker_manifest = None
    if isinstance(image, BuiltImage):
        docker_manifest = [
            {
                "Config": blob_name(image.config_digest),
                "RepoTags": [n for n in known if n is not None],
                "Layers": [blob_name(layer.digest) for layer in image.layers],
            }
        ]
    names: list[str | None] = [*tags] or [None]
    entries = [_index_entry(image, tag) for tag in names]
    for entry, docker_name in zip(entries, known, strict=False):
        if docker_name is not None:
            entry.setdefault("annotations", {})[CONTAINERD_IMAGE_NAME] = docker_name
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    with (
        atomic_file(path) as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        _add_dir(archive, "blobs/", mtime)
        _add_dir(archive, "blobs/sha256/", mtime)
        seen = set()
        for digest in [*image.blob_digests, image.manifest_digest]:
            if digest in seen:
                continue
            seen.add(digest)
            source = blobs.verified_path(digest)
            info = _info(blob_name(digest), mtime)
            info.size = source.stat().st_size
            with source.open("rb") as handle:
                archive.addfile(info, handle)
        files = [("index.json", canonical_json(index))]
        if docker_manifest is not None:
            files.append(("manifest.json", canonical_json(docker_manifest)))
        files.append(("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})))
        for name, data in files:
            info = _info(name, mtime)
            info.size = len(data)
            archive.addfile(info, _BytesReader(data))


def _is_docker_name(tag: str) -> bool:
    return bool(
        re.fullmatch(r"[a-z0-9][a-z0-9._/-]*(?::\d+)?(?:/[a-z0-9._-]+)*:[\w][\w.-]{0,127}", tag)
    )


def _info(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_dir(archive: tarfile.TarFile, name: str, mtime: int) -> None:
    info = _info(name, mtime)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    archive.addfile(info)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._offset + n
        chunk = self._data[self._offset : end]
        self._offset += len(chunk)
        return chunk


def load_into_docker(archive: Path, tags: Sequence[str], engine: DockerEngine) -> str:
    """``docker load`` an archive; return what the engine calls the image."""
    from imagedsl.backends.engine import DockerCommandError

    try:
        result = engine.run("load", "-i", str(archive))
    except DockerCommandError as error:
        problem = (error.stderr or error.stdout or "").strip().splitlines()[-1:]
        raise BuildRequestError(
            f"docker load refused the image: {' '.join(problem) or error}"
            " (zstd layers need an engine that reads them; gzip works everywhere)"
        ) from None
    loaded = ""
    for line in result.stdout.splitlines():
        if line.startswith(("Loaded image:", "Loaded image ID:")):
            loaded = line.split(":", 1)[1].strip()
    return normalise_tag(tags[0]) if tags else loaded

"""A build cache shared through a registry: ledger records and OCI layers as one artifact.

``imagedsl build --cache-to registry:REF`` pushes, and ``--cache-from registry:REF`` (on
``build`` and ``plan``) reads, one OCI artifact per reference::

    image manifest (application/vnd.oci.image.manifest.v1+json)
      artifactType  application/vnd.imagedsl.cache.v1
      config        the empty descriptor (application/vnd.oci.empty.v1+json, the 2 bytes "{}")
      layers[0]     the records bundle (application/vnd.imagedsl.cache.records.v1+json)
      layers[1:]    every layer blob the bundle names, sorted by digest, with its own media type

The records bundle is one canonical JSON document (sorted keys, no spaces, no times), so the
same build exports the same bytes and the same manifest digest:

- ``records``: the ledger records of every step of the plan (key, preimage, locus, outputs),
  including the structural records of ``COPY --from`` steps, which map them to content keys;
- ``trees``: the file manifests of the trees those records name (they explain misses);
- ``layers``: the OCI backend's layer-cache entries the build used: entry name, step key, and
  the layer (digest, size, diff_id, media type, uncompressed size) or null (a WORKDIR that
  made no layer). With an entry and its blob in the store, the backend reuses the layer as it
  is, without recompressing it.

Importing is careful about what it trusts. The bundle is refused whole if any record's key is
not the blake3 of its preimage (checked again by :meth:`Store.put`), if a layer names a blob the
artifact does not carry, or if anything is malformed; nothing is written until all of it has
been checked, and then trees first and records last. Layer blobs are fetched with their sha256
checked (by :class:`RegistryClient`), and the tar inside each is hashed before its entry is
written: an entry whose diff_id or size is wrong is refused.

Records are imported eagerly (they are small, and ``plan`` needs them). Layer blobs are fetched
by :func:`import_layers` only for the steps the plan then shows as hits: everything the backend
will reuse, and nothing above a miss, which it rebuilds anyway.

Nothing in the artifact comes from credentials: it is made of ledger records, tree manifests
and layers only. Records do hold what keys hold (command lines, ENV and in-scope ARG values,
file names and digests of the context), so a cache is as readable as an image's history.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, cast

import attrs

from imagedsl import keys
from imagedsl.backends.oci.backend import layer_cache_path
from imagedsl.errors import EnvironmentFailure, InputError
from imagedsl.oci.annotations import TITLE
from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.image import LayerBlob
from imagedsl.oci.manifest import Manifest
from imagedsl.oci.mediatypes import (
    LAYER_MEDIA_TYPES,
    OCI_EMPTY,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)
from imagedsl.oci.reference import ImageReference, parse_reference
from imagedsl.registry.client import PushResult, RegistryClient
from imagedsl.registry.transport import Repository
from imagedsl.store import Record, Store, StoreArea, atomic_write

if TYPE_CHECKING:
    from imagedsl.planner import Plan

__all__ = [
    "BUNDLE_VERSION",
    "CACHE_ARTIFACT_TYPE",
    "RECORDS_MEDIA_TYPE",
    "CacheBundle",
    "CacheReferenceError",
    "CachedLayer",
    "ImportedLayers",
    "ImportedRecords",
    "RemoteCache",
    "RemoteCacheError",
    "collect",
    "export_cache",
    "fetch_cache",
    "import_layers",
    "import_records",
    "parse_cache_reference",
]

CACHE_ARTIFACT_TYPE: Final = "application/vnd.imagedsl.cache.v1"
RECORDS_MEDIA_TYPE: Final = "application/vnd.imagedsl.cache.records.v1+json"
BUNDLE_VERSION: Final = 1
_EMPTY: Final = b"{}"
_EMPTY_DIGEST: Final = "sha256:" + hashlib.sha256(_EMPTY).hexdigest()
#: A bundle is read into memory; anything larger is refused rather than loaded.
#: Records are a few KB per step: 16 MiB holds thousands of steps, and parsing it stays far
#: below the 200 MB a client may use facing a hostile registry (docs/security.md).
_MAX_BUNDLE: Final = 16 << 20
_LAYER_MEDIA_TYPES: Final = frozenset(LAYER_MEDIA_TYPES.values())
_CHUNK: Final = 1 << 20


@attrs.define
class RemoteCacheError(EnvironmentFailure):
    """A remote cache cannot be used: not a cache, malformed, or lying about its contents."""

    reference: str
    problem: str

    def __str__(self) -> str:
        return f"remote cache {self.reference}: {self.problem}"


class CacheReferenceError(InputError, RemoteCacheError):
    """A cache option does not name a cache (the CLI exits 2: the user can fix it)."""


def parse_cache_reference(text: str, option: str = "--cache-from") -> ImageReference:
    """``registry:NAME[:TAG]`` -> the registry reference (the only cache type there is)."""
    kind, sep, rest = text.partition(":")
    if kind != "registry" or not sep or not rest:
        raise CacheReferenceError(text, f"{option} expects registry:NAME[:TAG]")
    reference = parse_reference(rest, step=option, argument="REF")
    if reference.transport != "registry":
        raise CacheReferenceError(text, f"{option} expects registry:NAME[:TAG]")
    return reference


# -- the bundle ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CachedLayer:
    """One layer-cache entry of the OCI backend: its name, its step's key, and its layer."""

    entry: str
    key: str
    layer: LayerBlob | None

    def to_json(self) -> dict[str, Any]:
        """The bundle form."""
        layer = None if self.layer is None else self.layer.to_json()
        return {"entry": self.entry, "key": self.key, "layer": layer}


@attrs.frozen(kw_only=True)
class CacheBundle:
    """What a remote cache holds besides layer bytes: records, trees, layer-cache entries."""

    records: tuple[Record, ...]
    trees: Mapping[str, Mapping[str, list[object]]] = attrs.field(factory=dict)
    layers: tuple[CachedLayer, ...] = ()

    @property
    def blobs(self) -> list[LayerBlob]:
        """The layers the entries name, one per digest, sorted by digest."""
        unique = {c.layer.digest: c.layer for c in self.layers if c.layer is not None}
        return [unique[d] for d in sorted(unique)]

    def to_json(self) -> bytes:
        """The canonical bytes: sorted, compact, without times (same build, same bytes)."""
        payload = {
            "v": BUNDLE_VERSION,
            "records": [
                {"key": r.key, "preimage": r.preimage, "locus": r.locus, "outputs": r.outputs}
                for r in sorted(self.records, key=lambda r: r.key)
            ],
            "trees": {d: self.trees[d] for d in sorted(self.trees)},
            "layers": [c.to_json() for c in sorted(self.layers, key=lambda c: c.entry)],
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> CacheBundle:
        """Parse and check a bundle; :class:`RemoteCacheError` says what is wrong with it."""
        try:
            payload = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise RemoteCacheError(where, "the records bundle is not JSON") from None
        if not isinstance(payload, dict) or payload.get("v") != BUNDLE_VERSION:
            raise RemoteCacheError(where, f"the records bundle is not version {BUNDLE_VERSION}")
        records = tuple(_record(item, where) for item in _list(payload, "records", where))
        trees_value = payload.get("trees") or {}
        if not isinstance(trees_value, dict):
            raise RemoteCacheError(where, "the bundle's trees are not an object")
        named = {_tree_digest(r) for r in records} | {_copy_tree(r) for r in records}
        trees = {}
        for digest, manifest in trees_value.items():
            if digest not in named or not _is_tree_manifest(manifest):
                raise RemoteCacheError(where, f"tree {str(digest)[:16]} is malformed or unused")
            trees[digest] = manifest
        recorded = {r.key for r in records}
        layers = tuple(
            _cached_layer(item, recorded, where) for item in _list(payload, "layers", where)
        )
        return cls(records=records, trees=trees, layers=layers)


def _list(payload: Mapping[str, Any], name: str, where: str) -> list[Any]:
    value = payload.get(name) or []
    if not isinstance(value, list):
        raise RemoteCacheError(where, f"the bundle's {name} are not a list")
    return value


def _record(item: object, where: str) -> Record:
    if not isinstance(item, dict):
        raise RemoteCacheError(where, "a record is not an object")
    key, preimage = item.get("key"), item.get("preimage")
    locus, outputs = item.get("locus"), item.get("outputs") or {}
    if not keys.is_key(key) or not isinstance(preimage, dict):
        raise RemoteCacheError(where, "a record lacks its key or preimage")
    assert isinstance(key, str)
    if keys.key_of(preimage) != key:
        raise RemoteCacheError(where, f"record {key[:16]}: its preimage does not hash to its key")
    if not isinstance(outputs, dict) or not (locus is None or keys.is_key(locus)):
        raise RemoteCacheError(where, f"record {key[:16]}: malformed outputs or locus")
    return Record(key=key, preimage=preimage, locus=locus, outputs=outputs, created=0.0)


def _tree_digest(record: Record) -> str | None:
    tree = record.preimage.get("tree")
    return tree if keys.is_key(tree) else None


def _copy_tree(record: Record) -> str | None:
    tree = record.outputs.get("tree")
    return tree if keys.is_key(tree) else None


def _is_tree_manifest(value: object) -> bool:
    """Source path -> [type, mode, size, digest or link target], as Tree.manifest() makes."""
    return isinstance(value, dict) and all(
        isinstance(path, str)
        and isinstance(row, list)
        and len(row) == 4
        and isinstance(row[0], str)
        and isinstance(row[1], int)
        and isinstance(row[2], int)
        and isinstance(row[3], str)
        for path, row in value.items()
    )


def _cached_layer(item: object, recorded: Collection[str], where: str) -> CachedLayer:
    if not isinstance(item, dict):
        raise RemoteCacheError(where, "a layer entry is not an object")
    entry, key, layer = item.get("entry"), item.get("key"), item.get("layer")
    if not keys.is_key(entry) or not keys.is_key(key) or key not in recorded:
        raise RemoteCacheError(where, "a layer entry has no name, or no record for its step")
    assert isinstance(entry, str)
    assert isinstance(key, str)
    if layer is None:
        return CachedLayer(entry=entry, key=key, layer=None)
    try:
        blob = LayerBlob(**layer)
        valid = (
            _is_sha256(blob.digest)
            and _is_sha256(blob.diff_id)
            and blob.media_type in _LAYER_MEDIA_TYPES
            and isinstance(blob.size, int)
            and isinstance(blob.uncompressed_size, int)
        )
    except TypeError:
        valid = False
    if not valid:
        raise RemoteCacheError(where, f"layer entry {entry[:16]} is malformed")
    return CachedLayer(entry=entry, key=key, layer=blob)


def _is_sha256(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("sha256:")
        and keys.is_key(value.removeprefix("sha256:"))
    )


# -- export ----------------------------------------------------------------------------------


def collect(store: Store, plan: Plan, layer_cache: Sequence[tuple[str, Path]] = ()) -> CacheBundle:
    """The bundle of a built plan: its records, their trees, and the layer-cache entries used.

    ``plan`` is planned after the build (so every step it built is recorded); ``layer_cache``
    is :attr:`imagedsl.backends.oci.backend.OCIBuild.layer_cache`. Steps without a record (not
    built) and entries whose layer blob is not in the store are left out.
    """
    wanted: set[str] = set()
    for step in plan.steps:
        node = step.node
        if node.is_config or node.kind == "scratch":
            continue
        wanted.add(node.key)
        if node.structural_key is not None:
            wanted.add(node.structural_key)
    records = [r for r in (store.get(k) for k in sorted(wanted)) if r is not None]
    trees: dict[str, Mapping[str, list[object]]] = {}
    for record in records:
        for digest in (_tree_digest(record), _copy_tree(record)):
            manifest = None if digest is None else store.get_tree(digest)
            if digest is not None and manifest is not None and _is_tree_manifest(manifest):
                trees[digest] = manifest
    recorded = {r.key for r in records}
    layers: dict[str, CachedLayer] = {}
    for key, path in layer_cache:
        cached = _read_entry(store, key, path)
        if cached is not None and key in recorded:
            layers[cached.entry] = cached
    return CacheBundle(records=tuple(records), trees=trees, layers=tuple(layers.values()))


def _read_entry(store: Store, key: str, path: Path) -> CachedLayer | None:
    try:
        saved = json.loads(path.read_bytes())
        layer = None if saved is None else LayerBlob(**saved)
    except (OSError, ValueError, TypeError):
        return None
    if layer is not None and not _has_blob(store, layer.digest, layer.size):
        return None
    return CachedLayer(entry=path.stem, key=key, layer=layer)


def _has_blob(store: Store, digest: str, size: int) -> bool:
    try:
        return store.blob_path(digest).stat().st_size == size
    except (OSError, ValueError):
        return False


def cache_manifest(bundle: bytes, layers: Sequence[LayerBlob]) -> bytes:
    """The artifact's image manifest (canonical JSON) for a bundle and the layers it names."""
    records = {
        "mediaType": RECORDS_MEDIA_TYPE,
        "digest": "sha256:" + hashlib.sha256(bundle).hexdigest(),
        "size": len(bundle),
        "annotations": {TITLE: "records.json"},
    }
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": CACHE_ARTIFACT_TYPE,
        "config": {
            "mediaType": OCI_EMPTY,
            "digest": _EMPTY_DIGEST,
            "size": len(_EMPTY),
            "data": "e30=",
        },
        "layers": [
            records,
            *(
                {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ),
        ],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@attrs.frozen
class _ExportBlobs:
    """The artifact's own small blobs (in a scratch directory) over the store's layers."""

    scratch: Path
    store: Store

    def blob_path(self, digest: str) -> Path:
        """The scratch file when there is one, else the store's blob."""
        own = self.scratch / digest.partition(":")[2]
        return own if own.exists() else self.store.blob_path(digest)


def export_cache(
    client: RegistryClient,
    store: Store,
    bundle: CacheBundle,
    reference: str | ImageReference,
    *,
    mount_from: Sequence[str] = (),
) -> PushResult:
    """Push ``bundle`` and its layers as the cache artifact ``reference`` (replacing its tag).

    Blobs the registry has are not sent again; ``mount_from`` names repositories of the same
    registry to mount layers from (the image's own repository, when it was just pushed).
    """
    data = bundle.to_json()
    manifest = cache_manifest(data, bundle.blobs)
    store.area(StoreArea.TMP).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.area(StoreArea.TMP)) as scratch:
        for blob in (data, _EMPTY, manifest):
            Path(scratch, hashlib.sha256(blob).hexdigest()).write_bytes(blob)
        descriptor = Descriptor(
            media_type=OCI_MANIFEST,
            digest="sha256:" + hashlib.sha256(manifest).hexdigest(),
            size=len(manifest),
        )
        source = _ExportBlobs(Path(scratch), store)
        return client.push(source, descriptor, reference, mount_from=mount_from)


# -- import ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RemoteCache:
    """A cache artifact read from a registry: its manifest, bundle, and layer descriptors."""

    reference: ImageReference
    manifest: Manifest
    bundle: CacheBundle
    #: Layer digest -> its descriptor in the artifact.
    layers: Mapping[str, Descriptor] = attrs.field(hash=False)

    @property
    def repository(self) -> Repository:
        """Where the layer blobs are fetched from."""
        return Repository.of(self.reference)


def fetch_cache(
    client: RegistryClient, reference: str | ImageReference, store: Store
) -> RemoteCache:
    """Read the cache artifact ``reference``: its manifest and records bundle (kept in the
    store's blobs, so reading the same artifact again downloads nothing), checked whole.

    Raises :class:`~imagedsl.registry.errors.NotFoundError` when there is no such tag.
    """
    ref = parse_reference(reference, step="cache") if isinstance(reference, str) else reference
    shown = str(ref)
    manifest = client.get_manifest(ref, store=store)
    try:
        document = json.loads(manifest.raw)
    except ValueError:  # pragma: no cover - Manifest.parse read it already
        document = {}
    if manifest.is_index or document.get("artifactType") != CACHE_ARTIFACT_TYPE:
        found = "an index" if manifest.is_index else repr(document.get("artifactType"))
        raise RemoteCacheError(shown, f"is not an imagedsl cache (its artifactType is {found})")
    if not manifest.layers or manifest.layers[0].media_type != RECORDS_MEDIA_TYPE:
        raise RemoteCacheError(shown, "its first layer is not a records bundle")
    records = manifest.layers[0]
    if records.size > _MAX_BUNDLE:
        raise RemoteCacheError(shown, f"its records bundle is too large ({records.size} bytes)")
    client.fetch_blob(Repository.of(ref), records, store)
    bundle = CacheBundle.from_json(store.blob_path(records.digest).read_bytes(), shown)
    carried = {d.digest: d for d in manifest.layers[1:]}
    for layer in bundle.blobs:
        descriptor = carried.get(layer.digest)
        if (
            descriptor is None
            or descriptor.size != layer.size
            or descriptor.media_type != layer.media_type
        ):
            raise RemoteCacheError(shown, f"layer {layer.digest} is named but not carried")
    return RemoteCache(reference=ref, manifest=manifest, bundle=bundle, layers=carried)


@attrs.frozen(kw_only=True)
class ImportedRecords:
    """What :func:`import_records` did."""

    #: Keys the store did not have before: the hits the remote cache adds.
    new: frozenset[str]
    #: Records written (new ones, and known ones given outputs they lacked).
    written: int


def import_records(store: Store, bundle: CacheBundle) -> ImportedRecords:
    """Put a checked bundle's trees, then its records, into ``store``.

    Outputs the store already has for a key win over the remote's (a local build is the
    better witness of what it made); records that add nothing are not rewritten.
    """
    for digest, manifest in bundle.trees.items():
        if store.get_tree(digest) is None:
            store.put_tree(digest, manifest)
    new: set[str] = set()
    written = 0
    now = time.time()
    for record in bundle.records:
        old = store.get(record.key)
        if old is None:
            new.add(record.key)
            outputs = dict(record.outputs)
        else:
            outputs = {k: v for k, v in record.outputs.items() if k not in old.outputs}
            if not outputs:
                continue
        store.put(attrs.evolve(record, outputs=outputs, created=now))
        written += 1
    return ImportedRecords(new=frozenset(new), written=written)


@attrs.frozen(kw_only=True)
class ImportedLayers:
    """What :func:`import_layers` did."""

    entries: int
    blobs_fetched: int
    bytes_fetched: int


def import_layers(
    client: RegistryClient,
    cache: RemoteCache,
    store: Store,
    step_keys: Collection[str],
    *,
    media_types: Collection[str] | None = None,
) -> ImportedLayers:
    """Make the layers of ``step_keys`` reusable: fetch their blobs (in parallel, checked),
    hash the tar inside each against its diff_id, then write their layer-cache entries.

    Pass the keys of the steps a plan shows as hits: the ones the backend will reuse, and
    ``media_types`` to skip layers of a compression the backend will not look for. An entry
    the store can use already (its blob present) is kept: a local build is as good a witness.
    """
    wanted = [
        c
        for c in cache.bundle.layers
        if c.key in step_keys
        and (c.layer is None or media_types is None or c.layer.media_type in media_types)
    ]
    pending = [c for c in wanted if not _entry_usable(store, c)]
    by_digest: dict[str, LayerBlob] = {}
    for cached in pending:
        if cached.layer is not None:
            by_digest.setdefault(cached.layer.digest, cached.layer)
    shown = str(cache.reference)

    def fetch(layer: LayerBlob) -> int:
        fetched = client.fetch_blob(cache.repository, cache.layers[layer.digest], store)
        _check_layer(store.blob_path(layer.digest), layer, shown)
        return fetched

    layers = list(by_digest.values())
    if len(layers) > 1 and client.workers > 1:
        workers = min(client.workers, len(layers))
        with concurrent.futures.ThreadPoolExecutor(workers, "imagedsl-cache") as pool:
            sizes = list(pool.map(fetch, layers))
    else:
        sizes = [fetch(layer) for layer in layers]
    for cached in pending:
        if cached.layer is not None and by_digest[cached.layer.digest] != cached.layer:
            # Two entries for one blob must agree on what is inside it.
            _check_layer(store.blob_path(cached.layer.digest), cached.layer, shown)
        layer = None if cached.layer is None else cached.layer.to_json()
        atomic_write(layer_cache_path(store, cached.entry), json.dumps(layer).encode())
    return ImportedLayers(
        entries=len(pending),
        blobs_fetched=sum(1 for size in sizes if size),
        bytes_fetched=sum(sizes),
    )


def _entry_usable(store: Store, cached: CachedLayer) -> bool:
    """Whether the backend would reuse the store's own entry of this name as it is."""
    try:
        saved = json.loads(layer_cache_path(store, cached.entry).read_bytes())
        layer = None if saved is None else LayerBlob(**saved)
    except (OSError, ValueError, TypeError):
        return False
    return layer is None or _has_blob(store, layer.digest, layer.size)


def _check_layer(path: Path, layer: LayerBlob, where: str) -> None:
    """Hash the tar inside a layer blob: it must be the diff_id and size the entry claims."""
    import zstandard

    hasher = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as raw, _tar_stream(raw, layer.media_type) as tar:
            while chunk := tar.read(_CHUNK):
                hasher.update(chunk)
                size += len(chunk)
    except (OSError, EOFError, zstandard.ZstdError) as error:
        raise RemoteCacheError(
            where, f"layer {layer.digest} cannot be decompressed ({error}); it was refused"
        ) from None
    actual = "sha256:" + hasher.hexdigest()
    if actual != layer.diff_id or size != layer.uncompressed_size:
        raise RemoteCacheError(
            where,
            f"layer {layer.digest} holds a tar of {size} bytes hashing to {actual}, "
            f"not {layer.uncompressed_size} bytes hashing to {layer.diff_id}; it was refused",
        )


@contextlib.contextmanager
def _tar_stream(raw: IO[bytes], media_type: str) -> Iterator[IO[bytes]]:
    if media_type == OCI_LAYER_GZIP:
        from isal import igzip

        with igzip.IGzipFile(fileobj=raw, mode="rb") as reader:  # type: ignore[no-untyped-call]
            yield cast("IO[bytes]", reader)
    elif media_type == OCI_LAYER_ZSTD:
        import zstandard

        decompressor = zstandard.ZstdDecompressor()
        with decompressor.stream_reader(raw, read_across_frames=True) as reader:
            yield cast("IO[bytes]", reader)
    else:
        yield raw

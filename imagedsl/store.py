"""The store: content-addressed blobs, the key ledger, and small caches, all on disk.

The store root is ``--store``, else ``$IMAGEDSL_STORE``, else the user cache dir. Its parts
are the :class:`StoreArea` members, each named once here and reached with
:meth:`Store.area`; :class:`Store` lists them all.

Every file is written to a temporary file in the same directory, fsynced, then renamed over
its name (and the directory fsynced), so readers never see half a file and a killed build
leaves the old content. Updates that read before they write (merging outputs, appending to a
locus) hold the store lock. A record that cannot be read or does not match its key is reported
as a :class:`StoreWarning` and treated as absent.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final

import attrs
import blake3

from imagedsl import _watch, keys
from imagedsl.errors import StoreError

LEDGER_VERSION: Final = 1
_LOCUS_HISTORY: Final = 16


class StoreWarning(UserWarning):
    """Something in the store was unreadable and was ignored (it costs a cache miss)."""


def default_store_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$IMAGEDSL_STORE``, else ``$XDG_CACHE_HOME/imagedsl``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("IMAGEDSL_STORE")
    if env:
        return Path(env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "imagedsl"


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644, durable: bool = True) -> Iterator[IO[bytes]]:
    """A file to write whose bytes replace ``path`` only if the block completes.

    The bytes go to a temporary file in the same directory, are fsynced, get ``mode``, and
    are renamed over ``path`` (the directory is fsynced too): readers see the old file or
    the new one, never part of one, and an error or a kill leaves ``path`` as it was.
    ``durable=False`` skips the fsyncs, for caches whose readers verify what they read (a
    crash may then lose the new file, which costs a cache miss, never a wrong answer).
    """
    import tempfile  # here, not at the top: a warm plan writes nothing and should not pay for it

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise naming(error, path) from None
        raise
    if durable:
        fsync_dir(path.parent)


def naming(error: OSError, path: str | os.PathLike[str]) -> OSError:
    """``error`` with a path to show: a failed ``write`` (a full disk, say) names no file,
    and the CLI's one line says which file could not be written."""
    if error.filename is not None:
        return error
    named = OSError(error.errno, error.strerror or str(error), os.fspath(path))
    named.__cause__ = error
    return named


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, mode=mode, durable=durable) as handle:
        handle.write(data)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.frozen(kw_only=True)
class Record:
    """What the ledger knows of one key: its preimage, where it was, what building it made."""

    key: str
    preimage: keys.Preimage
    locus: str | None = None
    #: Backend outputs: layer digests, image ids, the tree digest a COPY --from produced.
    outputs: Mapping[str, Any] = attrs.field(factory=dict)
    created: float = attrs.field(factory=time.time, eq=False)

    def to_json(self) -> bytes:
        """The on-disk form."""
        payload = {
            "v": LEDGER_VERSION,
            "key": self.key,
            "preimage": self.preimage,
            "locus": self.locus,
            "outputs": dict(self.outputs),
            "created": self.created,
        }
        return json.dumps(payload, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        """Parse and verify a record; ``ValueError`` if it is damaged or not what it claims."""
        payload = json.loads(data)
        if not isinstance(payload, dict) or payload.get("v") != LEDGER_VERSION:
            raise ValueError("not a version 1 record")
        key, preimage = payload.get("key"), payload.get("preimage")
        if not keys.is_key(key) or not isinstance(preimage, dict):
            raise ValueError("record without key or preimage")
        if keys.key_of(preimage) != key:
            raise ValueError("preimage does not hash to the record's key")
        outputs = payload.get("outputs") or {}
        locus = payload.get("locus")
        created = payload.get("created", 0.0)
        if not isinstance(outputs, dict) or not isinstance(locus, str | None):
            raise ValueError("record with malformed outputs or locus")
        if not isinstance(created, int | float):
            raise ValueError("record with malformed time")
        return cls(key=key, preimage=preimage, locus=locus, outputs=outputs, created=created)


class StoreArea(enum.Enum):
    """A part of the store: its path relative to the store root (see :class:`Store`)."""

    BLOBS = "blobs/sha256"
    BLOB_STAMPS = "cache/verified"
    LEDGER = "ledger"
    LOCI = "loci"
    TREES = "trees"
    STAT_CACHES = "cache/stat"
    ANALYSES = "cache/analysis"
    CHECK_FACTS = "cache/check"
    LOCK = "lock"
    TMP = "tmp"
    CONTEXTS = "contexts"
    CACHE_MOUNTS = "cache-mounts"
    OCI_LAYERS = "oci/layers"
    OCI_INDEX = "oci/index"
    OCI_BASES = "oci/bases"
    OCI_SNAPSHOTS = "oci/snapshots"
    OCI_RUNS = "oci/runs"
    ENGINES = "cache/engines"
    DOCKER_IMAGES = "cache/docker-images"


class Store:
    """One store directory: blobs, ledger and caches. Safe for concurrent processes.

    Every path under the root belongs to one :class:`StoreArea`; ``store.area(StoreArea.X)``
    is where it lives (nothing is created until something is written there):

    ``BLOBS`` ``blobs/sha256/<hex>``
        content-addressed blobs: layers, configs, manifests (base images' too)
    ``BLOB_STAMPS`` ``cache/verified/<h[:2]>/<hex>``
        per blob: its size, inode, mtime and ctime when its bytes last hashed right (so a
        reused blob is hashed again only if touched); the stamp's mtime is its last use
    ``LEDGER`` ``ledger/<k[:2]>/<key>.json``
        key -> record: preimage, outputs, locus, time
    ``LOCI`` ``loci/<l[:2]>/<locus>.json``
        the 16 most recent keys recorded at one step position (miss reasons)
    ``TREES`` ``trees/<d[:2]>/<digest>.json``
        file manifests of recorded trees (miss reasons: "app/main.py changed")
    ``STAT_CACHES`` ``cache/stat/<root hash>.<part>``
        stat caches of build contexts (checksummed)
    ``ANALYSES`` ``cache/analysis/<shape>``
        memoised graph analyses
    ``CHECK_FACTS`` ``cache/check/<name>``
        what ``imagedsl check`` learnt of a copied tree (credentials, manifests)
    ``LOCK`` ``lock``
        flock(2) for read-modify-write updates
    ``TMP`` ``tmp/``
        scratch directories of builds in progress, on the blobs' filesystem
    ``CONTEXTS`` ``contexts/<name>/``, ``contexts/.meta/``
        build-context trees the Dockerfile backend stages for BuildKit, and their digests
    ``CACHE_MOUNTS`` ``cache-mounts/<blake3(id)>/data``
        contents of RUN cache mounts, by id (OCI backend)
    ``OCI_LAYERS`` ``oci/layers/<k[:2]>/<k>.json``
        the OCI backend's built layer per (step key, layers below, compression, epoch)
    ``OCI_INDEX`` ``oci/index/<d[:2]>/<d>.json``
        per diff_id, the paths a layer holds (what later steps read)
    ``OCI_BASES`` ``oci/bases/<config digest hex>.json``
        which manifest a base image (by its config digest, the engine's image ID) is in the
        store as
    ``OCI_SNAPSHOTS`` ``oci/snapshots/<format>/<diff_id hex>/``
        extracted layers that RUN steps stand on (root only): ``fs/`` and its integrity
        record ``check.json``
    ``OCI_RUNS`` ``oci/runs/<id>/``
        a RUN in progress: its overlay, upper directory and bind sources
    ``ENGINES`` ``cache/engines/<what was probed>.json``
        the Docker engine found last time, per (DOCKER_HOST, clients, server version)
    ``DOCKER_IMAGES`` ``cache/docker-images/<build>.json``
        the image id the docker backend made for a lowered build, per engine
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(str(self.root), "exists and is not a directory")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def area(self, area: StoreArea) -> Path:
        """Where ``area`` lives in this store (it may not exist yet)."""
        return self.root / area.value

    # -- locking -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock (an flock, released even if the process dies)."""
        self._ensure_root()
        fd = os.open(self.area(StoreArea.LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(str(self.root), f"cannot create it: {error.strerror}") from None

    # -- ledger ------------------------------------------------------------------------------

    def _record_path(self, key: str) -> Path:
        return self.area(StoreArea.LEDGER) / key[:2] / f"{key}.json"

    def get(self, key: str) -> Record | None:
        """The record of ``key``, or None (also for a damaged record, with a warning)."""
        if not keys.is_key(key):
            return None
        path = self._record_path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            warnings.warn(f"cannot read ledger record {path}: {error}", StoreWarning, stacklevel=2)
            return None
        try:
            record = Record.from_json(data)
        except (ValueError, UnicodeDecodeError) as error:
            warnings.warn(
                f"ignoring damaged ledger record {path}: {error}", StoreWarning, stacklevel=2
            )
            return None
        if record.key != key:
            warnings.warn(f"ignoring misplaced ledger record {path}", StoreWarning, stacklevel=2)
            return None
        return record

    def put(self, record: Record) -> Record:
        """Add or merge a record (outputs are merged) and note it in its locus history."""
        if keys.key_of(record.preimage) != record.key:
            raise ValueError(f"record preimage does not hash to {record.key}")
        with self.locked():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StoreWarning)  # replacing a damaged one is fine
                old = self.get(record.key)
            if old is not None:
                record = attrs.evolve(record, outputs={**old.outputs, **record.outputs})
            path = self._record_path(record.key)
            if record == old:
                # A hit recorded again: nothing new to write; its mtime is its last use
                # (what ``cache prune --older-than`` reads).
                with contextlib.suppress(OSError):
                    os.utime(path)
            else:
                atomic_write(path, record.to_json())
            if record.locus is not None:
                self._note_locus(record.locus, record.key)
        return record

    def keys(self) -> Iterator[str]:
        """Every key with a record file (damaged or not)."""
        ledger = self.area(StoreArea.LEDGER)
        if not ledger.is_dir():
            return
        for shard in sorted(ledger.iterdir()):
            for path in sorted(shard.glob("*.json")):
                yield path.stem

    # -- loci: which keys were recorded at one step position ---------------------------------

    def _locus_path(self, locus: str) -> Path:
        return self.area(StoreArea.LOCI) / locus[:2] / f"{locus}.json"

    def history(self, locus: str) -> list[str]:
        """Keys recorded at ``locus``, most recent first."""
        try:
            payload = json.loads(self._locus_path(locus).read_bytes())
            recent = payload["keys"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(f"ignoring damaged locus history: {error}", StoreWarning, stacklevel=2)
            return []
        return [k for k in recent if keys.is_key(k)]

    def _note_locus(self, locus: str, key: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreWarning)
            history = self.history(locus)
        if history[:1] == [key]:
            return  # already the most recent key there
        recent = [k for k in history if k != key]
        payload = {"v": 1, "keys": [key, *recent][:_LOCUS_HISTORY]}
        atomic_write(self._locus_path(locus), json.dumps(payload).encode())

    # -- trees: file manifests behind tree digests -------------------------------------------

    def _tree_path(self, digest: str) -> Path:
        return self.area(StoreArea.TREES) / digest[:2] / f"{digest}.json"

    def put_tree(
        self,
        digest: str,
        manifest: Mapping[str, list[object]] | Callable[[], Mapping[str, list[object]]],
    ) -> None:
        """Keep the manifest of a recorded tree (content-addressed: written once). Given as a
        callable, the manifest is made only when this store does not hold it yet (a split
        COPY's parts are written, manifests included, by the processes that make them)."""
        path = self._tree_path(digest)
        if not path.exists():
            made = manifest() if callable(manifest) else manifest
            atomic_write(path, json.dumps(made, sort_keys=True).encode())

    def get_tree(self, digest: str) -> dict[str, list[object]] | None:
        """A recorded tree's manifest, or None."""
        try:
            manifest = json.loads(self._tree_path(digest).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            warnings.warn(f"ignoring damaged tree manifest: {error}", StoreWarning, stacklevel=2)
            return None
        return manifest if isinstance(manifest, dict) else None

    # -- small caches (StatCacheStore and AnalysisMemo) --------------------------------------

    def load_stat_cache(self, root: str, part: str) -> bytes | None:
        """One part of the stat cache of a context root, or None."""
        name = f"{_name_of(root)}.{part}"
        _watch.note_file(str(self.area(StoreArea.STAT_CACHES) / name))
        return self._read_cache(StoreArea.STAT_CACHES, name)

    def save_stat_cache(self, root: str, part: str, data: bytes) -> None:
        """Replace one part of the stat cache of a context root."""
        name = f"{_name_of(root)}.{part}"
        _watch.note_file(str(self.area(StoreArea.STAT_CACHES) / name))
        self._write_cache(StoreArea.STAT_CACHES, name, data)

    def load_analysis(self, digest: str) -> str | None:
        """A memoised graph analysis, or None."""
        data = self._read_cache(StoreArea.ANALYSES, digest)
        try:
            return None if data is None else data.decode()
        except UnicodeDecodeError:
            return None

    def save_analysis(self, digest: str, text: str) -> None:
        """Memoise a graph analysis."""
        self._write_cache(StoreArea.ANALYSES, digest, text.encode())

    def load_tree_facts(self, name: str) -> bytes | None:
        """What ``imagedsl check`` learnt of a tree's files (credentials, manifests), or None."""
        return self._read_cache(StoreArea.CHECK_FACTS, name)

    def save_tree_facts(self, name: str, data: bytes) -> None:
        """Memoise what ``imagedsl check`` learnt of a tree's files."""
        self._write_cache(StoreArea.CHECK_FACTS, name, data)

    def _read_cache(self, area: StoreArea, name: str) -> bytes | None:
        try:
            return (self.area(area) / name).read_bytes()
        except OSError:
            return None

    def _write_cache(self, area: StoreArea, name: str, data: bytes) -> None:
        try:
            # Stat caches and analyses are checked when read: no fsync (see atomic_file).
            atomic_write(self.area(area) / name, data, durable=False)
        except OSError as error:
            # A cache we cannot write only costs time next run; say so once, carry on.
            kind = area.value.rpartition("/")[2]
            warnings.warn(
                f"cannot write {kind} cache in {self.root}: {error}", StoreWarning, stacklevel=2
            )

    # -- blobs ---------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``sha256:<hex>`` lives (it may not exist)."""
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.area(StoreArea.BLOBS) / hexdigest

    # -- inventory -----------------------------------------------------------------------------

    def disk_usage(self) -> dict[str, int]:
        """Bytes used per top-level part of the store."""
        usage: dict[str, int] = {}
        if not self.root.is_dir():
            return usage
        for part in sorted(self.root.iterdir()):
            if part.is_dir():
                usage[part.name] = sum(p.stat().st_size for p in part.rglob("*") if p.is_file())
        return usage


def _name_of(text: str) -> str:
    return blake3.blake3(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]

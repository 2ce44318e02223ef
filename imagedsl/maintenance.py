"""Keeping the store sound and small: ``imagedsl cache verify`` and ``imagedsl cache prune``.

:func:`verify_store` reads everything the store holds and checks it against what names it:
every blob is hashed (its stamp renewed), every ledger record must hash to its key, every
snapshot is compared, file by file and byte by byte, with its integrity record. What is
damaged is removed (a build makes it again) and reported.

:func:`prune_store` removes what has not been used for a while (``older_than`` seconds), then
the least recently used blobs, snapshots and cache mounts until the store is no larger than
``max_size`` bytes. A blob's last use is its stamp's mtime (renewed each time a build reuses
it), a snapshot's the mtime of its integrity record (renewed each time a RUN stands on it).
Nothing used in the last ``keep_recent`` seconds is removed, so a build running meanwhile keeps
what it has just checked.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

import attrs

from imagedsl.backends.oci.filesystem import LayerIndex
from imagedsl.backends.oci.run.rootfs import SNAPSHOT_FORMAT
from imagedsl.backends.oci.run.snapshot_check import check_snapshot
from imagedsl.errors import InputError
from imagedsl.oci.blobs import BlobStore
from imagedsl.oci.digest import is_sha256
from imagedsl.store import Record, Store, StoreArea

#: ``cache prune`` never removes what was used this recently (seconds).
KEEP_RECENT: Final = 600.0
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZES: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@attrs.define
class CacheOptionError(InputError):
    """A ``cache prune`` limit that cannot be read."""

    option: str
    value: str
    problem: str

    def __str__(self) -> str:
        return f"{self.option} {self.value!r}: {self.problem}"


def parse_age(text: str, option: str = "--older-than") -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if match is None:
        raise CacheOptionError(option, text, "expected a number with s, m, h, d or w (e.g. 30d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_size(text: str, option: str = "--max-size") -> int:
    """Bytes from ``10G``, ``500MiB``, ``1.5GB``, ``64k`` or a plain number (units of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise CacheOptionError(option, text, "expected a size such as 10G, 500M or 4096")
    return int(float(match.group(1)) * _SIZES[match.group(2)])


# -- verify ------------------------------------------------------------------------------------


@attrs.frozen
class Damage:
    """One damaged entry that was removed: its area, its path, what was wrong."""

    area: str
    path: str
    problem: str


@attrs.frozen(kw_only=True)
class VerifyReport:
    """What :func:`verify_store` checked (entries per area) and what it removed."""

    checked: Mapping[str, int]
    damaged: tuple[Damage, ...]
    #: Bytes of blobs hashed.
    blob_bytes: int = 0


def verify_store(store: Store) -> VerifyReport:
    """Check every blob, record, index, layer-cache entry and snapshot; remove the damaged."""
    checked: dict[str, int] = {}
    damaged: list[Damage] = []
    blobs = BlobStore(store)
    hashed = 0
    for digest, path in _blob_files(store):
        checked["blobs"] = checked.get("blobs", 0) + 1
        with contextlib.suppress(FileNotFoundError):
            hashed += path.stat().st_size
        problem = blobs.check(digest)
        if problem is not None:
            blobs.remove(digest)
            damaged.append(Damage("blobs", str(path), problem))
    checks: list[tuple[str, StoreArea, Callable[[Path], str | None]]] = [
        ("ledger", StoreArea.LEDGER, _record_problem),
        ("loci", StoreArea.LOCI, _locus_problem),
        ("trees", StoreArea.TREES, _json_object_problem),
        ("layer index", StoreArea.OCI_INDEX, _index_problem),
        ("layer cache", StoreArea.OCI_LAYERS, lambda path: _layer_entry_problem(store, path)),
    ]
    for name, area, problem_of in checks:
        for path in _json_files(store.area(area)):
            checked[name] = checked.get(name, 0) + 1
            problem = problem_of(path)
            if problem is not None:
                _unlink(path)
                damaged.append(Damage(name, str(path), problem))
    for unit in _snapshot_units(store):
        checked["snapshots"] = checked.get("snapshots", 0) + 1
        damage = check_snapshot(unit / "fs", unit / "check.json", contents=True)
        if damage is not None:
            _remove_tree(store, unit)
            damaged.append(Damage("snapshots", str(unit), str(damage)))
    return VerifyReport(checked=checked, damaged=tuple(damaged), blob_bytes=hashed)


def _record_problem(path: Path) -> str | None:
    try:
        record = Record.from_json(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        return str(error)
    return None if record.key == path.stem else "it is filed under another key"


def _locus_problem(path: Path) -> str | None:
    try:
        keys = json.loads(path.read_bytes())["keys"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"not a locus history ({error})"
    return None if isinstance(keys, list) else "not a locus history"


def _json_object_problem(path: Path) -> str | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        return f"not JSON ({error})"
    return None if isinstance(value, dict) else "not a JSON object"


def _index_problem(path: Path) -> str | None:
    try:
        index = LayerIndex.from_json(path.read_bytes())
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        return f"not a layer index ({error})"
    return None if index.diff_id.endswith(path.stem) else "it is filed under another diff_id"


def _layer_entry_problem(store: Store, path: Path) -> str | None:
    try:
        saved = json.loads(path.read_bytes())
        if saved is None:
            return None
        digest, size = saved["digest"], saved["size"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"not a layer-cache entry ({error})"
    if not is_sha256(digest):
        return "not a layer-cache entry"
    try:
        if store.blob_path(digest).stat().st_size == size:
            return None
    except FileNotFoundError:
        pass
    return f"it names layer {digest}, which the store does not hold"


# -- prune -------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PruneReport:
    """What :func:`prune_store` removed: per kind, (count, bytes); and the bytes left."""

    removed: Mapping[str, tuple[int, int]]
    remaining: int


@attrs.define
class _Entry:
    kind: str
    path: Path
    size: int
    last_used: float
    remove: Callable[[], None]


def prune_store(
    store: Store,
    *,
    older_than: float | None = None,
    max_size: int | None = None,
    keep_recent: float = KEEP_RECENT,
    now: float | None = None,
) -> PruneReport:
    """Remove entries unused for ``older_than`` seconds, then the least recently used until
    blobs, snapshots and cache mounts take at most ``max_size`` bytes (see the module)."""
    if older_than is None and max_size is None:
        raise CacheOptionError("cache prune", "", "give --older-than, --max-size or both")
    now = time.time() if now is None else now
    removed: dict[str, tuple[int, int]] = {}

    def drop(entry: _Entry) -> None:
        entry.remove()
        count, size = removed.get(entry.kind, (0, 0))
        removed[entry.kind] = (count + 1, size + entry.size)

    BlobStore(store).sweep()
    for stale in _stale_snapshot_formats(store):
        drop(stale)
    entries = [*_blob_entries(store), *_snapshot_entries(store), *_cache_mount_entries(store)]
    kept: list[_Entry] = []
    for entry in entries:
        old = older_than is not None and now - entry.last_used > older_than
        if old and now - entry.last_used > keep_recent:
            drop(entry)
        else:
            kept.append(entry)
    if older_than is not None:
        for path in _json_files(store.area(StoreArea.LEDGER)):
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > max(older_than, keep_recent):
                    drop(_Entry("ledger records", path, 0, 0.0, functools.partial(_unlink, path)))
    total = sum(entry.size for entry in kept)
    if max_size is not None and total > max_size:
        for entry in sorted(kept, key=lambda e: e.last_used):
            if total <= max_size:
                break
            if now - entry.last_used <= keep_recent:
                continue
            drop(entry)
            total -= entry.size
    for path in _json_files(store.area(StoreArea.OCI_LAYERS)):
        if _layer_entry_problem(store, path) is not None:  # its layer went: it is useless
            drop(_Entry("layer-cache entries", path, 0, 0.0, functools.partial(_unlink, path)))
    return PruneReport(removed=removed, remaining=total)


def _blob_entries(store: Store) -> Iterator[_Entry]:
    blobs = BlobStore(store)
    for digest, path in _blob_files(store):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        try:
            last_used = blobs.stamp_path(digest).stat().st_mtime
        except FileNotFoundError:
            last_used = st.st_mtime
        yield _Entry("blobs", path, st.st_size, last_used, functools.partial(blobs.remove, digest))


def _snapshot_entries(store: Store) -> Iterator[_Entry]:
    for unit in _snapshot_units(store):
        try:
            last_used = (unit / "check.json").stat().st_mtime
        except FileNotFoundError:
            last_used = unit.stat().st_mtime
        yield _Entry(
            "snapshots",
            unit,
            _tree_size(unit),
            last_used,
            functools.partial(_remove_tree, store, unit),
        )


def _cache_mount_entries(store: Store) -> Iterator[_Entry]:
    root = store.area(StoreArea.CACHE_MOUNTS)
    if not root.is_dir():
        return
    for mount in sorted(root.iterdir()):
        if mount.name.startswith(".") or not mount.is_dir():
            continue
        times = [p.stat().st_mtime for p in (mount, mount / "data") if p.exists()]
        yield _Entry(
            "cache mounts",
            mount,
            _tree_size(mount),
            max(times),
            functools.partial(_remove_tree, store, mount),
        )


def _stale_snapshot_formats(store: Store) -> Iterator[_Entry]:
    """Snapshots of an older format: no build reads them any more."""
    root = store.area(StoreArea.OCI_SNAPSHOTS)
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if folder.name != SNAPSHOT_FORMAT and folder.is_dir():
            yield _Entry(
                "snapshots",
                folder,
                _tree_size(folder),
                0.0,
                functools.partial(_remove_tree, store, folder),
            )


# -- walking the store -------------------------------------------------------------------------


def _blob_files(store: Store) -> Iterator[tuple[str, Path]]:
    root = store.area(StoreArea.BLOBS)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        digest = f"sha256:{path.name}"
        if is_sha256(digest) and path.is_file():
            yield digest, path


def _json_files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for shard in sorted(root.iterdir()):
        if shard.is_dir():
            yield from sorted(shard.glob("*.json"))


def _snapshot_units(store: Store) -> Iterator[Path]:
    root = store.area(StoreArea.OCI_SNAPSHOTS) / SNAPSHOT_FORMAT
    if not root.is_dir():
        return
    for unit in sorted(root.iterdir()):
        if not unit.name.startswith(".") and unit.is_dir():
            yield unit


def _tree_size(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _remove_tree(store: Store, path: Path) -> None:
    """Remove a directory, renamed aside first so nothing sees it half removed."""
    scratch = store.area(StoreArea.TMP)
    scratch.mkdir(parents=True, exist_ok=True)
    doomed = Path(tempfile.mkdtemp(prefix="prune-", dir=scratch))
    try:
        os.rename(path, doomed / "gone")
    except FileNotFoundError:
        pass
    except OSError:
        doomed.rmdir()
        doomed = path  # another filesystem: remove it in place
    shutil.rmtree(doomed, ignore_errors=True)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

"""The store never serves a corrupt byte: flipped bytes in blobs and snapshots are found before
use (a warning; the entry is dropped and made again), outputs never share an inode with the
store, and ``imagedsl cache verify`` / ``cache prune`` keep the store sound and small."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl.backends.oci.run.rootfs import SNAPSHOT_FORMAT
from imagedsl.maintenance import CacheOptionError, parse_age, parse_size, prune_store
from imagedsl.oci.blobs import BlobStore
from imagedsl.store import Store, StoreArea, StoreWarning
from tests.support import oci as oci_support
from tests.support.cli import imagedsl
from tests.support.oci import read_image


@pytest.fixture(name="base", scope="module")
def fixture_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``oci:DIR:1``: the busybox base."""
    return oci_support.make_busybox_layout(tmp_path_factory.mktemp("base"))


@pytest.fixture(name="ctx")
def fixture_ctx(tmp_path: Path) -> Path:
    """A small build context."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.txt").write_bytes(os.urandom(64 << 10))
    return ctx


def flip(path: Path, offset: int = -20) -> None:
    """Flip one bit of a file in place (same size), as damage on disk would."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def hashes_right(path: Path) -> bool:
    """Whether a blob file's bytes hash to its name."""
    return hashlib.sha256(path.read_bytes()).hexdigest() == path.name


def test_a_flipped_byte_in_a_cached_layer_is_found_and_rebuilt(
    base: str, ctx: Path, tmp_path: Path
) -> None:
    """A layer blob damaged in the store (one bit, same size) is not reused: a warning, the
    step is built again, and the image is the clean build's, byte for byte."""
    store = Store(tmp_path / "store")
    stages = {"app": dsl.image(base).copy(dsl.context(ctx).file("app.txt"), "/app/")}
    first, _ = oci_support.build(stages, store, output=f"oci:{tmp_path / 'one'}")
    layer = store.blob_path(first.image.layers[-1].digest)
    flip(layer)
    with pytest.warns(StoreWarning, match="is damaged"):
        second, _ = oci_support.build(stages, store, output=f"oci:{tmp_path / 'two'}")
    assert second.stats.layers_written == 1
    assert second.image.manifest_digest == first.image.manifest_digest
    assert hashes_right(layer)
    for blob in (tmp_path / "two" / "blobs" / "sha256").iterdir():
        assert hashes_right(blob)


def test_an_edited_output_never_reaches_the_store(base: str, ctx: Path, tmp_path: Path) -> None:
    """Output blobs are copies: editing one leaves the store's intact, and the next build to
    the same layout puts the right bytes back."""
    store = Store(tmp_path / "store")
    stages = {"app": dsl.image(base).copy(dsl.context(ctx).file("app.txt"), "/app/")}
    built, _ = oci_support.build(stages, store, output=f"oci:{tmp_path / 'out'}")
    digest = built.image.layers[-1].digest.partition(":")[2]
    output_blob = tmp_path / "out" / "blobs" / "sha256" / digest
    assert output_blob.stat().st_ino != store.area(StoreArea.BLOBS).joinpath(digest).stat().st_ino
    flip(output_blob)
    assert hashes_right(store.area(StoreArea.BLOBS) / digest)
    oci_support.build(stages, store, output=f"oci:{tmp_path / 'out'}")
    assert hashes_right(output_blob)


def test_cache_verify_finds_damage_the_cheap_check_cannot(
    base: str, ctx: Path, tmp_path: Path
) -> None:
    """A blob damaged behind the filesystem's back (its stamp still matching) passes the
    cheap check; ``cache verify`` hashes every blob, removes it (and the layer-cache entry
    naming it) and exits 1; a damaged ledger record goes too; a second verify finds nothing
    (exit 0)."""
    store_dir = tmp_path / "store"
    store = Store(store_dir)
    stages = {"app": dsl.image(base).copy(dsl.context(ctx).file("app.txt"), "/app/")}
    built, _ = oci_support.build(stages, store)
    digest = built.image.layers[-1].digest
    blobs = BlobStore(store)
    flip(blobs.path(digest))
    st = blobs.path(digest).stat()  # as bit rot would leave it: the stamp still matches
    blobs.stamp_path(digest).write_text(
        f"{st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}\n"
    )
    assert blobs.intact(digest)
    record = next(store.area(StoreArea.LEDGER).rglob("*.json"))
    record.write_text(record.read_text().replace('"kind"', '"kinds"'))
    result = imagedsl("cache", "verify", "--store", str(store_dir), cwd=tmp_path, store=store_dir)
    assert result.returncode == 1, result.stderr
    assert f"removed damaged blobs entry {blobs.path(digest)}" in result.stdout
    assert f"removed damaged ledger entry {record}" in result.stdout
    assert "removed damaged layer cache entry" in result.stdout  # it named the blob
    assert "3 damaged" in result.stdout
    assert not blobs.path(digest).exists()
    assert not record.exists()
    again = imagedsl("cache", "verify", "--store", str(store_dir), cwd=tmp_path, store=store_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 damaged" in again.stdout
    rebuilt, _ = oci_support.build(stages, store)  # the layer is made again
    assert rebuilt.stats.layers_written == 1
    assert rebuilt.image.manifest_digest == built.image.manifest_digest


#: Root and runc, or a skip that fails under IMAGEDSL_REQUIRE_DOCKER=1 (tests.support.skips).
needs_runc = pytest.mark.usefixtures("run_runtime")


@needs_runc
def test_a_changed_snapshot_is_extracted_again(base: str, tmp_path: Path) -> None:
    """A file changed in an extracted layer (the snapshot RUN steps stand on) is caught by
    the snapshot's integrity record before the next RUN: a warning, the snapshot is
    extracted again, and the RUN sees the layer's real bytes."""
    store = Store(tmp_path / "store")
    first = dsl.image(base).run("cat /etc/passwd > /seen")
    oci_support.build({"a": first}, store)
    snapshots = store.area(StoreArea.OCI_SNAPSHOTS) / SNAPSHOT_FORMAT
    changed = [p for p in snapshots.glob("*/fs/etc/passwd") if p.read_text() == oci_support.PASSWD]
    assert len(changed) == 1
    changed[0].write_text("root:x:0:0:evil:/root:/bin/sh\n".ljust(len(oci_support.PASSWD)))
    second = dsl.image(base).run("cat /etc/passwd > /seen-again")
    with pytest.warns(StoreWarning, match="snapshot .* is damaged"):
        built, _ = oci_support.build({"b": second}, store, output=f"oci:{tmp_path / 'out'}")
    _, manifest, _ = read_image(tmp_path / "out")
    members = oci_support.layer_members(tmp_path / "out", manifest["layers"][-1])
    seen = next(m for m in members if m.name == "seen-again")
    assert seen.size == len(oci_support.PASSWD)
    assert built.image.layers[-1].digest != ""
    assert changed[0].read_text() == oci_support.PASSWD  # extracted again


@needs_runc
def test_cache_verify_compares_snapshots_byte_by_byte(base: str, tmp_path: Path) -> None:
    """``cache verify`` hashes every snapshot file against its record and removes a damaged
    snapshot (it is extracted again when a RUN needs it)."""
    store_dir = tmp_path / "store"
    oci_support.build({"a": dsl.image(base).run("true")}, Store(store_dir))
    units = [u for u in (store_dir / "oci" / "snapshots" / SNAPSHOT_FORMAT).iterdir() if u.is_dir()]
    assert len(units) == 1
    busybox = units[0] / "fs" / "bin" / "busybox"
    flip(busybox, offset=1000)
    result = imagedsl("cache", "verify", "--store", str(store_dir), cwd=tmp_path, store=store_dir)
    assert result.returncode == 1
    assert f"removed damaged snapshots entry {units[0]}" in result.stdout
    assert not units[0].exists()


def _age(store: Store, digest: str, seconds: float) -> None:
    """Make a blob look last used ``seconds`` ago."""
    when = time.time() - seconds
    os.utime(BlobStore(store).stamp_path(digest), (when, when))


def test_cache_prune_by_age_removes_only_what_was_not_used(
    base: str, ctx: Path, tmp_path: Path
) -> None:
    """``cache prune --older-than 7d`` removes the blobs not used for a week and keeps the
    others; the next build makes what it needs again, to the same digest."""
    store_dir = tmp_path / "store"
    store = Store(store_dir)
    stages = {"app": dsl.image(base).copy(dsl.context(ctx).file("app.txt"), "/app/")}
    built, _ = oci_support.build(stages, store)
    old = built.image.layers[-1].digest
    _age(store, old, 30 * 86400)
    result = imagedsl(
        "cache",
        "prune",
        "--older-than",
        "7d",
        "--store",
        str(store_dir),
        cwd=tmp_path,
        store=store_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("removed 1 blobs")
    assert not store.blob_path(old).exists()
    assert store.blob_path(built.image.config_digest).exists()
    again, _ = oci_support.build(stages, store)
    assert again.stats.layers_written == 1
    assert again.image.manifest_digest == built.image.manifest_digest


def test_cache_prune_to_a_size_removes_the_least_recently_used(
    base: str, ctx: Path, tmp_path: Path
) -> None:
    """``max_size`` removes blobs least recently used first, until the rest fits."""
    store = Store(tmp_path / "store")
    stages = {"app": dsl.image(base).copy(dsl.context(ctx).file("app.txt"), "/app/")}
    built, _ = oci_support.build(stages, store)
    copy_layer, base_layer = built.image.layers[-1].digest, built.image.layers[0].digest
    _age(store, base_layer, 3600)
    _age(store, copy_layer, 7200)  # the least recently used
    sizes = {p.name: p.stat().st_size for p in store.area(StoreArea.BLOBS).iterdir()}
    limit = sum(sizes.values()) - 1  # one byte too many: one blob must go
    report = prune_store(store, max_size=limit, keep_recent=60)
    assert report.removed["blobs"][0] == 1
    assert not store.blob_path(copy_layer).exists()
    assert store.blob_path(base_layer).exists()
    assert report.remaining <= limit


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45", 45), ("2w", 14 * 86400)],
)
def test_ages_parse(text: str, seconds: float) -> None:
    """Ages take s, m, h, d and w."""
    assert parse_age(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [("10G", 10 << 30), ("500MiB", 500 << 20), ("1.5g", 3 << 29), ("4096", 4096)]
)
def test_sizes_parse(text: str, size: int) -> None:
    """Sizes take K, M, G, T (powers of 1024), with or without B/iB."""
    assert parse_size(text) == size


def test_prune_needs_a_limit_and_refuses_nonsense(tmp_path: Path) -> None:
    """Without a limit, or with one that is not a size, ``cache prune`` exits 2 with one line."""
    for args in ([], ["--max-size", "lots"], ["--older-than", "yesterday"]):
        result = imagedsl("cache", "prune", *args, cwd=tmp_path, store=tmp_path / "s")
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(CacheOptionError):
        parse_size("-1")


def test_placing_blobs_copies_each_once_and_stamps_them(tmp_path: Path) -> None:
    """An output's blobs are copied on several threads: a digest named twice (two layers with
    the same bytes) is copied once, every blob arrives whole, and a second placing copies
    nothing."""
    blobs = BlobStore(Store(tmp_path / "store"))
    digests = [blobs.put(f"blob {i}\n".encode() * (i + 1) * 1000) for i in range(6)]
    named = [digests[0], *digests, digests[3], digests[0]]
    out = tmp_path / "layout" / "blobs" / "sha256"
    assert blobs.place(named, out) == len(digests)
    for digest in digests:
        data = (out / digest.partition(":")[2]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    assert sorted(p.name for p in out.iterdir()) == sorted(d.partition(":")[2] for d in digests)
    assert blobs.place(named, out) == 0

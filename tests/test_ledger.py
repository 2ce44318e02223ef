"""The store and ledger: atomic, safe under concurrent processes, and tolerant of damage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl import api, keys
from imagedsl.store import Record, Store, StoreArea, StoreWarning, default_store_path


def make_record(i: int, locus: str | None = "l" * 64) -> Record:
    """A valid record whose preimage differs by ``i``."""
    preimage = {"v": 1, "kind": "run", "n": i}
    return Record(key=keys.key_of(preimage), preimage=preimage, locus=locus, outputs={"i": i})


def test_put_then_get_round_trips(tmp_path: Path) -> None:
    """A record comes back as written, outputs merged on a second put."""
    store = Store(tmp_path)
    record = make_record(1)
    store.put(record)
    store.put(Record(key=record.key, preimage=record.preimage, outputs={"layer": "sha256:x"}))
    got = store.get(record.key)
    assert got is not None
    assert got.preimage == record.preimage
    assert got.outputs == {"i": 1, "layer": "sha256:x"}


def test_a_hit_recorded_again_touches_its_record_without_writing_it(tmp_path: Path) -> None:
    """Recording a record again with nothing new (a cached step) leaves the file as it is but
    renews its mtime, the last use ``cache prune --older-than`` reads; new outputs are
    written; the locus history keeps the key once, most recent first."""
    store = Store(tmp_path)
    record = make_record(1)
    store.put(record)
    path = next(store.area(StoreArea.LEDGER).rglob(f"{record.key}.json"))
    os.utime(path, (1_000_000, 1_000_000))
    inode = path.stat().st_ino
    store.put(make_record(1))
    assert path.stat().st_ino == inode  # not replaced
    assert path.stat().st_mtime > 1_000_000
    store.put(Record(key=record.key, preimage=record.preimage, outputs={"more": 2}))
    assert path.stat().st_ino != inode
    got = store.get(record.key)
    assert got is not None
    assert got.outputs == {"i": 1, "more": 2}
    other = make_record(2)
    store.put(other)
    store.put(make_record(1))
    assert record.locus is not None
    assert store.history(record.locus)[:2] == [record.key, other.key]


def test_a_record_must_hash_to_its_key(tmp_path: Path) -> None:
    """put refuses a preimage that is not the key's."""
    with pytest.raises(ValueError, match="does not hash"):
        Store(tmp_path).put(Record(key="0" * 64, preimage={"v": 1}))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"\x00\xff" + data, id="garbage"),
        pytest.param(lambda data: data.replace(b'"n": 1', b'"n": 2'), id="tampered-preimage"),
        pytest.param(lambda _: b"", id="empty"),
    ],
)
def test_damaged_records_warn_and_read_as_absent(tmp_path: Path, damage: object) -> None:
    """A truncated, garbled or tampered record is a warning and a miss, never a crash."""
    store = Store(tmp_path)
    record = make_record(1)
    store.put(record)
    path = next(store.area(StoreArea.LEDGER).rglob(f"{record.key}.json"))
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.warns(StoreWarning):
        assert store.get(record.key) is None
    store.put(record)  # and it can be repaired by writing it again
    assert store.get(record.key) is not None


def test_a_damaged_record_makes_the_plan_miss_with_a_warning(tmp_path: Path) -> None:
    """Planning over a damaged ledger warns, then plans the step as a miss."""
    store = Store(tmp_path / "store")
    stage = dsl.image("alpine@sha256:" + "a" * 64).run("true")
    for step in api.plan(stage, store=store).steps:
        api.record_step(store, step)
    key = api.plan(stage, store=store).steps[-1].key
    next(store.area(StoreArea.LEDGER).rglob(f"{key}.json")).write_text("{")
    with pytest.warns(StoreWarning):
        plan = api.plan(stage, store=store)
    assert plan.steps[-1].status is api.PlanStatus.MISS


def test_store_location_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--store beats IMAGEDSL_STORE, which beats the user cache directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("IMAGEDSL_STORE", raising=False)
    assert default_store_path() == tmp_path / "xdg" / "imagedsl"
    monkeypatch.setenv("IMAGEDSL_STORE", str(tmp_path / "env"))
    assert default_store_path() == tmp_path / "env"
    assert default_store_path(tmp_path / "flag") == tmp_path / "flag"


def test_store_areas_are_distinct_and_documented(tmp_path: Path) -> None:
    """Each area is its own path under the root, inside no other area, listed by Store."""
    store = Store(tmp_path)
    paths = {area: store.area(area) for area in StoreArea}
    assert len(set(paths.values())) == len(paths)
    for area, path in paths.items():
        assert path.is_relative_to(tmp_path)
        assert not any(path.is_relative_to(other) for a, other in paths.items() if a is not area)
        assert f"``{area.name}`` ``{area.value}" in (Store.__doc__ or "")


def test_store_files_land_in_their_areas(tmp_path: Path) -> None:
    """The ledger, loci, trees, caches and blobs are written where their areas say."""
    store = Store(tmp_path)
    record = make_record(1)
    store.put(record)
    store.put_tree("d" * 64, {"a": ["file", 420, 1, "x"]})
    store.save_stat_cache("/ctx", "index", b"data")
    store.save_analysis("shape", "{}")
    assert list(store.area(StoreArea.LEDGER).rglob(f"{record.key}.json"))
    assert list(store.area(StoreArea.LOCI).rglob("*.json"))
    assert list(store.area(StoreArea.TREES).rglob(f"{'d' * 64}.json"))
    assert [p.suffix for p in store.area(StoreArea.STAT_CACHES).iterdir()] == [".index"]
    assert (store.area(StoreArea.ANALYSES) / "shape").read_text() == "{}"
    assert store.area(StoreArea.LOCK).is_file()
    assert store.blob_path("sha256:" + "0" * 64) == store.area(StoreArea.BLOBS) / ("0" * 64)


WRITER = textwrap.dedent(
    """
    import sys
    from imagedsl import keys
    from imagedsl.store import Record, Store

    store, worker, count = Store(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for i in range(count):
        shared = {"v": 1, "kind": "run", "n": i}
        own = {"v": 1, "kind": "run", "n": i, "w": worker}
        store.put(Record(key=keys.key_of(shared), preimage=shared, locus="a" * 64,
                         outputs={f"w{worker}": i}))
        store.put(Record(key=keys.key_of(own), preimage=own, locus="b" * 64))
    """
)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Four processes writing the same and different keys at once: every write survives."""
    workers, count = 4, 40
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), str(count)])
        for w in range(workers)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * workers
    store = Store(tmp_path)
    for i in range(count):
        record = store.get(keys.key_of({"v": 1, "kind": "run", "n": i}))
        assert record is not None
        assert record.outputs == {f"w{w}": i for w in range(workers)}  # merged, none lost
        for w in range(workers):
            assert store.get(keys.key_of({"v": 1, "kind": "run", "n": i, "w": w})) is not None
    assert len(store.history("a" * 64)) == 16  # bounded, most recent first
    assert not list(tmp_path.rglob("*.tmp"))


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from imagedsl import keys
    from imagedsl.store import Record, Store

    store = Store(sys.argv[1])
    i = 0
    while True:
        big = {"v": 1, "kind": "run", "n": i, "pad": "x" * 200_000}
        store.put(Record(key=keys.key_of(big), preimage=big, locus="c" * 64))
        i += 1
        if i == 5:
            print("writing", flush=True)
    """
)


def test_kill_9_mid_write_leaves_every_record_whole(tmp_path: Path) -> None:
    """A writer killed with SIGKILL leaves only whole records (and stray temp files at most)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"writing\n"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    store = Store(tmp_path)
    found = list(store.keys())
    assert len(found) >= 5
    for key in found:  # filterwarnings=error: a damaged record would fail here
        record = store.get(key)
        assert record is not None
        assert len(json.dumps(record.preimage)) > 200_000

"""The stat cache's scans: one process or two, the same listing; old caches read as empty."""

from __future__ import annotations

import marshal
import os
import time
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imagedsl as dsl
from imagedsl import _statcache, treehash
from imagedsl._ignore import IgnoreRules
from imagedsl._statcache import DirectoryLister, Listing, RootCache
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from imagedsl.treehash import ContextHasher


class SettledClock:
    """The scan's clock, a second ahead: every file written so far is past the racy window."""

    def __init__(self) -> None:
        self.now_ns = time.time_ns() + 1_000_000_000

    def time_ns(self) -> int:
        return self.now_ns


def write_tree(root: Path, files: list[str]) -> None:
    """Each path (a trailing / makes a directory), holding its own name."""
    for name in files:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)


def everything(listing: Listing) -> list[tuple[str, list[tuple[str, object]], bytes]]:
    """Each directory, its entries in listing order and its signature, in order."""
    return [(d, list(listing[d].items()), listing.signatures[d]) for d in listing]


@pytest.fixture(name="forking")
def fixture_forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scans fork their second lister after a single entry, wherever they run."""
    monkeypatch.setattr(_statcache, "FORK_AFTER", 1)
    monkeypatch.setattr(_statcache, "fork_is_safe", lambda *_: True)


TREES = st.lists(
    st.from_regex(r"[a-c]{1,2}(/[a-c]{1,2}){0,3}/?", fullmatch=True), min_size=1, max_size=30
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=TREES)
def test_a_forked_scan_lists_what_one_process_lists(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, files: list[str]
) -> None:
    """Directories, entries (in order) and signatures: the same whoever listed them."""
    root = tmp_path_factory.mktemp("ctx")
    for name in files:
        try:
            write_tree(root, [name])
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue  # a file where a directory is wanted, or the reverse
    lister = DirectoryLister(str(root), IgnoreRules.from_lines([]))
    alone = everything(lister.run(""))
    with monkeypatch.context() as patched:
        patched.setattr(_statcache, "FORK_AFTER", 1)
        patched.setattr(_statcache, "fork_is_safe", lambda *_: True)
        shared = lister.run("")
    assert everything(shared) == alone


def test_a_forked_scan_hashes_as_one_process_does(tmp_path: Path, forking: None) -> None:
    """Digests, parts and sizes of a forked scan equal those of a scan in one process."""
    del forking
    root = tmp_path / "ctx"
    write_tree(root, [f"d{i % 7}/e{i % 3}/f{i}.txt" for i in range(200)] + ["empty/"])
    source = dsl.context(root).as_source()
    hasher = ContextHasher(None, Reporter())
    tree = hasher.tree(source)
    parts = hasher.partition(source, tree, "auto")
    assert parts is not None
    expected = treehash.partition_tree(treehash.Tree.from_rows(tree.rows), "auto")
    assert [(n, t.digest, t.rows) for n, t in parts] == [(n, t.digest, t.rows) for n, t in expected]
    assert tree.size == sum(row[4] for row in tree.rows)


def test_a_failed_child_is_listed_again_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that fails costs this process its share of the work, nothing else."""
    root = tmp_path / "ctx"
    write_tree(root, [f"d{i % 5}/f{i}.txt" for i in range(50)])
    lister = DirectoryLister(str(root), IgnoreRules.from_lines([]))
    alone = everything(lister.run(""))
    monkeypatch.setattr(_statcache, "FORK_AFTER", 1)
    monkeypatch.setattr(_statcache, "fork_is_safe", lambda *_: True)
    parent = os.getpid()
    list_packed = DirectoryLister.list_packed

    def failing(self: DirectoryLister, todo: list[str]) -> _statcache.Packed:
        if os.getpid() != parent:
            raise OSError("the child fails")
        return list_packed(self, todo)

    monkeypatch.setattr(DirectoryLister, "list_packed", failing)
    assert everything(lister.run("")) == alone


def test_an_old_stat_cache_reads_as_empty(tmp_path: Path) -> None:
    """A cache of another format version is ignored (everything is hashed again)."""
    store = Store(tmp_path / "store")
    root = str(tmp_path)
    index: tuple[dict[str, object], ...] = ({"probe": b"x"}, {"memo": "digest"}, {}, {}, {})
    payload = marshal.dumps((_statcache.STATCACHE_VERSION - 1, root, index))
    data = b"imagedsl-statcache\n" + blake3.blake3(payload).digest() + payload
    store.save_stat_cache(root, "index", data)
    assert RootCache.load(store, root).trees == {}
    current = marshal.dumps((_statcache.STATCACHE_VERSION, root, index))
    store.save_stat_cache(root, "index", data[:51] + current)
    assert RootCache.load(store, root).trees == {}  # its checksum is another's
    good = b"imagedsl-statcache\n" + blake3.blake3(current).digest() + current
    store.save_stat_cache(root, "index", good)
    assert RootCache.load(store, root).trees == {"memo": "digest"}
    store.save_stat_cache(root, "index", good[:-3])
    assert RootCache.load(store, root).signatures == {}


def test_a_warm_scan_reads_none_of_the_childs_directories(
    tmp_path: Path, forking: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing changed, the directories the child listed stay marshalled."""
    del forking
    root = tmp_path / "ctx"
    write_tree(root, [f"d{i % 9}/f{i}.txt" for i in range(90)])
    store = Store(tmp_path / "store")
    source = dsl.context(root).as_source()
    monkeypatch.setattr(treehash, "time", SettledClock())
    first = ContextHasher(store, Reporter())
    digest = first.tree(source).digest
    first.save()
    loads: list[int] = []

    class CountingMarshal:
        dumps = staticmethod(marshal.dumps)

        @staticmethod
        def loads(data: bytes) -> object:
            loads.append(len(data))
            return marshal.loads(data)

    monkeypatch.setattr(_statcache, "marshal", CountingMarshal)
    warm = ContextHasher(store, Reporter())
    assert warm.tree(source).digest == digest
    assert len(loads) <= 2  # the index, and the child's directories as one message


def test_a_part_unmarshalled_ahead_is_taken_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan server unmarshals saved parts while idle (``preparse``); a plan takes such a
    value once, as its own to change: reading the part again unmarshals it afresh. Damaged
    bytes are never taken ahead."""
    monkeypatch.setattr(_statcache, "PARSED", {})
    root = str(tmp_path)
    value = {"a/b.txt": [1, 2]}
    data = _statcache._pack(root, value)
    _statcache.preparse(data[:-1] + b"\x00")
    assert _statcache.PARSED == {}
    _statcache.preparse(data)
    assert len(_statcache.PARSED) == 1
    first = _statcache._unpack(data, root)
    assert first == value
    assert _statcache.PARSED == {}
    first["a/b.txt"].append(3)
    assert _statcache._unpack(data, root) == value
    assert _statcache._unpack(data, "/elsewhere") is None  # another root's part, as before

"""Check's facts of copied trees from a warm store equal the facts read from scratch.

An edit of contents keeps a tree's shape (paths, types, modes, size classes) unless a file's
size crosses a class bound, so the facts are memoised by it too; these tests edit, add, grow, delete and chmod files and compare every
fact, shape and layer part with a computation from a clean store and from all the rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imagedsl as dsl
from imagedsl import _layerparts, treehash
from imagedsl.check import _context
from imagedsl.check._context import CheckContext, TreeFacts, scan_tree
from imagedsl.credentials import CONTENT_LIMIT
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from imagedsl.treehash import ContextHasher, Tree, partition_tree

if TYPE_CHECKING:
    from imagedsl.planner import Plan

#: 40 bytes that hold a private key, and 40 that hold nothing.
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIabc\n".ljust(40, b"x")
CLEAN = b"nothing to see here".ljust(40, b".")
NAMES = ["a.txt", "b.py", ".env", "id_rsa", "conf.json", "requirements.txt", "notes"]


class ScanClock:
    """The scan's clock, set past the racy window so the store is really used."""

    def __init__(self) -> None:
        self.now_ns = time.time_ns()

    def time_ns(self) -> int:
        return self.now_ns

    def settled(self) -> None:
        self.now_ns = time.time_ns() + 1_000_000_000


@pytest.fixture(name="clock")
def fixture_clock(monkeypatch: pytest.MonkeyPatch) -> ScanClock:
    """The scan clock (see :class:`ScanClock`); small layer buckets, so trees split."""
    clock = ScanClock()
    monkeypatch.setattr(treehash, "time", clock)
    monkeypatch.setattr(treehash, "LARGE_FILE", 60)
    monkeypatch.setattr(_layerparts, "LARGE_FILE", 60)
    monkeypatch.setattr(_layerparts, "_LARGE_BUCKET", 50)
    monkeypatch.setattr(_layerparts, "_FILES_BUCKET", 30)
    return clock


def checker(store: Store | None) -> CheckContext:
    """A check run's context with no plan: only its facts are asked for."""
    return CheckContext(plan=cast("Plan", None), store=store)


def everything(
    hasher: ContextHasher, source: dsl.ContextSource, ctx: CheckContext
) -> list[tuple[str, str, str | None, TreeFacts]]:
    """(part, digest, shape, facts) of the whole tree and of each layers="auto" part."""
    whole = hasher.tree(source)
    parts = hasher.partition(source, whole, "auto") or []
    found = [("", whole.digest, whole.shape, ctx.facts(whole, source))]
    found += [(name, t.digest, t.shape, ctx.facts(t, source)) for name, t in parts]
    hasher.save()
    ctx.save()
    return found


def from_rows(source: dsl.ContextSource) -> list[tuple[str, str, TreeFacts]]:
    """(part, digest, facts) from all the rows, with no store at all."""
    root = source.context.root
    whole = Tree.from_rows(ContextHasher(None, Reporter()).tree(source).rows)
    found = [("", whole.digest, scan_tree(whole, root))]
    found += [(n, t.digest, scan_tree(t, root)) for n, t in partition_tree(whole, "auto")]
    return found


FILES = st.dictionaries(
    st.tuples(st.sampled_from(["", "d/", "d/e/", "f/"]), st.sampled_from(NAMES)).map("".join),
    st.sampled_from([KEY, CLEAN, b"", b"flask\n", b"y" * 90]),
    min_size=1,
    max_size=10,
)
EDITS = st.lists(
    st.tuples(
        st.sampled_from(["same-size", "key", "grow", "delete", "chmod", "add"]),
        st.integers(0, 50),
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=FILES, edits=EDITS)
def test_facts_after_edits_equal_facts_from_scratch(
    tmp_path_factory: pytest.TempPathFactory,
    clock: ScanClock,
    files: dict[str, bytes],
    edits: list[tuple[str, int]],
) -> None:
    """Facts, shapes and parts from a warm store equal those of a clean store, and the facts
    and parts equal those read from all the rows."""
    root = tmp_path_factory.mktemp("ctx")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    source = dsl.context(root).as_source()
    store = Store(tmp_path_factory.mktemp("store"))
    clock.settled()
    everything(ContextHasher(store, Reporter()), source, checker(store))
    paths = sorted(files)
    for action, n in edits:
        target = root / paths[n % len(paths)]
        if action == "add":
            target = target.parent / f"new{n}.cfg"
            target.write_bytes(KEY if n % 2 else CLEAN)
        elif not target.exists():
            continue
        elif action == "same-size":
            data = target.read_bytes()
            target.write_bytes(bytes(reversed(data)) if data != data[::-1] else data + b"")
        elif action == "key":
            data = target.read_bytes()
            target.write_bytes(KEY if len(data) == len(KEY) and data != KEY else CLEAN)
        elif action == "grow":
            target.write_bytes(target.read_bytes() + b"!" * 30)
        elif action == "delete":
            target.unlink()
        elif action == "chmod":
            target.chmod(0o755)
        clock.settled()
        warm = everything(ContextHasher(store, Reporter()), source, checker(store))
        fresh_store = Store(tmp_path_factory.mktemp("fresh"))
        clean = everything(ContextHasher(fresh_store, Reporter()), source, checker(fresh_store))
        assert warm == clean
        assert [(n, d, f) for n, d, _, f in warm] == from_rows(source)


def test_a_content_edit_reads_no_rows_for_the_facts(
    tmp_path: Path, clock: ScanClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an edit that keeps every size class (the same size, or a source file grown),
    the facts come from the shape's memo (no rows built, no file read), unless a file whose
    content they read changed; a file grown past the size the rules read changes the shape."""
    root = tmp_path / "ctx"
    for i in range(20):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"m{i}.py").write_bytes(CLEAN)
    (root / "d0" / "conf.json").write_bytes(CLEAN)
    source = dsl.context(root).as_source()
    store = Store(tmp_path / "store")
    clock.settled()
    before = everything(ContextHasher(store, Reporter()), source, checker(store))

    def no_scan(*_: object, **__: object) -> TreeFacts:
        raise AssertionError("the rows were read")

    for edit in (CLEAN[::-1], CLEAN + b"# one more line\n"):
        (root / "d1" / "m1.py").write_bytes(edit)
        clock.settled()
        with monkeypatch.context() as patched:
            patched.setattr(_context, "scan_tree", no_scan)
            after = everything(ContextHasher(store, Reporter()), source, checker(store))
        assert [f for *_, f in after] == [f for *_, f in before]
        assert after[0][1] != before[0][1]  # a new digest,
        assert after[0][2] == before[0][2]  # the same shape
    (root / "d1" / "m1.py").write_bytes(b"x" * (CONTENT_LIMIT + 1))
    clock.settled()
    grown = everything(ContextHasher(store, Reporter()), source, checker(store))
    assert grown[0][2] != before[0][2]
    # The one file whose content the facts read becomes a key: read again, and found.
    (root / "d0" / "conf.json").write_bytes(KEY)
    clock.settled()
    found = everything(ContextHasher(store, Reporter()), source, checker(store))
    assert ("d0/conf.json", "d0/conf.json", "private-key") in found[0][3].secrets

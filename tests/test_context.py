"""Context selection and tree digests: content decides, metadata never does."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import imagedsl as dsl
from imagedsl import treehash
from imagedsl._filehash import hash_file
from imagedsl.errors import ContextError
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from imagedsl.treehash import NOTHING_MATCHED, ContextHasher, Tree, partition_tree


class CountingReporter(Reporter):
    """Counts how many files each planning run had to read."""

    def __init__(self) -> None:
        self.files_read = 0

    def hashing_started(self, root: str, files: int, total_bytes: int) -> None:  # noqa: ARG002
        self.files_read += files


def file_and_dir_clash(paths: list[str]) -> bool:
    """Whether a file ``x.txt`` and a directory ``x/`` are both asked for (they cannot be)."""
    return any(a != b and b.startswith(a.removesuffix(".txt") + "/") for a in paths for b in paths)


class ScanClock:
    """The clock a scan reads to tell "racily clean" files (changed within 50 ms of its
    start) from settled ones: set it instead of sleeping, so no test depends on timing."""

    def __init__(self) -> None:
        self.now_ns: int | None = None

    def time_ns(self) -> int:
        return time.time_ns() if self.now_ns is None else self.now_ns

    def settled(self) -> None:
        """Scans start a second from now: every file written so far is settled."""
        self.now_ns = time.time_ns() + 1_000_000_000

    def just_after(self, path: Path) -> None:
        """Scans start 1 ms after ``path`` last changed: it is racily clean."""
        self.now_ns = path.stat().st_ctime_ns + 1_000_000


@pytest.fixture(name="clock")
def fixture_clock(monkeypatch: pytest.MonkeyPatch) -> ScanClock:
    """The scan clock, set by the test (see :class:`ScanClock`)."""
    clock = ScanClock()
    monkeypatch.setattr(treehash, "time", clock)
    return clock


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative path -> bytes) under ``root``."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def digest(source: dsl.ContextSource, store: Store | None = None, **kw: object) -> str:
    """The tree digest of a selection, through a fresh hasher."""
    hasher = ContextHasher(store, Reporter())
    tree = hasher.tree(source, **kw)  # type: ignore[arg-type]
    hasher.save()
    return tree.digest


@pytest.fixture(name="project")
def fixture_project(tmp_path: Path) -> Path:
    """A small context with nested directories."""
    root = tmp_path / "project"
    write_tree(
        root,
        {
            "requirements.txt": b"flask\n",
            "app/main.py": b"print('hi')\n",
            "app/util/helpers.py": b"X = 1\n",
            "app/__pycache__/main.cpython-311.pyc": b"\x00\x01",
            "README.md": b"# readme\n",
        },
    )
    return root


def test_rewrite_with_same_size_and_restored_mtime_changes_the_digest(
    project: Path, tmp_path: Path
) -> None:
    """Same size and the old mtime put back: the content still decides (ctime moved)."""
    store = Store(tmp_path / "store")
    src = dsl.context(project).dir("app")
    before = digest(src, store)
    path = project / "app/main.py"
    stat = path.stat()
    path.write_bytes(b"print('ho')\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert digest(src, store) != before


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: os.utime(p, ns=(1, 1)), id="mtime-and-atime"),
        pytest.param(lambda p: os.chown(p, 12345, 54321), id="owner"),
        pytest.param(lambda p: os.chmod(p, 0o600), id="umask-like-mode"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()), id="rewrite-same-bytes"),
    ],
)
def test_metadata_only_changes_keep_the_digest(
    project: Path, tmp_path: Path, change: object
) -> None:
    """mtime, atime, owner and non-execute mode bits never enter a tree digest."""
    store = Store(tmp_path / "store")
    src = dsl.context(project).as_source()
    before = digest(src, store)
    change(project / "app/main.py")  # type: ignore[operator]
    assert digest(src, store) == before


def test_execute_bit_is_content(project: Path) -> None:
    """Making a file executable changes what a container sees, so it changes the digest."""
    src = dsl.context(project).as_source()
    before = digest(src)
    (project / "app/main.py").chmod(0o755)
    assert digest(src) != before


def test_checkout_directory_does_not_matter(project: Path, tmp_path: Path) -> None:
    """Two checkouts of the same files in different places have one digest."""
    other = tmp_path / "elsewhere" / "deeper"
    write_tree(
        other,
        {str(p.relative_to(project)): p.read_bytes() for p in project.rglob("*") if p.is_file()},
    )
    assert digest(dsl.context(project).as_source()) == digest(dsl.context(other).as_source())


def test_stat_cache_skips_rereading_unchanged_files(
    project: Path, tmp_path: Path, clock: ScanClock
) -> None:
    """A second run reads no file; after an edit it reads exactly that file."""
    store = Store(tmp_path / "store")
    src = dsl.context(project).as_source()
    # Files changed within the last moment are "racily clean" and never trusted: not these.
    clock.settled()
    first, second, third = CountingReporter(), CountingReporter(), CountingReporter()
    for reporter in (first, second):
        hasher = ContextHasher(store, reporter)
        hasher.tree(src)
        hasher.save()
    assert first.files_read == 5
    assert second.files_read == 0
    (project / "README.md").write_bytes(b"# changed\n")
    clock.settled()
    hasher = ContextHasher(store, third)
    hasher.tree(src)
    assert third.files_read == 1


def test_racily_clean_files_are_always_reread(
    project: Path, tmp_path: Path, clock: ScanClock
) -> None:
    """A file modified just before a scan is not trusted from the stat cache next time."""
    store = Store(tmp_path / "store")
    src = dsl.context(project).file("README.md")
    clock.just_after(project / "README.md")
    for _ in range(2):
        reporter = CountingReporter()
        hasher = ContextHasher(store, reporter)
        hasher.tree(src, dest_is_dir=False)
        hasher.save()
        assert reporter.files_read == 1


def test_a_racy_edit_in_a_directory_copied_whole_is_reread(
    project: Path, tmp_path: Path, clock: ScanClock
) -> None:
    """Directories whose subtree a saved memo vouches for are not checked for racy files (they
    had none when saved, and are the same); an edited one still is, run after run."""
    store = Store(tmp_path / "store")
    src = dsl.context(project).as_source()
    time.sleep(0.06)  # the clock only moves on here: the others settle before the edit
    clock.now_ns = None
    for _ in range(2):
        hasher = ContextHasher(store, Reporter())
        hasher.tree(src)
        hasher.save()
    (project / "app" / "main.py").write_bytes(b"print('changed')\n")
    clock.just_after(project / "app" / "main.py")
    for _ in range(2):
        reporter = CountingReporter()
        hasher = ContextHasher(store, reporter)
        hasher.tree(src)
        hasher.save()
        assert reporter.files_read == 1
    clock.settled()
    for expected in (1, 0):
        reporter = CountingReporter()
        hasher = ContextHasher(store, reporter)
        hasher.tree(src)
        hasher.save()
        assert reporter.files_read == expected


def test_ignore_patterns_and_dockerignore(project: Path) -> None:
    """Ignore rules (with ``!`` exceptions) decide what a whole-context COPY selects."""
    (project / ".dockerignore").write_text("**/__pycache__\n*.md\n!README.md\n")
    hasher = ContextHasher(None, Reporter())
    tree = hasher.tree(dsl.context(project, dockerignore=True, ignore=["app/util"]).as_source())
    assert sorted(e.placed for e in tree.entries) == [
        ".dockerignore",
        "README.md",
        "app",
        "app/main.py",
        "requirements.txt",
    ]


def test_an_ignored_file_added_does_not_change_the_digest(project: Path) -> None:
    """Adding a file that the ignore rules exclude keeps the key."""
    src = dsl.context(project, ignore=["*.log"]).as_source()
    before = digest(src)
    (project / "debug.log").write_text("noise")
    assert digest(src) == before


def test_placement_follows_docker_copy_rules(project: Path) -> None:
    """A file lands by name in a dest dir, at the dest itself otherwise; a dir copies contents."""
    src = dsl.context(project)
    hasher = ContextHasher(None, Reporter())
    as_file = hasher.tree(src.file("requirements.txt"), dest_is_dir=False)
    into_dir = hasher.tree(src.file("requirements.txt"), dest_is_dir=True)
    contents = hasher.tree(src.dir("app"), dest_is_dir=False)
    assert [e.placed for e in as_file.entries] == ["."]
    assert [e.placed for e in into_dir.entries] == ["requirements.txt"]
    assert "util/helpers.py" in {e.placed for e in contents.entries}
    assert "app/main.py" in {e.source for e in contents.entries}


def test_glob_selects_like_copy(project: Path) -> None:
    """A glob matches within one directory level, as Go's filepath.Match does."""
    write_tree(project, {"a.txt": b"a", "b.txt": b"b", "sub/c.txt": b"c"})
    tree = ContextHasher(None, Reporter()).tree(dsl.context(project).glob("*.txt"))
    assert sorted(e.placed for e in tree.entries) == ["a.txt", "b.txt", "requirements.txt"]


def test_an_empty_directory_is_copied_not_missing(project: Path) -> None:
    """An existing empty directory selects nothing, but it is not a missing path."""
    (project / "empty").mkdir()
    tree = ContextHasher(None, Reporter()).tree(dsl.context(project).dir("empty"))
    assert tree.rows == ()


def test_a_wildcard_may_match_nothing(project: Path) -> None:
    """As in BuildKit, a wildcard that matches nothing is no error: beside another source it
    adds nothing; alone, the tree says nothing matched (BuildKit then makes no destination),
    which is not an empty directory's tree. A plain path that is missing still fails."""
    (project / "empty").mkdir()
    hasher = ContextHasher(None, Reporter())
    src = dsl.context(project)
    beside = hasher.tree(src.select("*.none", "requirements.txt"))
    assert [e.placed for e in beside.entries] == ["requirements.txt"]
    assert beside.digest == hasher.tree(src.select("requirements.txt")).digest
    alone = hasher.tree(src.select("*.none", "nothing-*/x"))
    assert (alone.digest, alone.rows) == (NOTHING_MATCHED, ())
    assert alone.digest != hasher.tree(src.dir("empty")).digest
    with pytest.raises(ContextError, match=r"nope\.txt"):
        hasher.tree(src.select("*.none", "nope.txt"))


def test_one_wildcard_to_a_name_is_placed_as_buildkit_copies_it(project: Path) -> None:
    """To a path not ending in /, each match is copied in turn: matched files take the name
    (the last one stays), a matched directory's contents go under it, and files and
    directories at once are refused (BuildKit refuses or nests them, by their order)."""
    write_tree(project, {"a.txt": b"a", "b.txt": b"b", "apple.txt": b"x", "sub/c.txt": b"c"})
    hasher = ContextHasher(None, Reporter())
    src = dsl.context(project)
    files = hasher.tree(src.glob("[ab].txt"), dest_is_dir=None)
    assert [(e.placed, e.source) for e in files.entries] == [(".", "b.txt")]
    directory = hasher.tree(src.glob("su*"), dest_is_dir=None)
    assert [e.placed for e in directory.entries] == ["c.txt"]
    with pytest.raises(ContextError, match="matches files and directories"):
        hasher.tree(src.glob("a*"), dest_is_dir=None)


def test_missing_paths_are_named(project: Path) -> None:
    """Selecting paths that do not exist (or are ignored) names each of them."""
    src = dsl.context(project, ignore=["README.md"]).select("nope.txt", "README.md", "app")
    with pytest.raises(ContextError) as caught:
        ContextHasher(None, Reporter()).tree(src)
    assert caught.value.missing == ("nope.txt", "README.md")


def test_symlinks_are_kept_not_followed(project: Path) -> None:
    """A symlink is hashed by its target string, never by what it points to."""
    (project / "link").symlink_to("app/main.py")
    src = dsl.context(project).as_source()
    before = digest(src)
    (project / "app/main.py").write_text("changed = True\n")
    tree = ContextHasher(None, Reporter()).tree(src)
    link = next(e for e in tree.entries if e.placed == "link")
    assert link.type == "symlink"
    (project / "link").unlink()
    (project / "link").symlink_to("README.md")
    assert digest(src) != before


def test_paths_cannot_leave_the_context(project: Path) -> None:
    """A selection that climbs out of the context is refused where it is written."""
    with pytest.raises(dsl.StepArgumentError) as caught:
        dsl.context(project).file("../secret.txt")
    assert caught.value.argument == "path"


def test_auto_layers_isolate_an_edit(tmp_path: Path) -> None:
    """With layers="auto", editing one small file changes one layer part only."""
    files = {f"src/m{i}.py": os.urandom(40_000) for i in range(600)}
    files["requirements.txt"] = b"flask\n"
    files["model.bin"] = os.urandom(2 << 20)
    write_tree(tmp_path / "p", files)
    src = dsl.context(tmp_path / "p").as_source()
    hasher = ContextHasher(None, Reporter())
    before = dict(partition_tree(hasher.tree(src), "auto"))
    (tmp_path / "p/src/m7.py").write_bytes(os.urandom(40_000))
    after = dict(partition_tree(ContextHasher(None, Reporter()).tree(src), "auto"))
    assert set(before) == set(after)
    assert {"manifests", "large-0"} <= set(before)
    assert len(before) > 3
    changed = [name for name in before if before[name].digest != after[name].digest]
    assert len(changed) == 1
    assert changed[0].startswith("files-")


FILES = st.dictionaries(
    st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6}){0,2}\.txt", fullmatch=True),
    st.binary(max_size=64),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=FILES, data=st.data())
def test_any_content_change_changes_the_digest(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes], data: st.DataObject
) -> None:
    """Flipping a byte (same size) of any file changes the digest; rewriting it doesn't."""
    paths = sorted(files)
    assume(not file_and_dir_clash(paths))
    root = tmp_path_factory.mktemp("ctx")
    write_tree(root, files)
    src = dsl.context(root).as_source()
    before = digest(src)
    name = data.draw(st.sampled_from(paths))
    content = files[name] or b"\x00"
    flipped = bytes([content[0] ^ 0xFF]) + content[1:]
    (root / name).write_bytes(flipped)
    assert digest(src) != before
    (root / name).write_bytes(files[name])
    assert digest(src) == before


METADATA = st.fixed_dictionaries(
    {
        "mtime_ns": st.integers(min_value=0, max_value=2**62),
        "uid": st.integers(min_value=0, max_value=60000),
        "gid": st.integers(min_value=0, max_value=60000),
        "group_other_bits": st.sampled_from([0o000, 0o020, 0o040, 0o044, 0o064]),
    }
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=FILES, metadata=st.lists(METADATA, min_size=8, max_size=8))
def test_metadata_only_changes_never_change_the_digest(
    tmp_path_factory: pytest.TempPathFactory,
    files: dict[str, bytes],
    metadata: list[dict[str, int]],
) -> None:
    """Any mtime/atime, owner or non-execute permission bits, in another checkout: same digest."""
    paths = sorted(files)
    assume(not file_and_dir_clash(paths))
    first, second = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two") / "deeper"
    write_tree(first, files)
    write_tree(second, files)
    for name, meta in zip(paths, metadata, strict=False):
        path = second / name
        os.chown(path, meta["uid"], meta["gid"])
        path.chmod(0o600 | meta["group_other_bits"])
        os.utime(path, ns=(meta["mtime_ns"], meta["mtime_ns"]))
    assert digest(dsl.context(first).as_source()) == digest(dsl.context(second).as_source())


EDITS = st.lists(
    st.tuples(st.sampled_from(["write", "delete", "chmod", "mkdir"]), st.integers(0, 50)),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=FILES, edits=EDITS)
def test_incremental_digests_equal_digests_from_scratch(
    tmp_path_factory: pytest.TempPathFactory,
    clock: ScanClock,
    files: dict[str, bytes],
    edits: list[tuple[str, int]],
) -> None:
    """A warm store reuses the digests of unchanged directories; the result always equals the
    digest computed from all the rows with no store at all."""
    paths = sorted(files)
    assume(not file_and_dir_clash(paths))
    root = tmp_path_factory.mktemp("ctx")
    store = Store(tmp_path_factory.mktemp("store"))
    write_tree(root, files)
    for selection in (dsl.context(root).as_source(), dsl.context(root).dir(paths[0].split("/")[0])):
        if "/" not in paths[0] and selection.selectors[0].kind == "dir":
            continue
        clock.settled()  # past the racy window, so the store really is used
        digest(selection, store)
        for action, n in edits:
            target = root / paths[n % len(paths)]
            if action == "write" and target.exists():
                target.write_bytes(target.read_bytes() + b"!")
            elif action == "delete" and target.exists():
                target.unlink()
            elif action == "chmod" and target.exists():
                target.chmod(0o755)
            elif action == "mkdir":
                (target.parent / f"new{n}").mkdir(exist_ok=True)
        clock.settled()
        warm = ContextHasher(store, Reporter()).tree(selection)
        cold = ContextHasher(None, Reporter()).tree(selection)
        assert warm.digest == cold.digest == Tree.from_rows(cold.rows).digest


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=FILES, edits=EDITS)
def test_incremental_layer_parts_equal_parts_from_scratch(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, bytes],
    edits: list[tuple[str, int]],
) -> None:
    """layers="auto" parts from a warm store (only changed directories hashed again) equal
    the parts partition_tree makes from all the rows with no store at all."""
    from imagedsl import _layerparts, treehash

    monkeypatch.setattr(treehash, "LARGE_FILE", 40)
    monkeypatch.setattr(_layerparts, "LARGE_FILE", 40)
    monkeypatch.setattr(_layerparts, "_LARGE_BUCKET", 30)
    monkeypatch.setattr(_layerparts, "_FILES_BUCKET", 20)
    paths = sorted(files)
    if any(a != b and b.startswith(a.removesuffix(".txt") + "/") for a in paths for b in paths):
        return  # a file and a directory of one name cannot both exist
    root = tmp_path_factory.mktemp("ctx")
    store = Store(tmp_path_factory.mktemp("store"))
    write_tree(root, files)
    (root / "requirements.txt").write_text("flask\n")
    selection = dsl.context(root).as_source()

    def parts(hasher: ContextHasher) -> list[tuple[str, str]]:
        found = hasher.partition(selection, hasher.tree(selection), "auto")
        assert found is not None
        hasher.save()
        return [(name, tree.digest) for name, tree in found]

    time.sleep(0.06)  # past the racy window, so the store really is used
    parts(ContextHasher(store, Reporter()))
    for action, n in edits:
        target = root / paths[n % len(paths)]
        if action == "write" and target.exists():
            target.write_bytes(target.read_bytes() + b"!" * 30)
        elif action == "delete" and target.exists():
            target.unlink()
        elif action == "chmod" and target.exists():
            target.chmod(0o755)
        elif action == "mkdir":
            (target.parent / f"new{n}").mkdir(exist_ok=True)
    time.sleep(0.06)
    warm = ContextHasher(store, Reporter())
    cold = ContextHasher(None, Reporter())
    expected = [(n, t.digest) for n, t in partition_tree(cold.tree(selection), "auto")]
    assert parts(warm) == expected
    warm_tree = warm.tree(selection)
    found = warm.partition(selection, warm_tree, "auto")
    assert found is not None
    from_rows = partition_tree(cold.tree(selection), "auto")
    # Sizes first: a warm tree counts its bytes from the stat cache, without its rows.
    assert warm_tree.size == cold.tree(selection).size
    assert [(n, t.size) for n, t in found] == [(n, sum(r[4] for r in t.rows)) for n, t in from_rows]
    assert [(n, t.rows) for n, t in found] == [(n, t.rows) for n, t in from_rows]


def test_a_directory_copied_whole_counts_its_bytes_without_its_rows(tmp_path: Path) -> None:
    """A warm tree's size comes from the stat cache's listings (``plan --json`` shows it for
    every step): the same as the sum of its rows, with symlinks, ignored files and empty
    directories about."""
    root = tmp_path / "ctx"
    write_tree(root, {"a.txt": b"a" * 10, "d/b.bin": b"b" * 300, "d/e/c": b"c" * 7, "x.log": b"1"})
    (root / "d" / "link").symlink_to("b.bin")
    (root / "empty").mkdir()
    (root / ".dockerignore").write_text("*.log\n")
    store = Store(tmp_path / "store")
    source = dsl.context(root, ignore=["*.log"]).as_source()
    ContextHasher(store, Reporter()).tree(source)
    ContextHasher(store, Reporter()).save()
    time.sleep(0.06)
    warm = ContextHasher(store, Reporter()).tree(source)
    counted = warm.size
    assert counted == sum(row[4] for row in warm.rows) == 10 + 300 + 7 + len("*.log\n")


def test_a_symlinked_file_is_copied_as_its_target(tmp_path: Path) -> None:
    """Selecting a symlink by name selects what it points to (BuildKit follows it, inside the
    context): the target's content under the link's name."""
    root = tmp_path / "ctx"
    write_tree(root, {"real.txt": b"hello\n", "dir/inner.txt": b"inner\n"})
    (root / "link.txt").symlink_to("real.txt")
    (root / "dirlink").symlink_to("dir")
    src = dsl.context(root)
    hasher = ContextHasher(None, Reporter())
    tree = hasher.tree(src.file("link.txt"), dest_is_dir=False)
    (entry,) = tree.entries
    assert (entry.placed, entry.type, entry.size) == (".", "file", 6)
    assert tree.digest == hasher.tree(src.file("real.txt"), dest_is_dir=False).digest
    assert [e.placed for e in hasher.tree(src.dir("dirlink")).entries] == ["inner.txt"]


def test_a_symlink_out_of_the_context_is_refused(tmp_path: Path) -> None:
    """An absolute link reads the context's path in BuildKit and the host's here: refused."""
    root = tmp_path / "ctx"
    write_tree(root, {"etc/passwd": b"not the host's\n"})
    (root / "abs").symlink_to("/etc/passwd")
    (root / "gone").symlink_to("missing.txt")
    src = dsl.context(root)
    hasher = ContextHasher(None, Reporter())
    with pytest.raises(ContextError, match="leaves the build context"):
        hasher.tree(src.file("abs"))
    with pytest.raises(ContextError):
        hasher.tree(src.file("gone"))


def test_editing_a_symlinked_file_changes_the_digest(tmp_path: Path) -> None:
    """The stat cache watches the target too, not only the link."""
    root = tmp_path / "ctx"
    write_tree(root, {"real.txt": b"one\n"})
    (root / "link.txt").symlink_to("real.txt")
    store = Store(tmp_path / "store")
    source = dsl.context(root).file("link.txt")
    before = digest(source, store)
    (root / "real.txt").write_bytes(b"two, longer\n")
    assert digest(source, store) != before


@pytest.mark.parametrize("size", [0, 1, 4096, (4 << 20) - 1, 4 << 20, (9 << 20) + 3])
@pytest.mark.parametrize("claimed", ["exact", "less", "more"])
def test_hash_file_hashes_the_whole_file_whatever_its_stat_said(
    tmp_path: Path, size: int, claimed: str
) -> None:
    """hash_file reads to the end of the file: a size taken from an older stat (the file grew
    or shrank since) changes how it is read, never what it hashes."""
    import blake3

    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    stated = {"exact": size, "less": max(0, size - 3), "more": size + 3}[claimed]
    assert hash_file(str(path), stated) == blake3.blake3(data).hexdigest()

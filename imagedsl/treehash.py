"""Tree hashing: what a context source selects, and the tree digest of exactly those files.

A tree digest is blake3 over the sorted entries ``(placed path, type, normalised mode, size,
blake3 of content | symlink target)``. It never includes mtimes, owners, inode numbers or the
checkout directory, so two checkouts of one commit give one digest; and it always reflects
content: the stat cache only lets us skip *re-reading* a file whose ``(size, mtime_ns,
ctime_ns, inode)`` are unchanged since it was hashed, and ctime moves on every write, so a
file rewritten with the same size and its old mtime put back is still re-read.

Modes are normalised the way git stores them (0o755 if any execute bit is set, else 0o644;
directories 0o755), so the umask of a checkout cannot change a key.
"""

from __future__ import annotations

import functools
import os
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final

import attrs
import blake3

from imagedsl._filehash import hash_files
from imagedsl._ignore import IgnoreRules
from imagedsl._layerparts import (
    AUTO_PARTS,
    LARGE_COPY,
    LARGE_FILE,
    AutoAssign,
    pack_parts,
    unpack_parts,
)
from imagedsl._statcache import (
    DIR_ENTRY,
    MODE,
    RACY_NS,
    SIZE,
    TARGET,
    TYPE,
    DirectoryLister,
    Entry,
    EntryType,
    RootCache,
    ScanEntries,
    StatCacheStore,
    Subtree,
    add_missing_parents,
    entry_of,
    unchanged_directories,
)
from imagedsl.contexts import Context, ContextSource, Selector, glob_regex
from imagedsl.credentials import CONTENT_LIMIT
from imagedsl.errors import ContextError

if TYPE_CHECKING:
    from imagedsl.reporting import Reporter
    from imagedsl.steps import LayerSpec


#: Symlinks followed in a row before giving up (Linux's own limit).
_MAX_SYMLINKS: Final = 40
#: The tree of wildcards none of which matched: BuildKit copies nothing, not even the
#: destination (an empty directory's copy makes it), so it is not the empty directory's tree.
NOTHING_MATCHED: Final = blake3.blake3(b"imagedsl.tree.v2\0nothing matched\0").hexdigest()
#: The domain of a directory's shape (:attr:`Tree.shape`): its records without contents.
_SHAPE: Final = b"imagedsl.shape.v1\0"
#: What a selector brings, in groups of (entries by context path, base): base is the
#: directory placement is relative to, or None for a file selected by name (it lands by its
#: base name). A directory's entries stay the scan's own mapping: no tuple per entry.
Matches = list[tuple[Mapping[str, Entry], str | None]]
#: A tree row: (placed, source, type, mode, size, digest), the tuple form of a TreeEntry.
Row = tuple[str, str, str, int, int, str]


class ContextChangedError(ContextError):
    """A context file changed after the plan hashed it (``path``: the file, or the selection
    whose files no longer give the planned digest): its bytes are not the planned ones."""

    def __init__(self, root: str, path: str) -> None:
        super().__init__(root, (path,), "changed since it was planned")
        self.path = path

    def __str__(self) -> str:
        return (
            f"{os.path.join(self.root, self.path)} changed while the build was being prepared; "
            "run the build again"
        )


@attrs.frozen(kw_only=True)
class TreeEntry:
    """One entry of a tree: where it is placed under the destination and what it holds."""

    source: str
    placed: str
    type: EntryType
    mode: int
    size: int
    digest: str


@attrs.frozen
class Tree:
    """The files a source selects, placed relative to the destination directory.

    ``rows`` may be given as a function: a warm plan knows a tree's digest from the stat
    cache and builds the rows only if something (a backend, a miss explanation) reads them.
    """

    digest: str
    _source: tuple[Row, ...] | Callable[[], tuple[Row, ...]] = attrs.field(
        eq=False, repr=False, alias="rows"
    )
    #: Its bytes without building its rows (``plan --json`` shows them), or None: sum the rows.
    _size_of: Callable[[], int] | None = attrs.field(
        default=None, eq=False, repr=False, alias="size_of"
    )
    #: When known without rows (a directory copied whole, its layers="auto" parts): a digest
    #: of everything in the rows but file contents and exact sizes (placed and source paths,
    #: types, modes, :func:`size_class`). An edit of contents that keeps each file's size
    #: class keeps it, so what reads no content (or few files' contents, checked with
    #: ``contents_of``) and no size but its class can be memoised by it.
    shape: str | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)
    #: With ``shape``: the content digest of the file at each of some source paths (None: no
    #: such file), without building the rows.
    contents_of: Callable[[Iterable[str]], dict[str, str | None]] | None = attrs.field(
        default=None, eq=False, repr=False, kw_only=True
    )

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> Tree:
        """A tree of rows, with its digest."""
        ordered = tuple(sorted(rows))
        return cls(tree_digest(ordered), ordered)

    @functools.cached_property
    def rows(self) -> tuple[Row, ...]:
        """(placed, source, type, mode, size, digest) per entry, sorted by placed path."""
        source = self._source
        return source() if callable(source) else source

    @functools.cached_property
    def entries(self) -> tuple[TreeEntry, ...]:
        """The rows as :class:`TreeEntry` values, sorted by placed path."""
        return tuple(
            TreeEntry(placed=p, source=src, type=t, mode=m, size=n, digest=d)  # type: ignore[arg-type]
            for p, src, t, m, n, d in self.rows
        )

    @functools.cached_property
    def size(self) -> int:
        """Total bytes of regular files."""
        if self._size_of is not None:
            return self._size_of()
        return sum(row[4] for row in self.rows)

    def manifest(self) -> dict[str, list[object]]:
        """Source path -> (type, mode, size, digest): what miss explanations diff."""
        return {src: [t, m, n, d] for _, src, t, m, n, d in self.rows}


def sole_file(source: ContextSource, tree: Tree) -> TreeEntry | None:
    """The file a one-path selection names, when the tree is just that file.

    A bind mount of such a selection mounts the file itself (as BuildKit does), not a
    directory holding it."""
    entries = tree.entries
    if (
        len(source.selectors) == 1
        and len(entries) == 1
        and entries[0].type == "file"
        and entries[0].source == source.selectors[0].path
    ):
        return entries[0]
    return None


def _record(name: str, kind: str, mode: int, size: int, digest: str) -> bytes:
    """One entry of a directory in a tree digest (NUL never occurs in a name)."""
    return f"{name}\0{kind}\0{mode:o}\0{size}\0{digest}\0".encode("utf-8", "surrogateescape")


def _directory_digest(records: Iterable[bytes], *, top: bool) -> str:
    """A directory's digest from its entries' records, sorted (by name: they start with it)."""
    domain = b"imagedsl.tree.v2\0" if top else b"imagedsl.dir.v2\0"
    return blake3.blake3(domain + b"".join(sorted(records))).hexdigest()


def tree_digest(rows: Iterable[Row]) -> str:
    """The Merkle digest of a tree: each directory hashes its entries' records
    ``(name, type, mode, size, digest)``, where a subdirectory's digest is its own such hash
    (directories implied by deeper paths count as plain 0755 directories). An edit re-hashes
    only the directories above it, which is what lets a plan reuse the rest."""
    children: dict[str, list[tuple[str, str, int, int, str, str]]] = {"": []}
    explicit: set[str] = set()
    for placed, _, kind, mode, size, digest in rows:
        parent, _, name = placed.rpartition("/")
        children.setdefault(parent, []).append((name, kind, mode, size, digest, placed))
        if kind == "dir":
            explicit.add(placed)
    known = set(children) | explicit
    stack = [d for d in known if d]
    while stack:  # directories only implied by deeper paths, up to the top
        directory = stack.pop()
        children.setdefault(directory, [])
        grand, _, name = directory.rpartition("/")
        if directory not in explicit:
            children.setdefault(grand, []).append((name, "dir", 0o755, 0, "", directory))
        if grand and grand not in known:
            known.add(grand)
            stack.append(grand)
    digests: dict[str, str] = {}
    for directory in sorted(children, key=lambda d: -d.count("/") if d else 1):
        records = [
            _record(name, kind, mode, size, digests[path] if kind == "dir" else digest)
            for name, kind, mode, size, digest, path in children[directory]
        ]
        digests[directory] = _directory_digest(records, top=directory == "")
    return digests[""]


def partition_tree(tree: Tree, layers: str | Sequence[Sequence[str]]) -> list[tuple[str, Tree]]:
    """Split a tree into named layer parts (empty parts are dropped, order is fixed).

    ``"auto"``: ``manifests`` (dependency manifests and lock files), ``large-N`` (files of
    1 MiB or more, in up to 4 buckets) and ``files-N`` (the rest, in up to 32 buckets).
    Buckets are chosen by a hash of the placed path, so adding or editing a file changes
    only its own bucket; the bucket count is a power of two from the bytes involved, so it
    moves only when those bytes double or halve. Explicit groups: ``group-N`` per group
    (first matching group wins) and ``rest``.
    """
    named, order = _partition_rows(tree, layers)
    parts = []
    for name in order:
        rows = named.get(name)
        if rows:
            parts.append((name, Tree.from_rows(rows)))
    if not parts:  # an empty selection still makes one (empty) layer
        parts.append(("files-0", tree))
    return parts


def _partition_rows(
    tree: Tree, layers: str | Sequence[Sequence[str]]
) -> tuple[dict[str, list[Row]], list[str]]:
    """The rows of each part (sorted, as the tree's), and the order of the parts."""
    named: dict[str, list[Row]] = {}
    if layers == "auto":
        large_bytes = sum(row[4] for row in tree.rows if row[4] >= LARGE_FILE)
        rest_bytes = sum(row[4] for row in tree.rows if row[4] < LARGE_FILE)
        assign = AutoAssign(large_bytes, rest_bytes)
        for row in tree.rows:
            placed, _, kind, _, size, _ = row
            named.setdefault(AUTO_PARTS[assign(placed, kind, size)], []).append(row)
        return named, list(AUTO_PARTS)
    rules = [IgnoreRules.from_lines(group) for group in layers]
    for row in tree.rows:
        name = next((f"group-{i}" for i, r in enumerate(rules) if r.excludes(row[0])), "rest")
        named.setdefault(name, []).append(row)
    return named, [f"group-{i}" for i in range(len(rules))] + ["rest"]


def _placed(
    selections: Sequence[tuple[Selector, Matches]],
    exclude: Sequence[str],
    dest_is_dir: bool,
    parents: bool,
) -> dict[str, tuple[str, Entry]]:
    """Where COPY places each selected entry: placed path -> (context path, entry)."""
    excluded = IgnoreRules.from_lines(exclude) if exclude else None
    placed: dict[str, tuple[str, Entry]] = {}
    for _, matches in selections:
        for path, entry, base in _each_match(matches):
            if parents:
                rel = path
            elif base is None:
                rel = "." if not dest_is_dir else posixpath.basename(path)
            else:
                rel = path[len(base) + 1 :] if base else path
            if excluded is not None and excluded.excludes(rel):
                continue
            placed[rel] = (path, entry)
    return placed


def _each_match(matches: Matches) -> Iterator[tuple[str, Entry, str | None]]:
    """(path, entry, base) for each entry a selector brings."""
    for entries, base in matches:
        for path, entry in entries.items():
            yield path, entry, base


def _into_directory(
    root: str,
    source: ContextSource,
    selections: Sequence[tuple[Selector, Matches]],
) -> bool:
    """Whether one wildcard copied to a path not ending in ``/`` copies into it: BuildKit
    copies each match in turn to the path, so matched files take its name (the last stays), a
    directory's contents go into it; both at once it refuses or nests by order: refused."""
    kinds = {base is None for _, matches in selections for entries, base in matches if entries}
    if kinds == {True, False}:
        raise ContextError(
            root,
            problem=f"{source.selectors[0].path} matches files and directories: end the "
            "destination with / to copy them into it",
        ).with_location(source.location or source.context.location)
    return kinds != {True}


class _PartRows:
    """The layers="auto" parts of a directory copied whole: entries are placed and sorted
    into parts once, when a part's rows are first read; each part's rows are then built
    (content digests) and checked against that part's planned digest on their own, so
    reading one part after an edit hashes nothing of the others."""

    def __init__(
        self,
        rows_of: Callable[[str, Mapping[str, tuple[str, Entry]]], tuple[Row, ...]],
        root: str,
        selections: Sequence[tuple[Selector, Matches]],
        dest_is_dir: bool,
        parents: bool,
        assign: AutoAssign,
    ) -> None:
        self._rows_of = rows_of
        self._root = root
        self._selections = selections
        self._dest_is_dir = dest_is_dir
        self._parents = parents
        self._assign = assign
        self._groups: dict[int, dict[str, tuple[str, Entry]]] | None = None

    def _group(self, part: int) -> dict[str, tuple[str, Entry]]:
        if self._groups is None:
            groups: dict[int, dict[str, tuple[str, Entry]]] = {}
            placed = _placed(self._selections, (), self._dest_is_dir, self._parents)
            parts = self._assign.parts_of((rel, e[TYPE], e[SIZE]) for rel, (_, e) in placed.items())
            for (rel, value), part_of in zip(placed.items(), parts, strict=True):
                groups.setdefault(part_of, {})[rel] = value
            self._groups = groups
        return self._groups.get(part, {})

    def rows(self, part: int, digest: str) -> tuple[Row, ...]:
        found = self._rows_of(self._root, self._group(part))
        return _as_planned(found, digest, self._root, self._selections)

    def size(self, part: int) -> int:
        """A part's bytes, from the stat cache's sizes (no content is read)."""
        return _file_bytes(e for _, e in self._group(part).values())


def _shape_of(memo: str, shape: bytes, part: tuple[int, AutoAssign] | None = None) -> str:
    """:attr:`Tree.shape` of a directory copied whole (by its hasher memo: selection,
    placement) or of one of its layers="auto" parts (with the bucket counts, which come from
    the total sizes, and with the size classes fix which part each file is in)."""
    selection = blake3.blake3(memo.encode("utf-8", "surrogateescape")).digest()
    if part is None:
        suffix = b"whole"
    else:
        index, assign = part
        suffix = bytes([index, assign.large, assign.rest])
    return blake3.blake3(_SHAPE + selection + shape + suffix).hexdigest()


def size_class(size: int) -> int:
    """What a shape keeps of a file's size: whether it is empty, small enough for check's
    credential rules to read (:data:`~imagedsl.credentials.CONTENT_LIMIT`), and large enough
    for a layers="auto" part of large files (:data:`LARGE_FILE`). Nothing else depends on
    the size, so an edit that keeps the class keeps the shape (most edits of source files)."""
    return (size > 0) | (size <= CONTENT_LIMIT) << 1 | (size >= LARGE_FILE) << 2


def _file_bytes(entries: Iterable[Entry]) -> int:
    """The bytes of the regular files among ``entries`` (what a tree's rows sum)."""
    return sum(e[SIZE] for e in entries if e[TYPE] == "file")


def _as_planned(
    found: tuple[Row, ...],
    digest: str,
    root: str,
    selections: Sequence[tuple[Selector, Matches]],
) -> tuple[Row, ...]:
    """``found``, if its digest is the planned one: a file changed after the plan read it
    would otherwise put bytes other than the keyed ones in a layer."""
    if tree_digest(found) != digest:
        changed = ", ".join(selector.path for selector, _ in selections)
        raise ContextChangedError(root, changed)
    return found


class _Split:
    """One tree's partition, computed once when a part's rows are first needed."""

    def __init__(self, tree: Tree, layers: str | Sequence[Sequence[str]]) -> None:
        self._tree = tree
        self._layers = layers
        self._parts: list[tuple[str, Tree]] | None = None

        self._rows: dict[str, list[Row]] | None = None

    def parts(self) -> list[tuple[str, Tree]]:
        if self._parts is None:
            self._parts = partition_tree(self._tree, self._layers)
        return self._parts

    def rows(self, name: str) -> tuple[Row, ...]:
        """One part's rows, without hashing the other parts."""
        if self._rows is None:
            self._rows = _partition_rows(self._tree, self._layers)[0]
        return tuple(self._rows.get(name, ())) or self._tree.rows


class ContextHasher:
    """Scans contexts and hashes selections for one planning run.

    Every scan of a directory (and every stat of a single selected path) is a *probe*. The
    stat cache keeps, per context root, what each probe saw last time, the content digest of
    each file (valid while its entry is unchanged) and the digest of each selection. When
    every probe a selection used sees exactly what it saw last time, the selection's digest
    is known without touching a file or a row: that is the warm path of every plan.
    """

    def __init__(self, stat_caches: StatCacheStore | None, reporter: Reporter) -> None:
        self._stat_caches = stat_caches
        self._reporter = reporter
        self._rules: dict[Context, tuple[IgnoreRules, str]] = {}
        self._caches: dict[str, RootCache] = {}
        self._dirty: set[str] = set()
        self._started_ns = time.time_ns()
        #: Trees of directories copied whole, by digest: (root, scan probe, base, memo).
        self._wholes: dict[str, tuple[str, str, str, str]] = {}
        #: For those trees: their selections, dest_is_dir and parents (to place entries).
        self._whole_rows: dict[str, tuple[Sequence[tuple[Selector, Matches]], bool, bool]] = {}
        #: Per (scan probe, base): directories deepest first, and their subtree signatures.
        self._subtrees: dict[tuple[str, str], tuple[list[str], dict[str, bytes]]] = {}
        #: Per memo of a directory copied whole: its top directory's :data:`Subtree`.
        self._tops: dict[str, Subtree] = {}

    # -- public ------------------------------------------------------------------------------

    def tree(
        self,
        source: ContextSource,
        *,
        exclude: Sequence[str] = (),
        dest_is_dir: bool | None = True,
        parents: bool = False,
    ) -> Tree:
        """Hash what ``source`` selects, placed as Docker's COPY places it.

        ``dest_is_dir=False`` (a single file copied to a file name) places that file at ``.``;
        None (one wildcard, to a path not ending in ``/``) does so if it matched one file;
        ``parents=True`` (``COPY --parents``) places every entry at its path in the context.
        Raises :class:`ContextError` naming every selected path that does not exist (a
        wildcard may match nothing; when no selector matched, the tree is NOTHING_MATCHED).
        """
        context = source.context
        root = context.root
        rules, rules_id = self._rules_for(context)
        cache = self._load_cache(root)
        probes: list[str] = []
        selections: list[tuple[Selector, Matches]] = []
        missing: list[str] = []
        for selector in source.selectors:
            matches = self._match(context, rules, rules_id, selector, probes)
            if matches is None:
                if selector.kind != "glob":  # a wildcard may match nothing, as in BuildKit
                    missing.append(selector.path)
                continue
            selections.append((selector, matches))
        if missing:
            raise ContextError(root, missing).with_location(source.location or context.location)
        if not selections:
            return Tree(NOTHING_MATCHED, ())
        if dest_is_dir is None:
            dest_is_dir = _into_directory(root, source, selections)
        memo = f"{rules_id}\0{source.selectors!r}\0{tuple(exclude)!r}\0{dest_is_dir}"
        if parents:
            memo += "\0parents"
        selector = source.selectors[0]
        base = "" if selector.path == "." else selector.path
        whole_directory = (
            len(source.selectors) == 1
            and (selector.kind == "dir" or selector.path == ".")
            and not exclude
            and not (parents and base)
            and cache.directories.get(f"{rules_id}:dir:{base}")
        )
        if whole_directory and base in cache.directories[f"{rules_id}:dir:{base}"]:
            # A directory copied whole: its digest is the Merkle digest of its directories,
            # and only directories whose contents changed since last run are hashed again.
            probe = f"{rules_id}:dir:{base}"
            digest = self._merkle(root, cache, probe, base, memo)
            self._wholes[digest] = (root, probe, base, memo)
            self._whole_rows[digest] = (selections, dest_is_dir, parents)
            _, _, shape, large, rest = self._tops[memo]
            return Tree(
                digest,
                self._rows_later(root, selections, exclude, dest_is_dir, parents, digest),
                size_of=functools.partial(int, large + rest),
                shape=_shape_of(memo, shape),
                contents_of=functools.partial(self._contents_of, root, probe),
            )
        known = cache.trees.get(memo)
        if known is not None and all(cache.unchanged(p) for p in probes):
            return Tree(
                known, self._rows_later(root, selections, exclude, dest_is_dir, parents, known)
            )
        tree = Tree.from_rows(self._rows(root, selections, exclude, dest_is_dir, parents))
        cache.trees[memo] = tree.digest
        self._dirty.add(root)
        return tree

    def partition(
        self, source: ContextSource, tree: Tree, layers: LayerSpec | None
    ) -> list[tuple[str, Tree]] | None:
        """The layer parts a COPY of ``tree`` from ``source`` makes (:func:`partition_tree`),
        or None when it is one layer: ``layers=None`` splits as ``"auto"`` only a tree of
        :data:`LARGE_COPY` bytes or more; ``"single"`` never splits. Remembered per tree
        digest, so a warm plan knows the parts' digests without building a row."""
        if layers == "single":
            return None
        whole = self._wholes.get(tree.digest)
        if whole is not None and layers in (None, "auto"):
            return self._auto_parts(tree, whole, split_small=layers == "auto")
        cache = self._load_cache(source.context.root)
        memo = f"{tree.digest}\0{layers!r}"
        spec: LayerSpec = "auto" if layers is None else layers
        split = _Split(tree, spec)
        if memo in cache.partitions:
            known = cache.partitions[memo]
            if known is None:
                return None
            return [
                (name, Tree(digest, functools.partial(split.rows, name))) for name, digest in known
            ]
        parts = None if layers is None and tree.size < LARGE_COPY else split.parts()
        cache.partitions[memo] = None if parts is None else [(n, t.digest) for n, t in parts]
        self._dirty.add(source.context.root)
        return parts

    def _auto_parts(
        self, tree: Tree, whole: tuple[str, str, str, str], *, split_small: bool
    ) -> list[tuple[str, Tree]] | None:
        """layers="auto" for a directory copied whole, part by part Merkle digests as
        :meth:`_merkle` computes the whole's: each directory keeps its digest in every part
        it has entries in, and only directories whose subtree changed are hashed again (so an
        edit costs what it costs without parts). Equal to :func:`partition_tree`."""
        root, probe, base, memo = whole
        cache = self._load_cache(root)
        _, _, shape, large, rest = self._tops[memo]
        if not split_small and large + rest < LARGE_COPY:
            return None
        assign = AutoAssign(large, rest)
        subtree = self._subtrees[(probe, base)][1]
        key = f"{memo}\0{assign.large}\0{assign.rest}"
        top = cache.part_subtrees.top(key, base)
        if top is not None and top[0] == subtree[base]:
            packed = top[1]  # nothing below changed: no directory's parts are read
        else:
            packed = self._changed_parts(root, probe, base, key, assign, top is None)
        parts = unpack_parts(packed)
        if not parts:  # an empty selection still makes one (empty) layer
            return [("files-0", tree)]
        selections, dest_is_dir, parents = self._whole_rows[tree.digest]
        grouped = _PartRows(self._rows_of, root, selections, dest_is_dir, parents, assign)
        # The whole's shape fixes every entry's part (by placed path, type and size class)
        # once the bucket counts are given: with them, it fixes each part's shape.
        contents_of = functools.partial(self._contents_of, root, probe)
        return [
            (
                AUTO_PARTS[part],
                Tree(
                    parts[part].hex(),
                    functools.partial(grouped.rows, part, parts[part].hex()),
                    size_of=functools.partial(grouped.size, part),
                    shape=_shape_of(memo, shape, (part, assign)),
                    contents_of=contents_of,
                ),
            )
            for part in sorted(parts)
        ]

    def _changed_parts(
        self, root: str, probe: str, base: str, key: str, assign: AutoAssign, untopped: bool
    ) -> bytes:
        """The packed part digests of ``base`` (as :meth:`_auto_parts`), hashing again only
        the directories whose subtree changed since ``key`` was kept."""
        cache = self._load_cache(root)
        directories = cache.directories[probe]
        deepest_first, subtree = self._subtrees[(probe, base)]
        before: Mapping[str, tuple[bytes, bytes]] = cache.part_subtrees.get(key)
        now, changed = unchanged_directories(deepest_first, subtree, before)
        contents = self._changed_contents(root, directories, changed)
        cut = len(base) + 1 if base else 0
        empty = bytes.fromhex(_directory_digest((), top=False))
        for directory in changed:  # deepest first: subdirectories are done before parents
            records: dict[int, list[bytes]] = {}
            listed = directories[directory]
            parts = assign.parts_of((path[cut:], e[TYPE], e[SIZE]) for path, e in listed.items())
            for (path, entry), part in zip(listed.items(), parts, strict=True):
                name = path.rpartition("/")[2]
                kind = entry[TYPE]
                if kind == "dir":
                    inside = unpack_parts(now[path][1])
                    inside.setdefault(part, empty)
                    # One record per part it is in: the same but for the digest.
                    head = _record(name, "dir", entry[MODE], 0, "")[:-1]
                    for inner, digest in inside.items():
                        records.setdefault(inner, []).append(head + digest.hex().encode() + b"\0")
                else:
                    size = entry[SIZE] if kind == "file" else 0
                    records.setdefault(part, []).append(
                        _record(name, kind, entry[MODE], size, contents[path])
                    )
            top = directory == base
            digests = {
                part: bytes.fromhex(_directory_digest(found, top=top))
                for part, found in records.items()
            }
            now[directory] = (subtree[directory], pack_parts(digests))
        if changed or untopped:
            cache.part_subtrees.keep(key, base, now)
            self._dirty.add(root)
        return now[base][1]

    def save(self) -> None:
        """Write back every stat cache this run changed."""
        if self._stat_caches is None:
            return
        for root in sorted(self._dirty):
            self._caches[root].save(self._stat_caches, self._started_ns - RACY_NS)
        self._dirty.clear()

    # -- selection ---------------------------------------------------------------------------

    def _rules_for(self, context: Context) -> tuple[IgnoreRules, str]:
        found = self._rules.get(context)
        if found is None:
            if not os.path.isdir(context.root):
                raise ContextError(context.root, problem="is not a directory").with_location(
                    context.location
                )
            rules = context.rules()
            rules_id = blake3.blake3(repr(rules.patterns).encode()).hexdigest()[:16]
            found = self._rules[context] = (rules, rules_id)
        return found

    def _match(
        self,
        context: Context,
        rules: IgnoreRules,
        rules_id: str,
        selector: Selector,
        probes: list[str],
    ) -> Matches | None:
        """What a selector brings (:data:`Matches`).

        None when the selector names nothing (an empty directory brings nothing, but exists).
        """
        if selector.kind == "glob" or selector.path == ".":
            top = self._scan(context, rules, rules_id, "", probes)
            if selector.path == ".":
                return [(top, "")]
            pattern = glob_regex(selector.path)
            depth = selector.path.count("/")
            found: Matches = []
            matched = False
            for path in sorted(top):
                if path.count("/") == depth and pattern.match(path):
                    matched = True
                    found.extend(self._expand(context, rules, rules_id, path, top[path], probes))
            return found if matched else None
        entry = self._stat_one(context, rules, rules_id, selector.path, probes)
        if entry is None:
            return None
        path = selector.path
        if entry[TYPE] == "symlink":
            followed = self._follow(context, rules, rules_id, path, entry, probes)
            if followed is None:
                return None
            target, entry = followed
            if entry[TYPE] == "dir":
                path = target
        if (selector.kind == "file" and entry[TYPE] == "dir") or (
            selector.kind == "dir" and entry[TYPE] != "dir"
        ):
            return None
        return self._expand(context, rules, rules_id, path, entry, probes)

    def _follow(
        self,
        context: Context,
        rules: IgnoreRules,
        rules_id: str,
        path: str,
        entry: Entry,
        probes: list[str],
    ) -> tuple[str, Entry] | None:
        """What a symlink named as a source resolves to: BuildKit follows it, inside the
        context (the target's content, under the link's name; a directory's contents).

        None when the target is missing or ignored; an error when the host would resolve it
        to anything but what BuildKit reads (it leaves the context).
        """
        root = context.root
        rel = path
        for _ in range(_MAX_SYMLINKS):
            target = entry[TARGET]
            joined = (
                target if target.startswith("/") else posixpath.join(posixpath.dirname(rel), target)
            )
            rel = posixpath.normpath("/" + joined).lstrip("/")  # ".." stops at the root
            if not rel:
                return "", DIR_ENTRY
            found = self._stat_one(context, rules, rules_id, rel, probes)
            if found is None:
                return None
            entry = found
            if entry[TYPE] != "symlink":
                break
        else:
            raise ContextError(root, problem=f"{path}: too many levels of symbolic links")
        if os.path.realpath(os.path.join(root, path)) != os.path.realpath(os.path.join(root, rel)):
            raise ContextError(root, problem=f"{path} is a symlink that leaves the build context")
        return rel, entry

    def _expand(
        self,
        context: Context,
        rules: IgnoreRules,
        rules_id: str,
        path: str,
        entry: Entry,
        probes: list[str],
    ) -> Matches:
        if entry[TYPE] != "dir":
            return [({path: entry}, None)]
        return [(self._scan(context, rules, rules_id, path, probes), path)]

    def _stat_one(
        self, context: Context, rules: IgnoreRules, rules_id: str, rel: str, probes: list[str]
    ) -> Entry | None:
        probe = f"{rules_id}:path:{rel}"
        cache = self._load_cache(context.root)
        seen = cache.seen.get(probe)
        if seen is None:
            entry = None
            if not rules.excludes(rel):
                try:
                    st = os.lstat(os.path.join(context.root, rel))
                except (FileNotFoundError, NotADirectoryError):
                    pass
                else:
                    entry = entry_of(context.root, rel, st)
            seen = cache.seen[probe] = {} if entry is None else {rel: entry}
        probes.append(probe)
        return seen.get(rel)

    def _scan(
        self, context: Context, rules: IgnoreRules, rules_id: str, start: str, probes: list[str]
    ) -> Mapping[str, Entry]:
        """Every entry under ``start`` (not ``start`` itself) that the rules keep."""
        probe = f"{rules_id}:dir:{start}"
        probes.append(probe)
        cache = self._load_cache(context.root)
        scanned = cache.seen.get(probe)
        if scanned is not None:
            return scanned
        root = context.root
        listing = DirectoryLister(root, rules, watch_key=f"{root}\0{probe}").run(start)
        found: Mapping[str, Entry] = ScanEntries(listing)
        if rules:
            merged: dict[str, Entry] = {}
            for directory in listing:
                merged.update(listing[directory])
            found = merged
            if add_missing_parents(root, start, merged):
                # Re-included files bring parents no directory listed: no shortcut.
                cache.seen[probe] = merged
                cache.directories[probe] = {}
                return merged
        cache.seen[probe] = found
        cache.directories[probe] = listing
        cache.known_signatures(probe, listing.signatures)
        return found

    # -- hashing -----------------------------------------------------------------------------

    def _rows_later(
        self,
        root: str,
        selections: Sequence[tuple[Selector, Matches]],
        exclude: Sequence[str],
        dest_is_dir: bool,
        parents: bool,
        digest: str,
    ) -> Callable[[], tuple[Row, ...]]:
        """The rows of a tree whose digest came from the stat cache, built when first read:
        by then a file may have changed, and rows that no longer give the planned digest
        must not be used (a backend would place bytes other than the keyed ones)."""

        def rows() -> tuple[Row, ...]:
            found = self._rows(root, selections, exclude, dest_is_dir, parents)
            return _as_planned(found, digest, root, selections)

        return rows

    def _rows(
        self,
        root: str,
        selections: Sequence[tuple[Selector, Matches]],
        exclude: Sequence[str],
        dest_is_dir: bool,
        parents: bool = False,
    ) -> tuple[Row, ...]:
        """The tree's rows: placement, then content digests (from the cache when valid)."""
        return self._rows_of(root, _placed(selections, exclude, dest_is_dir, parents))

    def _rows_of(self, root: str, placed: Mapping[str, tuple[str, Entry]]) -> tuple[Row, ...]:
        """Rows of placed entries (placed path -> (context path, entry)), sorted."""
        digests = self._digests(root, placed.values())
        return tuple(
            sorted(
                (rel, path, e[TYPE], e[MODE], e[SIZE] if e[TYPE] == "file" else 0, digests[path])
                for rel, (path, e) in placed.items()
            )
        )

    def _merkle(self, root: str, cache: RootCache, probe: str, base: str, memo: str) -> str:
        """The tree digest of directory ``base`` copied whole, reusing the digest of every
        directory whose subtree saw nothing change (equal to :func:`tree_digest` of its rows)."""
        directories = cache.directories[probe]
        signatures = cache.directory_signatures(probe)
        below: dict[str, list[str]] = {}
        for directory in directories:
            if directory != base:
                below.setdefault(directory.rpartition("/")[0], []).append(directory)
        deepest_first = sorted(directories, key=lambda d: d.count("/"), reverse=True)
        if base == "":
            deepest_first.sort(key=lambda d: d.count("/") + (1 if d else 0), reverse=True)
        subtree: dict[str, bytes] = {}
        for directory in deepest_first:
            hasher = blake3.blake3(signatures[directory])
            for child in sorted(below.get(directory, ())):
                hasher.update(subtree[child])
            subtree[directory] = hasher.digest()
        self._subtrees[(probe, base)] = (deepest_first, subtree)
        kept = cache.subtrees.top(memo, base)
        if kept is not None and kept[0] == subtree[base]:
            # Nothing below changed: no directory's memo is read, and none holds racy files.
            cache.settle(probe, deepest_first)
            self._tops[memo] = kept
            return kept[1]
        before_digests: Mapping[str, Subtree] = cache.subtrees.get(memo)
        now, changed = unchanged_directories(deepest_first, subtree, before_digests)
        cache.settle(probe, now)
        contents = self._changed_contents(root, directories, changed)
        for directory in changed:  # deepest first: subdirectories are done before parents
            records = []
            shapes = []
            large = rest = 0
            for path, entry in directories[directory].items():
                kind = entry[TYPE]
                name = path.rpartition("/")[2]
                if kind == "dir":
                    _, digest, inner, inner_large, inner_rest = now[path]
                    shapes.append(_record(name, kind, entry[MODE], 0, inner.hex()))
                    large += inner_large
                    rest += inner_rest
                    size = 0
                else:
                    digest = contents[path]
                    size = entry[SIZE] if kind == "file" else 0
                    shapes.append(_record(name, kind, entry[MODE], size_class(size), ""))
                    if size >= LARGE_FILE:
                        large += size
                    else:
                        rest += size
                records.append(_record(name, kind, entry[MODE], size, digest))
            top = directory == base
            shape = blake3.blake3(_SHAPE + b"".join(sorted(shapes))).digest()
            digest = _directory_digest(records, top=top)
            now[directory] = (subtree[directory], digest, shape, large, rest)
        if changed or kept is None:
            cache.subtrees.keep(memo, base, now)
            self._dirty.add(root)
        self._tops[memo] = now[base]
        return now[base][1]

    def _contents_of(self, root: str, probe: str, paths: Iterable[str]) -> dict[str, str | None]:
        """The content digests of files of a scan (from the stat cache when valid)."""
        listing = self._load_cache(root).directories[probe]
        found: dict[str, str | None] = {}
        files: list[tuple[str, Entry]] = []
        for path in paths:
            entry = listing.get(path.rpartition("/")[0], {}).get(path)
            if entry is None or entry[TYPE] != "file":
                found[path] = None
            else:
                files.append((path, entry))
        found.update(self._digests(root, files))
        return found

    def _changed_contents(
        self, root: str, directories: Mapping[str, Mapping[str, Entry]], changed: Sequence[str]
    ) -> dict[str, str]:
        """Content digests of the files (not directories) in the ``changed`` directories."""
        files = [
            (path, entry)
            for directory in changed
            for path, entry in directories[directory].items()
            if entry[TYPE] != "dir"
        ]
        return self._digests(root, files) if files else {}

    def _digests(self, root: str, entries: Iterable[tuple[str, Entry]]) -> dict[str, str]:
        """Content digests (file bytes, symlink targets; directories have none)."""
        cache = self._load_cache(root)
        digests: dict[str, str] = {}
        todo: list[tuple[str, Entry]] = []
        for path, entry in entries:
            kind = entry[TYPE]
            if kind == "file":
                cached = cache.shard_of(path).get(path)
                if cached is not None and cached[0] == entry:
                    digests[path] = cached[1]
                else:
                    todo.append((path, entry))
            elif kind == "symlink":
                digests[path] = blake3.blake3(
                    entry[TARGET].encode("utf-8", "surrogateescape")
                ).hexdigest()
            else:
                digests[path] = ""
        if todo:
            for (path, entry), digest in zip(todo, self._hash_files(root, todo), strict=True):
                digests[path] = digest
                cache.remember(path, entry, digest)
            self._dirty.add(root)
        return digests

    def _hash_files(self, root: str, entries: Sequence[tuple[str, Entry]]) -> Iterator[str]:
        total = sum(e[SIZE] for _, e in entries)
        self._reporter.hashing_started(root, len(entries), total)
        files = [(path, entry[SIZE]) for path, entry in entries]
        yield from hash_files(root, files, functools.partial(self._reporter.hashing_progress, root))
        self._reporter.hashing_finished(root)

    # -- stat cache --------------------------------------------------------------------------

    def _load_cache(self, root: str) -> RootCache:
        cache = self._caches.get(root)
        if cache is None:
            cache = self._caches[root] = RootCache.load(self._stat_caches, root)
        return cache

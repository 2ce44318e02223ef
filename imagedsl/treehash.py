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
import marshal
import os
import posixpath
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import attrs
import blake3

from imagedsl._ignore import IgnoreRules
from imagedsl.context import Context, ContextSource, Selector, glob_regex
from imagedsl.errors import ContextError

if TYPE_CHECKING:
    from imagedsl.reporting import Reporter

EntryType = Literal["file", "dir", "symlink"]

#: Files at least this big are hashed with blake3's own threads over an mmap.
_BIG_FILE: Final = 4 << 20
#: A file changed this recently may change again within one timestamp tick unnoticed; such
#: entries are hashed but not trusted from the stat cache next time (git's "racy clean").
_RACY_NS: Final = 50_000_000
_STATCACHE_VERSION: Final = 3
#: Symlinks followed in a row before giving up (Linux's own limit).
_MAX_SYMLINKS: Final = 40


class StatCacheStore(Protocol):
    """Where stat caches persist between runs (the store implements it)."""

    def load_stat_cache(self, root: str, part: str) -> bytes | None:
        """One saved part (``index`` or ``digests``) of a context root's stat cache."""

    def save_stat_cache(self, root: str, part: str, data: bytes) -> None:
        """Replace one part of a context root's stat cache, atomically."""


#: What a scan saw of one path: (type, normalised mode, size, mtime_ns, ctime_ns, inode,
#: symlink target). A plain tuple, indexed by the constants below: scans make 20,000s of
#: them, the stat cache stores them as they are, and two scans saw the same file exactly when
#: their entries are equal.
Entry = tuple[str, int, int, int, int, int, str]
TYPE: Final = 0
MODE: Final = 1
SIZE: Final = 2
MTIME: Final = 3
CTIME: Final = 4
TARGET: Final = 6
_DIR_ENTRY: Final[Entry] = ("dir", 0o755, 0, 0, 0, 0, "")


#: A tree row: (placed, source, type, mode, size, digest), the tuple form of a TreeEntry.
Row = tuple[str, str, str, int, int, str]


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

    @property
    def size(self) -> int:
        """Total bytes of regular files."""
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


def normalised_mode(entry_type: EntryType, st_mode: int) -> int:
    """Git-like modes: a checkout's umask must not change a key."""
    if entry_type == "file":
        return 0o755 if st_mode & 0o111 else 0o644
    return 0o755 if entry_type == "dir" else 0o777


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


#: Basenames of dependency manifests and lock files: their own layer under layers="auto".
MANIFEST_NAMES: Final = frozenset(
    {
        "Pipfile", "Pipfile.lock", "pyproject.toml", "poetry.lock", "uv.lock", "pdm.lock",
        "setup.py", "setup.cfg", "package.json", "package-lock.json", "npm-shrinkwrap.json",
        "yarn.lock", "pnpm-lock.yaml", "go.mod", "go.sum", "Cargo.toml", "Cargo.lock",
        "Gemfile", "Gemfile.lock", "composer.json", "composer.lock", "pom.xml",
        "build.gradle", "build.gradle.kts", "settings.gradle", "settings.gradle.kts",
        "gradle.lockfile", "mix.exs", "mix.lock", "pubspec.yaml", "pubspec.lock",
        "packages.lock.json", "Podfile.lock",
    }
)  # fmt: skip
_MANIFEST_PATTERN: Final = re.compile(r"(requirements|constraints)([-_.][\w.-]*)?\.(txt|in)\Z")
#: layers="auto": files at least this big are "large"; buckets aim at these sizes.
LARGE_FILE: Final = 1 << 20
_LARGE_BUCKET: Final = 64 << 20
_FILES_BUCKET: Final = 8 << 20
_MAX_LARGE_BUCKETS: Final = 4
_MAX_FILES_BUCKETS: Final = 32


def partition_tree(tree: Tree, layers: str | Sequence[Sequence[str]]) -> list[tuple[str, Tree]]:
    """Split a tree into named layer parts (empty parts are dropped, order is fixed).

    ``"auto"``: ``manifests`` (dependency manifests and lock files), ``large-N`` (files of
    1 MiB or more, in up to 4 buckets) and ``files-N`` (the rest, in up to 32 buckets).
    Buckets are chosen by a hash of the placed path, so adding or editing a file changes
    only its own bucket; the bucket count is a power of two from the bytes involved, so it
    moves only when those bytes double or halve. Explicit groups: ``group-N`` per group
    (first matching group wins) and ``rest``.
    """
    named: dict[str, list[Row]] = {}
    if layers == "auto":
        large_bytes = sum(row[4] for row in tree.rows if row[4] >= LARGE_FILE)
        large_buckets = _bucket_count(large_bytes, _LARGE_BUCKET, _MAX_LARGE_BUCKETS)
        rest_bytes = sum(row[4] for row in tree.rows if row[4] < LARGE_FILE)
        rest_buckets = _bucket_count(rest_bytes, _FILES_BUCKET, _MAX_FILES_BUCKETS)
        for row in tree.rows:
            placed, _, kind, _, size, _ = row
            base = posixpath.basename(placed)
            if kind == "file" and (base in MANIFEST_NAMES or _MANIFEST_PATTERN.match(base)):
                name = "manifests"
            elif kind == "file" and size >= LARGE_FILE:
                name = f"large-{_bucket(placed, large_buckets)}"
            else:
                name = f"files-{_bucket(placed, rest_buckets)}"
            named.setdefault(name, []).append(row)
        order = ["manifests"]
        order += [f"large-{i}" for i in range(_MAX_LARGE_BUCKETS)]
        order += [f"files-{i}" for i in range(_MAX_FILES_BUCKETS)]
    else:
        rules = [IgnoreRules.from_lines(group) for group in layers]
        for row in tree.rows:
            name = next((f"group-{i}" for i, r in enumerate(rules) if r.excludes(row[0])), "rest")
            named.setdefault(name, []).append(row)
        order = [f"group-{i}" for i in range(len(rules))] + ["rest"]
    parts = []
    for name in order:
        rows = named.get(name)
        if rows:
            parts.append((name, Tree.from_rows(rows)))
    if not parts:  # an empty selection still makes one (empty) layer
        parts.append(("files-0", tree))
    return parts


def _bucket_count(total: int, target: int, cap: int) -> int:
    count = 1
    while count * 2 <= cap and total >= count * 2 * target:
        count *= 2
    return count


def _bucket(path: str, buckets: int) -> int:
    if buckets == 1:
        return 0
    digest = blake3.blake3(path.encode("utf-8", "surrogateescape")).digest(length=8)
    return int.from_bytes(digest, "big") % buckets


def hash_file(path: str, size: int) -> str:
    """blake3 of a file's bytes; big files use blake3's threads over an mmap."""
    if size >= _BIG_FILE:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(path)
        return hasher.hexdigest()
    with open(path, "rb") as handle:
        return blake3.blake3(handle.read()).hexdigest()


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
        self._caches: dict[str, _RootCache] = {}
        self._dirty: set[str] = set()
        self._started_ns = time.time_ns()

    # -- public ------------------------------------------------------------------------------

    def tree(
        self,
        source: ContextSource,
        *,
        exclude: Sequence[str] = (),
        dest_is_dir: bool = True,
        parents: bool = False,
    ) -> Tree:
        """Hash what ``source`` selects, placed as Docker's COPY places it.

        ``dest_is_dir=False`` (a single file copied to a file name) places that file at ``.``;
        ``parents=True`` (``COPY --parents``) places every entry at its path in the context.
        Raises :class:`ContextError` naming every selected path that does not exist.
        """
        context = source.context
        root = context.root
        rules, rules_id = self._rules_for(context)
        cache = self._load_cache(root)
        probes: list[str] = []
        selections: list[tuple[Selector, list[tuple[str, Entry, str | None]]]] = []
        missing: list[str] = []
        for selector in source.selectors:
            matches = self._match(context, rules, rules_id, selector, probes)
            if matches is None:
                missing.append(selector.path)
                continue
            selections.append((selector, matches))
        if missing:
            raise ContextError(root, missing).with_location(source.location or context.location)
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
            digest = self._merkle(root, cache, f"{rules_id}:dir:{base}", base, memo)
            return Tree(digest, lambda: self._rows(root, selections, exclude, dest_is_dir, parents))
        known = cache.trees.get(memo)
        if known is not None and all(cache.unchanged(p) for p in probes):
            return Tree(known, lambda: self._rows(root, selections, exclude, dest_is_dir, parents))
        tree = Tree.from_rows(self._rows(root, selections, exclude, dest_is_dir, parents))
        cache.trees[memo] = tree.digest
        self._dirty.add(root)
        return tree

    def save(self) -> None:
        """Write back every stat cache this run changed."""
        if self._stat_caches is None:
            return
        for root in sorted(self._dirty):
            self._caches[root].save(self._stat_caches, self._started_ns - _RACY_NS)
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
    ) -> list[tuple[str, Entry, str | None]] | None:
        """(path, entry, base) for what a selector brings; base is the directory the placement
        is relative to, or None for a file selected by name (it lands by its base name).

        None when the selector names nothing (an empty directory brings nothing, but exists).
        """
        if selector.kind == "glob" or selector.path == ".":
            top = self._scan(context, rules, rules_id, "", probes)
            if selector.path == ".":
                return [(path, entry, "") for path, entry in top.items()]
            pattern = glob_regex(selector.path)
            depth = selector.path.count("/")
            found: list[tuple[str, Entry, str | None]] = []
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
                return "", _DIR_ENTRY
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
    ) -> list[tuple[str, Entry, str | None]]:
        if entry[TYPE] != "dir":
            return [(path, entry, None)]
        below = self._scan(context, rules, rules_id, path, probes)
        return [(p, e, path) for p, e in below.items()]

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
                    entry = _entry(context.root, rel, st)
            seen = cache.seen[probe] = {} if entry is None else {rel: entry}
        probes.append(probe)
        return seen.get(rel)

    def _scan(
        self, context: Context, rules: IgnoreRules, rules_id: str, start: str, probes: list[str]
    ) -> dict[str, Entry]:
        """Every entry under ``start`` (not ``start`` itself) that the rules keep."""
        probe = f"{rules_id}:dir:{start}"
        probes.append(probe)
        cache = self._load_cache(context.root)
        scanned = cache.seen.get(probe)
        if scanned is not None:
            return scanned
        root = context.root
        found: dict[str, Entry] = {}
        directories: dict[str, dict[str, Entry]] = {}
        stack = [start]
        check = bool(rules)
        excludes = rules.excludes
        while stack:
            rel = stack.pop()
            prefix = f"{rel}/" if rel else ""
            here: dict[str, Entry] = {}
            directories[rel] = here
            try:
                iterator = os.scandir(os.path.join(root, rel) if rel else root)
            except NotADirectoryError:
                continue
            except PermissionError as error:
                raise ContextError(root, problem=f"cannot read {rel or '.'}: {error}") from None
            with iterator:
                for dirent in iterator:
                    path = prefix + dirent.name
                    if check and excludes(path):
                        if dirent.is_dir(follow_symlinks=False) and rules.may_include_under(path):
                            stack.append(path)
                        continue
                    st = dirent.stat(follow_symlinks=False)
                    mode = st.st_mode
                    if S_ISREG(mode):
                        here[path] = (
                            "file",
                            0o755 if mode & 0o111 else 0o644,
                            st.st_size,
                            st.st_mtime_ns,
                            st.st_ctime_ns,
                            st.st_ino,
                            "",
                        )
                    elif S_ISDIR(mode):
                        here[path] = _DIR_ENTRY
                        stack.append(path)
                    elif S_ISLNK(mode):
                        target = os.readlink(dirent.path)
                        here[path] = ("symlink", 0o777, 0, 0, 0, 0, target)
                    # sockets, fifos and devices are never build inputs
            found.update(here)
        if check and _add_missing_parents(root, start, found):
            directories = {}  # re-included files bring parents no directory listed: no shortcut
        cache.seen[probe] = found
        cache.directories[probe] = directories
        return found

    # -- hashing -----------------------------------------------------------------------------

    def _rows(
        self,
        root: str,
        selections: Sequence[tuple[Selector, list[tuple[str, Entry, str | None]]]],
        exclude: Sequence[str],
        dest_is_dir: bool,
        parents: bool = False,
    ) -> tuple[Row, ...]:
        """The tree's rows: placement, then content digests (from the cache when valid)."""
        excluded = IgnoreRules.from_lines(exclude) if exclude else None
        placed: dict[str, tuple[str, Entry]] = {}
        for _, matches in selections:
            for path, entry, base in matches:
                if parents:
                    rel = path
                elif base is None:
                    rel = "." if not dest_is_dir else posixpath.basename(path)
                else:
                    rel = path[len(base) + 1 :] if base else path
                if excluded is not None and excluded.excludes(rel):
                    continue
                placed[rel] = (path, entry)
        digests = self._digests(root, placed.values())
        return tuple(
            sorted(
                (rel, path, e[TYPE], e[MODE], e[SIZE] if e[TYPE] == "file" else 0, digests[path])
                for rel, (path, e) in placed.items()
            )
        )

    def _merkle(self, root: str, cache: _RootCache, probe: str, base: str, memo: str) -> str:
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
        before = cache.subtrees.get(memo, {})
        now: dict[str, tuple[bytes, str]] = {}
        changed = []
        for directory in deepest_first:
            old = before.get(directory)
            if old is not None and old[0] == subtree[directory]:
                now[directory] = old
            else:
                changed.append(directory)
        files = [
            (path, entry)
            for directory in changed
            for path, entry in directories[directory].items()
            if entry[TYPE] != "dir"
        ]
        contents = self._digests(root, files) if files else {}
        for directory in changed:  # deepest first: subdirectories are done before parents
            records = []
            for path, entry in directories[directory].items():
                kind = entry[TYPE]
                digest = now[path][1] if kind == "dir" else contents[path]
                size = entry[SIZE] if kind == "file" else 0
                records.append(_record(path.rpartition("/")[2], kind, entry[MODE], size, digest))
            top = directory == base
            now[directory] = (subtree[directory], _directory_digest(records, top=top))
        cache.subtrees[memo] = now
        if changed:
            self._dirty.add(root)
        return now[base][1]

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
        from concurrent.futures import ThreadPoolExecutor

        total = sum(e[SIZE] for _, e in entries)
        self._reporter.hashing_started(root, len(entries), total)
        done_files = done_bytes = 0

        def work(batch: Sequence[tuple[str, Entry]]) -> list[str]:
            out = []
            for path, entry in batch:
                try:
                    out.append(hash_file(os.path.join(root, path), entry[SIZE]))
                except OSError as error:
                    raise ContextError(root, problem=f"cannot read {path}: {error}") from None
            return out

        batches = list(_batches(entries))
        workers = min(8, (os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for batch, digests in zip(batches, pool.map(work, batches), strict=True):
                done_files += len(batch)
                done_bytes += sum(e[SIZE] for _, e in batch)
                self._reporter.hashing_progress(root, done_files, done_bytes)
                yield from digests
        self._reporter.hashing_finished(root)

    # -- stat cache --------------------------------------------------------------------------

    def _load_cache(self, root: str) -> _RootCache:
        cache = self._caches.get(root)
        if cache is None:
            cache = self._caches[root] = _RootCache.load(self._stat_caches, root)
        return cache


_STATCACHE_MAGIC: Final = b"imagedsl-statcache\n"
_MAX_TREES: Final = 256


_SHARDS: Final = 16
_MAX_MEMOS: Final = 64


def _shard(path: str) -> int:
    """The digests shard of a file: by its directory, so one edit touches one shard."""
    return zlib.crc32(path.rpartition("/")[0].encode("utf-8", "surrogateescape")) % _SHARDS


@attrs.define
class _RootCache:
    """The stat cache of one context root.

    The ``index`` is read by every plan: per probe (a directory scan or a single stat) a
    digest of what it saw last run; per selection its tree digest; and per directory copied
    whole, each subdirectory's (signature, Merkle digest). File digests (the entry each file
    had when hashed, and its content digest) live in ``digests-N`` shards by directory, read
    only for directories that changed and rewritten only where a file was hashed.
    """

    root: str
    source: StatCacheStore | None
    signatures: dict[str, bytes]
    trees: dict[str, str]
    subtrees: dict[str, dict[str, tuple[bytes, str]]]
    #: What this run's probes saw, all together and (for scans) per directory.
    seen: dict[str, dict[str, Entry]] = attrs.field(factory=dict)
    directories: dict[str, dict[str, dict[str, Entry]]] = attrs.field(factory=dict)
    _signatures_now: dict[str, bytes] = attrs.field(factory=dict)
    _directory_signatures: dict[str, dict[str, bytes]] = attrs.field(factory=dict)
    _shards: dict[int, dict[str, tuple[Entry, str]]] = attrs.field(factory=dict)
    _dirty_shards: set[int] = attrs.field(factory=set)

    @classmethod
    def load(cls, source: StatCacheStore | None, root: str) -> _RootCache:
        """Read the index; anything damaged reads as empty (a re-read, nothing worse)."""
        index = _unpack(source.load_stat_cache(root, "index") if source else None, root)
        if not (
            isinstance(index, tuple)
            and len(index) == 3
            and all(isinstance(part, dict) for part in index)
        ):
            return cls(root, source, {}, {}, {})
        return cls(root, source, index[0], index[1], index[2])

    def unchanged(self, probe: str) -> bool:
        """Whether a probe saw exactly what it saw last run."""
        return self.signature(probe) == self.signatures.get(probe)

    def directory_signatures(self, probe: str) -> dict[str, bytes]:
        """For a scan: a digest of each directory's own entries (names, types, stat values)."""
        found = self._directory_signatures.get(probe)
        if found is None:
            # Format 2 has no back-references, whose use depends on reference counts: equal
            # entries always give equal bytes.
            found = {
                directory: blake3.blake3(marshal.dumps(entries, 2)).digest()
                for directory, entries in self.directories[probe].items()
            }
            self._directory_signatures[probe] = found
        return found

    def signature(self, probe: str) -> bytes:
        """A digest of what a probe saw this run."""
        found = self._signatures_now.get(probe)
        if found is None:
            if self.directories.get(probe):
                joined = b"".join(self.directory_signatures(probe).values())
                found = blake3.blake3(joined).digest()
            else:
                found = blake3.blake3(marshal.dumps(self.seen[probe], 2)).digest()
            self._signatures_now[probe] = found
        return found

    def shard_of(self, path: str) -> dict[str, tuple[Entry, str]]:
        """The digests shard holding ``path``, read on first use."""
        number = _shard(path)
        shard = self._shards.get(number)
        if shard is None:
            part = f"digests-{number}"
            data = self.source.load_stat_cache(self.root, part) if self.source else None
            loaded = _unpack(data, self.root)
            shard = self._shards[number] = loaded if isinstance(loaded, dict) else {}
        return shard

    def remember(self, path: str, entry: Entry, digest: str) -> None:
        """Note a file's content digest for the entry it had when hashed."""
        self.shard_of(path)[path] = (entry, digest)
        self._dirty_shards.add(_shard(path))

    def save(self, target: StatCacheStore, racy_after_ns: int) -> None:
        """Write what changed. Racily clean files (changed within the last tick before this
        run began) are left out, with the probes and directories that saw them, so the next
        run looks at them again however equal their stat values seem."""
        signatures = dict(self.signatures)
        racy: set[str] = set()
        for probe, seen in self.seen.items():
            late = [p for p, e in seen.items() if max(e[MTIME], e[CTIME]) >= racy_after_ns]
            if late:
                racy.update(late)
                signatures.pop(probe, None)
            else:
                signatures[probe] = self.signature(probe)
        subtrees = dict(list(self.subtrees.items())[-_MAX_MEMOS:])
        if racy:
            late_dirs = {path.rpartition("/")[0] for path in racy}
            for memo, directories in subtrees.items():
                subtrees[memo] = {
                    d: pair
                    for d, pair in directories.items()
                    if not any(late == d or late.startswith(f"{d}/") or not d for late in late_dirs)
                }
            for path in racy:
                self.shard_of(path).pop(path, None)
                self._dirty_shards.add(_shard(path))
        trees = dict(list(self.trees.items())[-_MAX_MEMOS:])
        target.save_stat_cache(self.root, "index", _pack(self.root, (signatures, trees, subtrees)))
        live = {path for seen in self.seen.values() for path in seen}
        covered = tuple(
            "" if probe.endswith(":dir:") else probe.partition(":dir:")[2] + "/"
            for probe in self.seen
            if ":dir:" in probe
        )
        for number in sorted(self._dirty_shards):
            # Forget files that a scan covering them no longer found.
            kept = {
                path: pair
                for path, pair in self._shards[number].items()
                if path in live or not path.startswith(covered)
            }
            target.save_stat_cache(self.root, f"digests-{number}", _pack(self.root, kept))


def _pack(root: str, value: Any) -> bytes:
    payload = marshal.dumps((_STATCACHE_VERSION, root, value))
    return _STATCACHE_MAGIC + blake3.blake3(payload).digest() + payload


def _unpack(data: bytes | None, root: str) -> Any:
    """The value of a saved stat-cache part, or None if it is missing, damaged or not ours."""
    if not data or not data.startswith(_STATCACHE_MAGIC):
        return None
    body = data[len(_STATCACHE_MAGIC) :]
    check, payload = body[:32], body[32:]
    if blake3.blake3(payload).digest() != check:
        return None  # torn or tampered: checked before unmarshalling anything
    try:
        version, saved_root, value = marshal.loads(payload)
    except (ValueError, EOFError, TypeError):
        return None
    if version != _STATCACHE_VERSION or saved_root != root:
        return None
    return value


def _batches(
    entries: Sequence[tuple[str, Entry]],
) -> Iterator[Sequence[tuple[str, Entry]]]:
    batch: list[tuple[str, Entry]] = []
    batch_bytes = 0
    for item in entries:
        batch.append(item)
        batch_bytes += item[1][SIZE]
        if len(batch) >= 64 or batch_bytes >= _BIG_FILE:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def _entry(root: str, rel: str, st: os.stat_result) -> Entry | None:
    mode = st.st_mode
    if S_ISREG(mode):
        fields = ("file", normalised_mode("file", mode), st.st_size, st.st_mtime_ns)
        return (*fields, st.st_ctime_ns, st.st_ino, "")
    if S_ISDIR(mode):
        return _DIR_ENTRY
    if S_ISLNK(mode):
        target = os.readlink(os.path.join(root, rel))
        return ("symlink", 0o777, 0, 0, 0, 0, target)
    return None  # sockets, fifos and devices are never build inputs


def _add_missing_parents(root: str, start: str, found: dict[str, Entry]) -> bool:
    """A file re-included by ``!`` brings its excluded parent directories, as Docker does.

    Returns whether any parent was added."""
    added = False
    for path in list(found):
        parent = posixpath.dirname(path)
        while parent and parent != start and parent not in found:
            entry = _entry(root, parent, os.lstat(os.path.join(root, parent)))
            if entry is not None:
                found[parent] = entry
                added = True
            parent = posixpath.dirname(parent)
    return added

"""Build contexts: which files a step selects, and the tree digest of exactly those files.

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
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, Protocol

import attrs
import blake3

from imagedsl._ignore import IgnoreRules
from imagedsl.errors import ContextError, SourceLocation, StepArgumentError
from imagedsl.steps import caller_location, check_str, check_str_seq

if TYPE_CHECKING:
    from imagedsl.reporting import Reporter

SelectorKind = Literal["any", "file", "dir", "glob"]
EntryType = Literal["file", "dir", "symlink"]

#: Files at least this big are hashed with blake3's own threads over an mmap.
_BIG_FILE: Final = 4 << 20
#: A file changed this recently may change again within one timestamp tick unnoticed; such
#: entries are hashed but not trusted from the stat cache next time (git's "racy clean").
_RACY_NS: Final = 50_000_000
_STATCACHE_VERSION: Final = 1


@attrs.frozen
class Selector:
    """One path, directory or glob selected from a context, relative to its root."""

    path: str
    kind: SelectorKind = "any"


@attrs.frozen
class Context:
    """A directory of build inputs and the rules that leave files out of it.

    ``ignore`` patterns use ``.dockerignore`` syntax (``**``, ``!`` exceptions, last match
    wins); with ``dockerignore=True`` the root's ``.dockerignore`` is read first and
    ``ignore`` is applied after it.
    """

    root: str
    ignore: tuple[str, ...] = ()
    dockerignore: bool = False
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)

    def file(self, path: str) -> ContextSource:
        """Select one file (``COPY requirements.txt /app/``)."""
        return self._select("file", path)

    def dir(self, path: str) -> ContextSource:
        """Select a directory; its *contents* are copied, as ``COPY app /app/app`` does."""
        return self._select("dir", path)

    def glob(self, pattern: str) -> ContextSource:
        """Select what a Dockerfile-style glob matches (``*`` never crosses ``/``)."""
        check_str("glob", "pattern", pattern)
        _glob_regex(pattern)  # refuse a malformed pattern where it was written
        selector = Selector(_clean_rel("glob", pattern), "glob")
        return ContextSource(self, (selector,), caller_location())

    def select(self, *paths: str) -> ContextSource:
        """Select several files or directories at once (``COPY a.txt b/ /dest/``)."""
        if not paths:
            raise StepArgumentError("select", "paths", "must name at least one path")
        selectors = tuple(Selector(_clean_rel("select", p), "any") for p in paths)
        return ContextSource(self, selectors, caller_location())

    def _select(self, kind: SelectorKind, path: str) -> ContextSource:
        return ContextSource(self, (Selector(_clean_rel(kind, path), kind),), caller_location())

    def as_source(self) -> ContextSource:
        """The whole context, as ``COPY . /dest`` selects it."""
        return ContextSource(self, (Selector(".", "dir"),), caller_location())

    def rules(self) -> IgnoreRules:
        """The effective ignore rules (reads ``.dockerignore`` when asked to)."""
        lines: list[str] = []
        if self.dockerignore:
            path = Path(self.root, ".dockerignore")
            try:
                lines.extend(path.read_text(encoding="utf-8").splitlines())
            except FileNotFoundError:
                raise ContextError(
                    self.root, problem="dockerignore=True but no .dockerignore"
                ) from None
        lines.extend(self.ignore)
        return IgnoreRules.from_lines(lines)


@attrs.frozen
class ContextSource:
    """Files selected from a context: what a COPY, ADD or bind mount reads."""

    context: Context
    selectors: tuple[Selector, ...]
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)

    def describe_paths(self) -> list[str]:
        """The selected paths as a Dockerfile would spell them."""
        return [s.path for s in self.selectors]


def make_context(
    path: str | os.PathLike[str],
    *,
    ignore: Sequence[str] = (),
    dockerignore: bool = False,
    location: SourceLocation | None,
) -> Context:
    """Make a context; a relative path is taken from the directory of the calling file."""
    text = os.fspath(path)
    check_str("context", "path", text)
    patterns = check_str_seq("context", "ignore", ignore)
    IgnoreRules.from_lines(patterns)  # refuse a bad pattern at the line that wrote it
    if not isinstance(dockerignore, bool):
        raise StepArgumentError("context", "dockerignore", "must be a bool")
    base = Path.cwd()
    if location is not None and not location.file.startswith("<"):
        base = Path(location.file).resolve().parent
    root = (base / text).resolve()
    return Context(str(root), patterns, dockerignore, location)


def _clean_rel(step: str, path: object) -> str:
    text = check_str(step, "path", path)
    if text.startswith("/"):
        text = text.lstrip("/")  # Docker reads /x in a COPY source as relative to the context
    cleaned = posixpath.normpath(text) if text else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise StepArgumentError(step, "path", f"leaves the build context: {path!r}")
    return cleaned


# -- scanning and hashing ---------------------------------------------------------------------


class StatCacheStore(Protocol):
    """Where stat caches persist between runs (the store implements it)."""

    def load_stat_cache(self, root: str) -> bytes | None:
        """The saved stat cache of a context root, or None."""

    def save_stat_cache(self, root: str, data: bytes) -> None:
        """Replace the stat cache of a context root, atomically."""


class Entry(NamedTuple):
    """One file, directory or symlink found in a context (a tuple: scans make 20,000s)."""

    path: str
    type: EntryType
    mode: int
    size: int
    #: What the stat cache compares: (size, mtime_ns, ctime_ns, inode).
    signature: tuple[int, int, int, int]
    target: str


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
    """The files a source selects, placed relative to the destination directory."""

    digest: str
    rows: tuple[Row, ...] = attrs.field(eq=False, repr=False)

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> Tree:
        """A tree of rows, with its digest."""
        ordered = tuple(sorted(rows))
        return cls(tree_digest(ordered), ordered)

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


def normalised_mode(entry_type: EntryType, st_mode: int) -> int:
    """Git-like modes: a checkout's umask must not change a key."""
    if entry_type == "file":
        return 0o755 if st_mode & 0o111 else 0o644
    return 0o755 if entry_type == "dir" else 0o777


def tree_digest(rows: Iterable[Row]) -> str:
    """blake3 over the rows sorted by placed path (code point order; NUL never in paths)."""
    body = "".join(
        f"{placed}\0{kind}\0{mode:o}\0{size}\0{digest}\0"
        for placed, _, kind, mode, size, digest in sorted(rows)
    )
    return blake3.blake3(
        b"imagedsl.tree.v1\0" + body.encode("utf-8", "surrogateescape")
    ).hexdigest()


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

    Scans are memoised per (context, directory); each root's stat cache is read once and
    written back by :meth:`save` when this run learned something. The scan and the cache
    check are the warm path of every plan, so they work on plain tuples.
    """

    def __init__(self, stat_caches: StatCacheStore | None, reporter: Reporter) -> None:
        self._stat_caches = stat_caches
        self._reporter = reporter
        self._scans: dict[tuple[Context, str], dict[str, Entry]] = {}
        self._rules: dict[Context, IgnoreRules] = {}
        self._caches: dict[str, dict[str, tuple[tuple[int, int, int, int], str]]] = {}
        self._dirty: set[str] = set()
        self._started_ns = time.time_ns()

    # -- public ------------------------------------------------------------------------------

    def tree(
        self, source: ContextSource, *, exclude: Sequence[str] = (), dest_is_dir: bool = True
    ) -> Tree:
        """Hash what ``source`` selects, placed as Docker's COPY places it.

        ``dest_is_dir=False`` (a single file copied to a file name) places that file at ``.``.
        Raises :class:`ContextError` naming every selected path that does not exist.
        """
        context = source.context
        rules = self._rules_for(context)
        excluded = IgnoreRules.from_lines(exclude) if exclude else None
        placed: dict[str, Entry] = {}
        missing: list[str] = []
        for selector in source.selectors:
            matches = self._match(context, rules, selector)
            if not matches:
                missing.append(selector.path)
                continue
            for entry, base in matches:
                if base is None:
                    # A file selected by name: at the destination itself, or by its name in it.
                    rel = "." if not dest_is_dir else posixpath.basename(entry.path)
                else:
                    rel = entry.path[len(base) + 1 :] if base else entry.path
                if excluded is not None and excluded.excludes(rel):
                    continue
                placed[rel] = entry
        if missing:
            raise ContextError(context.root, missing).with_location(
                source.location or context.location
            )
        digests = self._digests(context.root, placed.values())
        rows = [
            (rel, e.path, e.type, e.mode, e.size if e.type == "file" else 0, digests[e.path])
            for rel, e in placed.items()
        ]
        return Tree.from_rows(rows)

    def save(self) -> None:
        """Write back every stat cache this run changed."""
        if self._stat_caches is None:
            return
        for root in sorted(self._dirty):
            payload = marshal.dumps((_STATCACHE_VERSION, root, self._caches[root]))
            check = blake3.blake3(payload).digest()
            self._stat_caches.save_stat_cache(root, _STATCACHE_MAGIC + check + payload)
        self._dirty.clear()

    # -- selection ---------------------------------------------------------------------------

    def _rules_for(self, context: Context) -> IgnoreRules:
        rules = self._rules.get(context)
        if rules is None:
            if not os.path.isdir(context.root):
                raise ContextError(context.root, problem="is not a directory").with_location(
                    context.location
                )
            rules = self._rules[context] = context.rules()
        return rules

    def _match(
        self, context: Context, rules: IgnoreRules, selector: Selector
    ) -> list[tuple[Entry, str | None]]:
        """Entries a selector brings, each with the directory its placement is relative to.

        None marks a file selected by name: it lands in the destination by its base name.
        """
        if selector.kind == "glob":
            pattern = _glob_regex(selector.path)
            depth = selector.path.count("/")
            top = self._scan(context, rules, "")
            found: list[tuple[Entry, str | None]] = []
            for path in sorted(top):
                if path.count("/") == depth and pattern.match(path):
                    found.extend(self._expand(context, rules, top[path]))
            return found
        if selector.path == ".":
            return [(e, "") for e in self._scan(context, rules, "").values()]
        entry = self._stat_one(context, rules, selector.path)
        if entry is None:
            return []
        if selector.kind == "file" and entry.type == "dir":
            return []
        if selector.kind == "dir" and entry.type != "dir":
            return []
        return self._expand(context, rules, entry)

    def _expand(
        self, context: Context, rules: IgnoreRules, entry: Entry
    ) -> list[tuple[Entry, str | None]]:
        if entry.type != "dir":
            return [(entry, None)]
        below = self._scan(context, rules, entry.path)
        return [(e, entry.path) for e in below.values()]

    def _stat_one(self, context: Context, rules: IgnoreRules, rel: str) -> Entry | None:
        if rules.excludes(rel):
            return None
        try:
            st = os.lstat(os.path.join(context.root, rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _entry(context.root, rel, st)

    def _scan(self, context: Context, rules: IgnoreRules, start: str) -> dict[str, Entry]:
        """Every entry under ``start`` (not ``start`` itself) that the rules keep."""
        memo_key = (context, start)
        scanned = self._scans.get(memo_key)
        if scanned is not None:
            return scanned
        root = context.root
        found: dict[str, Entry] = {}
        stack = [start]
        check = bool(rules)
        excludes = rules.excludes
        while stack:
            rel = stack.pop()
            prefix = f"{rel}/" if rel else ""
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
                        found[path] = Entry(
                            path,
                            "file",
                            0o755 if mode & 0o111 else 0o644,
                            st.st_size,
                            (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino),
                            "",
                        )
                    elif S_ISDIR(mode):
                        found[path] = Entry(path, "dir", 0o755, 0, (0, 0, 0, 0), "")
                        stack.append(path)
                    elif S_ISLNK(mode):
                        target = os.readlink(dirent.path)
                        found[path] = Entry(path, "symlink", 0o777, 0, (0, 0, 0, 0), target)
                    # sockets, fifos and devices are never build inputs
        if check:
            _add_missing_parents(root, start, found)
        self._scans[memo_key] = found
        return found

    # -- hashing -----------------------------------------------------------------------------

    def _digests(self, root: str, entries: Iterable[Entry]) -> dict[str, str]:
        """Content digests of ``entries`` (file bytes, symlink targets; dirs have none)."""
        cache = self._load_cache(root)
        digests: dict[str, str] = {}
        todo: list[Entry] = []
        for entry in entries:
            kind = entry.type
            if kind == "file":
                cached = cache.get(entry.path)
                if cached is not None and cached[0] == entry.signature:
                    digests[entry.path] = cached[1]
                else:
                    todo.append(entry)
            elif kind == "symlink":
                digests[entry.path] = blake3.blake3(
                    entry.target.encode("utf-8", "surrogateescape")
                ).hexdigest()
            else:
                digests[entry.path] = ""
        if todo:
            racy = self._started_ns - _RACY_NS
            for entry, digest in zip(todo, self._hash_files(root, todo), strict=True):
                digests[entry.path] = digest
                _, mtime_ns, ctime_ns, _ = entry.signature
                if mtime_ns < racy and ctime_ns < racy:
                    cache[entry.path] = (entry.signature, digest)
                else:
                    cache.pop(entry.path, None)
            self._dirty.add(root)
        return digests

    def _hash_files(self, root: str, entries: Sequence[Entry]) -> Iterator[str]:
        from concurrent.futures import ThreadPoolExecutor

        total = sum(e.size for e in entries)
        self._reporter.hashing_started(root, len(entries), total)
        done_files = done_bytes = 0

        def work(batch: Sequence[Entry]) -> list[str]:
            out = []
            for entry in batch:
                try:
                    out.append(hash_file(os.path.join(root, entry.path), entry.size))
                except OSError as error:
                    raise ContextError(root, problem=f"cannot read {entry.path}: {error}") from None
            return out

        batches = list(_batches(entries))
        workers = min(8, (os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for batch, digests in zip(batches, pool.map(work, batches), strict=True):
                done_files += len(batch)
                done_bytes += sum(e.size for e in batch)
                self._reporter.hashing_progress(root, done_files, done_bytes)
                yield from digests
        self._reporter.hashing_finished(root)

    # -- stat cache --------------------------------------------------------------------------

    def _load_cache(self, root: str) -> dict[str, tuple[tuple[int, int, int, int], str]]:
        cache = self._caches.get(root)
        if cache is None:
            data = self._stat_caches.load_stat_cache(root) if self._stat_caches else None
            cache = self._caches[root] = _parse_stat_cache(data, root)
        return cache


_STATCACHE_MAGIC: Final = b"imagedsl-statcache\n"


def _parse_stat_cache(
    data: bytes | None, root: str
) -> dict[str, tuple[tuple[int, int, int, int], str]]:
    """The entries of a saved stat cache; anything damaged reads as empty (a re-read)."""
    if not data or not data.startswith(_STATCACHE_MAGIC):
        return {}
    body = data[len(_STATCACHE_MAGIC) :]
    check, payload = body[:32], body[32:]
    if blake3.blake3(payload).digest() != check:
        return {}  # torn or tampered: checked before unmarshalling anything
    try:
        version, saved_root, entries = marshal.loads(payload)
    except (ValueError, EOFError, TypeError):
        return {}
    if version != _STATCACHE_VERSION or saved_root != root or not isinstance(entries, dict):
        return {}
    return entries


def _batches(entries: Sequence[Entry]) -> Iterator[Sequence[Entry]]:
    batch: list[Entry] = []
    batch_bytes = 0
    for entry in entries:
        batch.append(entry)
        batch_bytes += entry.size
        if len(batch) >= 64 or batch_bytes >= _BIG_FILE:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def _entry(root: str, rel: str, st: os.stat_result) -> Entry | None:
    mode = st.st_mode
    if S_ISREG(mode):
        signature = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        return Entry(rel, "file", normalised_mode("file", mode), st.st_size, signature, "")
    if S_ISDIR(mode):
        return Entry(rel, "dir", 0o755, 0, (0, 0, 0, 0), "")
    if S_ISLNK(mode):
        target = os.readlink(os.path.join(root, rel))
        return Entry(rel, "symlink", 0o777, 0, (0, 0, 0, 0), target)
    return None  # sockets, fifos and devices are never build inputs


def _add_missing_parents(root: str, start: str, found: dict[str, Entry]) -> None:
    """A file re-included by ``!`` brings its excluded parent directories, as Docker does."""
    for path in list(found):
        parent = posixpath.dirname(path)
        while parent and parent != start and parent not in found:
            entry = _entry(root, parent, os.lstat(os.path.join(root, parent)))
            if entry is not None:
                found[parent] = entry
            parent = posixpath.dirname(parent)


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a Go ``filepath.Match`` pattern (what COPY globs use) to a regex."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise StepArgumentError("glob", "pattern", f"has an unclosed '[': {pattern!r}")
            body = pattern[i + 1 : end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")

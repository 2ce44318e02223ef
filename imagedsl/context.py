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

import json
import os
import posixpath
import re
import stat
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Protocol

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

    def load_stat_cache(self, root: str) -> str | None:
        """The saved stat cache of a context root, or None."""

    def save_stat_cache(self, root: str, text: str) -> None:
        """Replace the stat cache of a context root, atomically."""


@attrs.frozen(kw_only=True)
class Entry:
    """One file, directory or symlink of a context, with what the stat cache compares."""

    path: str
    type: EntryType
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    target: str = ""


@attrs.frozen(kw_only=True)
class TreeEntry:
    """One entry of a tree: where it is placed under the destination and what it holds."""

    source: str
    placed: str
    type: EntryType
    mode: int
    size: int
    digest: str

    def record(self) -> bytes:
        """Canonical bytes of this entry in the tree digest (NUL never occurs in paths)."""
        return f"{self.placed}\0{self.type}\0{self.mode:o}\0{self.size}\0{self.digest}\0".encode(
            "utf-8", "surrogateescape"
        )


@attrs.frozen(kw_only=True)
class Tree:
    """The files a source selects, placed relative to the destination directory."""

    digest: str
    entries: tuple[TreeEntry, ...] = attrs.field(eq=False, repr=False)

    @property
    def size(self) -> int:
        """Total bytes of regular files."""
        return sum(e.size for e in self.entries if e.type == "file")

    def manifest(self) -> dict[str, list[object]]:
        """Source path -> (type, mode, size, digest): what miss explanations diff."""
        return {e.source: [e.type, e.mode, e.size, e.digest] for e in self.entries}


def normalised_mode(entry_type: EntryType, st_mode: int) -> int:
    """Git-like modes: a checkout's umask must not change a key."""
    if entry_type == "file":
        return 0o755 if st_mode & 0o111 else 0o644
    return 0o755 if entry_type == "dir" else 0o777


def tree_digest(entries: Iterable[TreeEntry]) -> str:
    """blake3 over the entries sorted by placed path."""
    hasher = blake3.blake3()
    hasher.update(b"imagedsl.tree.v1\0")
    for entry in sorted(entries, key=lambda e: e.placed.encode("utf-8", "surrogateescape")):
        hasher.update(entry.record())
    return hasher.hexdigest()


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
    named: dict[str, list[TreeEntry]] = {}
    if layers == "auto":
        large = [e for e in tree.entries if e.type == "file" and e.size >= LARGE_FILE]
        large_buckets = _bucket_count(sum(e.size for e in large), _LARGE_BUCKET, _MAX_LARGE_BUCKETS)
        rest_bytes = sum(e.size for e in tree.entries if e.size < LARGE_FILE)
        rest_buckets = _bucket_count(rest_bytes, _FILES_BUCKET, _MAX_FILES_BUCKETS)
        for entry in tree.entries:
            base = posixpath.basename(entry.placed)
            if entry.type == "file" and (base in MANIFEST_NAMES or _MANIFEST_PATTERN.match(base)):
                name = "manifests"
            elif entry.type == "file" and entry.size >= LARGE_FILE:
                name = f"large-{_bucket(entry.placed, large_buckets)}"
            else:
                name = f"files-{_bucket(entry.placed, rest_buckets)}"
            named.setdefault(name, []).append(entry)
        order = ["manifests"]
        order += [f"large-{i}" for i in range(_MAX_LARGE_BUCKETS)]
        order += [f"files-{i}" for i in range(_MAX_FILES_BUCKETS)]
    else:
        rules = [IgnoreRules.from_lines(group) for group in layers]
        for entry in tree.entries:
            name = next(
                (f"group-{i}" for i, r in enumerate(rules) if r.excludes(entry.placed)), "rest"
            )
            named.setdefault(name, []).append(entry)
        order = [f"group-{i}" for i in range(len(rules))] + ["rest"]
    parts = []
    for name in order:
        entries = named.get(name)
        if entries:
            parts.append((name, Tree(digest=tree_digest(entries), entries=tuple(entries))))
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

    Scans are memoised per (root, rules) and directory, and each root's stat cache is read
    once and written back (atomically, through ``store``) by :meth:`save`.
    """

    def __init__(self, stat_caches: StatCacheStore | None, reporter: Reporter) -> None:
        self._stat_caches = stat_caches
        self._reporter = reporter
        self._scans: dict[tuple[Context, str], dict[str, Entry]] = {}
        self._rules: dict[Context, IgnoreRules] = {}
        self._caches: dict[str, dict[str, list[object]]] = {}
        self._dirty: set[str] = set()
        self._digests: dict[tuple[str, str], str] = {}
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
        placed: dict[str, tuple[Entry, str]] = {}
        missing: list[str] = []
        for selector in source.selectors:
            matches = self._match(context, rules, selector)
            if not matches:
                missing.append(selector.path)
                continue
            for entry, base in matches:
                if not dest_is_dir and entry.type != "dir" and base is None:
                    rel = "."  # one file copied to a file name
                elif base is None:
                    rel = posixpath.basename(entry.path)
                else:
                    rel = entry.path[len(base) + 1 :] if base else entry.path
                if excluded is not None and excluded.excludes(rel):
                    continue
                placed[rel] = (entry, entry.path)
        if missing:
            raise ContextError(context.root, missing).with_location(
                source.location or context.location
            )
        entries = self._hash_entries(context.root, placed)
        return Tree(digest=tree_digest(entries), entries=tuple(entries))

    def save(self) -> None:
        """Write back every stat cache this run changed."""
        if self._stat_caches is None:
            return
        for root in sorted(self._dirty):
            payload = {"v": _STATCACHE_VERSION, "root": root, "entries": self._caches[root]}
            self._stat_caches.save_stat_cache(root, json.dumps(payload, separators=(",", ":")))
        self._dirty.clear()

    # -- selection ---------------------------------------------------------------------------

    def _rules_for(self, context: Context) -> IgnoreRules:
        rules = self._rules.get(context)
        if rules is None:
            root = Path(context.root)
            if not root.is_dir():
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
            whole: list[tuple[Entry, str | None]] = [
                (e, "") for e in self._scan(context, rules, "").values()
            ]
            return whole
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
                    is_dir = dirent.is_dir(follow_symlinks=False)
                    if check and rules.excludes(path):
                        if is_dir and rules.may_include_under(path):
                            stack.append(path)
                        continue
                    entry = _entry(root, path, dirent.stat(follow_symlinks=False))
                    if entry is None:
                        continue
                    found[path] = entry
                    if is_dir:
                        stack.append(path)
        if check:
            _add_missing_parents(root, start, found)
        self._scans[memo_key] = found
        return found

    # -- hashing -----------------------------------------------------------------------------

    def _hash_entries(self, root: str, placed: Mapping[str, tuple[Entry, str]]) -> list[TreeEntry]:
        cache = self._load_cache(root)
        todo: list[Entry] = []
        digests: dict[str, str] = {}
        for entry, _ in placed.values():
            if entry.type == "symlink":
                digests[entry.path] = blake3.blake3(
                    entry.target.encode("utf-8", "surrogateescape")
                ).hexdigest()
            elif entry.type == "file":
                known = self._digests.get((root, entry.path))
                if known is None:
                    known = _cached_digest(cache.get(entry.path), entry)
                if known is None:
                    todo.append(entry)
                else:
                    digests[entry.path] = known
        if todo:
            for entry, digest in zip(todo, self._hash_files(root, todo), strict=True):
                digests[entry.path] = digest
                if max(entry.mtime_ns, entry.ctime_ns) < self._started_ns - _RACY_NS:
                    cache[entry.path] = [
                        entry.size,
                        entry.mtime_ns,
                        entry.ctime_ns,
                        entry.ino,
                        digest,
                    ]
                else:
                    cache.pop(entry.path, None)
                self._dirty.add(root)
        for path, digest in digests.items():
            self._digests[(root, path)] = digest
        return [
            TreeEntry(
                source=entry.path,
                placed=rel,
                type=entry.type,
                mode=entry.mode,
                size=entry.size if entry.type == "file" else 0,
                digest=digests.get(entry.path, ""),
            )
            for rel, (entry, _) in placed.items()
        ]

    def _hash_files(self, root: str, entries: Sequence[Entry]) -> Iterator[str]:
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

    def _load_cache(self, root: str) -> dict[str, list[object]]:
        cache = self._caches.get(root)
        if cache is not None:
            return cache
        cache = {}
        text = self._stat_caches.load_stat_cache(root) if self._stat_caches else None
        if text is not None:
            try:
                payload = json.loads(text)
                if payload.get("v") == _STATCACHE_VERSION and payload.get("root") == root:
                    cache = dict(payload["entries"])
            except (ValueError, AttributeError, KeyError, TypeError):
                cache = {}  # a damaged stat cache only costs re-reading files
        self._caches[root] = cache
        return cache


def _cached_digest(cached: list[object] | None, entry: Entry) -> str | None:
    if (
        cached is not None
        and len(cached) == 5
        and cached[0] == entry.size
        and cached[1] == entry.mtime_ns
        and cached[2] == entry.ctime_ns
        and cached[3] == entry.ino
        and isinstance(cached[4], str)
    ):
        return cached[4]
    return None


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
    if stat.S_ISREG(mode):
        kind: EntryType = "file"
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISLNK(mode):
        kind = "symlink"
    else:
        return None  # sockets, fifos and devices are never build inputs
    target = os.readlink(os.path.join(root, rel)) if kind == "symlink" else ""
    return Entry(
        path=rel,
        type=kind,
        mode=normalised_mode(kind, mode),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        ino=st.st_ino,
        target=target,
    )


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

"""Reading an image's layers in order: sizes, changes, dive's waste and efficiency, secrets.

Each layer is read once, as a stream: the tar's headers, and the bytes of small files (for
credentials). dive's measure is reproduced exactly, so the two tools agree on any image:

- a layer is a tree of the paths its entries name, with the directories those imply (an
  opaque-whiteout marker adds its directory and nothing else);
- every *leaf* of a layer's tree is one copy of its path: a file counts its size, a
  directory or link 0, a whiteout ``.wh.NAME`` counts, for a directory it deletes, the sizes
  of everything under that directory in the layers below (0 when it deletes a file);
- a path with copies in two layers or more is *wasted*, all of its copies' bytes;
- efficiency is the sum over paths of their smallest copy over the sum of all copies.

What a layer changed (added, changed, deleted) is counted against the filesystem the layers
below it make: non-directory entries that are new or replace a path, and whiteouts.

How, fast: each layer is first read on its own into a :class:`_Part` (its sizes, its
credentials, its tree), by this process or a forked worker (:func:`_read_parts`); the parts
are then put in order on the stack. A layer without whiteouts (most) goes on as sets and
maps, in bulk (:func:`_visit_bulk`); one with whiteouts entry by entry, in order, as dive
reads it (:func:`_visit`, :func:`_stack`).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import marshal
import operator
import os
import re
import select
import signal
import stat
import sys
import tempfile
from collections.abc import Generator, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import IO, Any, Final

import attrs

from imagedsl import credentials
from imagedsl._cores import cores
from imagedsl.inspect._tar import Listing, list_at, list_chunks
from imagedsl.inspect.model import InspectReport, LayerReport, LayerSecret, WastedPath
from imagedsl.inspect.sources import ImageSource, SourceLayer
from imagedsl.oci.layerstream import decompressed_chunks
from imagedsl.oci.layout import ArchiveMember
from imagedsl.oci.mediatypes import sniff_compression
from imagedsl.reporting import Reporter

WHITEOUT: Final = ".wh."
OPAQUE: Final = ".wh..wh..opq"
#: dive leaves out every ``.wh..wh.*`` name (the opaque marker is one).
_MARKER: Final = ".wh..wh."
#: What the OCI backend writes in a history entry's comment: the step and its build-file line.
_STEP_COMMENT: Final = re.compile(
    r"imagedsl (?P<step>\S+\[\d+\](?: \S+)?) (?P<file>.+):(?P<line>\d+)\Z"
)


#: The bytes of a file are read (for credentials) up to this size, unless it is source code,
#: markup or media.
_DATA_LIMIT: Final = credentials.CONTENT_LIMIT
_UNREAD: Final = credentials.UNREAD_SUFFIXES
_DIRECTORY: Final = 0x35  # "5"
_FILE_FLAGS: Final = frozenset(b"07")


class _Part:
    """What the analysis needs of one layer, read (by this process or a worker, so it is
    plain data that ``marshal`` carries): its sizes, the credentials in it, and its tree.

    A layer without whiteouts (no ``.wh.`` in any path: most layers) comes as sets and maps,
    put on the stack in bulk: ``sizes`` (each path: its last entry's size), ``dirs`` (the
    paths whose last entry is a directory), ``implied`` (directories the paths imply but no
    entry names), ``inner`` (paths that are also a parent of another path) and ``leaf_bytes``
    (the sizes of the other paths). A layer with whiteouts comes as its ``entries`` (path,
    type flag, size), read in order as dive reads them."""

    __slots__ = (
        "content_bytes", "dirs", "entries", "implied", "inner", "leaf_bytes", "secrets",
        "sizes", "total",
    )  # fmt: skip

    def __init__(self, total: int, content_bytes: int, secrets: list[tuple[str, str]]) -> None:
        self.total = total
        self.content_bytes = content_bytes
        self.secrets = secrets
        self.entries: list[tuple[str, int, int]] | None = None
        self.sizes: dict[str, int] = {}
        self.dirs: list[str] = []
        self.implied: list[str] = []
        self.inner: list[str] = []
        self.leaf_bytes = 0

    def dump(self) -> bytes:
        return marshal.dumps(tuple(getattr(self, name) for name in self.__slots__))

    @classmethod
    def load(cls, data: bytes) -> _Part:
        part = cls.__new__(cls)
        for name, value in zip(cls.__slots__, marshal.loads(data), strict=True):
            setattr(part, name, value)
        return part


def _part_of(listing: Listing) -> _Part:
    """A layer's :class:`_Part`, from its entries."""
    paths = listing.paths
    joined = "\0".join(paths)
    part = _Part(listing.total, sum(listing.sizes), _layer_secrets(listing, joined))
    if WHITEOUT in joined:  # a whiteout (or a name like one) somewhere: read in order
        part.entries = list(zip(paths, listing.kinds, listing.sizes, strict=True))
        return part
    sizes = dict(zip(paths, listing.sizes, strict=True))
    sizes.pop("", None)  # the root's entry: no path of the tree
    kinds = listing.kinds
    if len(sizes) + paths.count("") == len(paths):  # each path once: its directory entries
        dirs = set()
        at = kinds.find(_DIRECTORY)
        while at >= 0:
            dirs.add(paths[at])
            at = kinds.find(_DIRECTORY, at + 1)
        dirs.discard("")
    else:  # a path more than once: its last entry says
        last = dict(zip(paths, kinds, strict=True))
        dirs = {path for path, kind in last.items() if kind == _DIRECTORY and path}
    parents = {path.rpartition("/")[0] for path in sizes}
    inner = set()
    for parent in parents:
        while parent and parent not in inner:
            inner.add(parent)
            parent = parent.rpartition("/")[0]
    part.sizes = sizes
    part.dirs = list(dirs)  # lists: marshal sorts a set's items
    part.implied = list(inner - sizes.keys())
    part.inner = list(inner & sizes.keys())
    part.leaf_bytes = sum(sizes.values()) - sum(sizes[path] for path in part.inner)
    return part


def _layer_secrets(listing: Listing, joined: str) -> list[tuple[str, str]]:
    """(path, kind) of each credential in the layer, in entry order: only the entries whose
    path holds a hint of one (:data:`credentials.PATH_HINTS`) or whose bytes were read can
    be one."""
    paths = listing.paths
    candidates = set(listing.data)
    ends: list[int] | None = None
    for hint in credentials.PATH_HINTS:
        at = joined.find(hint)
        while at >= 0:
            if ends is None:  # where each path ends in ``joined``
                ends = list(
                    map(operator.add, itertools.accumulate(map(len, paths)), itertools.count())
                )
            index = bisect.bisect_right(ends, at)
            candidates.add(index)
            at = joined.find(hint, ends[index] + 1)
    found: list[tuple[str, str]] = []
    reported_git: set[str] = set()
    for index in sorted(candidates):
        path = paths[index]
        if not path or path.rpartition("/")[2].startswith(WHITEOUT):
            continue
        kind = credentials.path_kind(path)
        if kind == "git-directory":
            parts = path.split("/")
            root = "/".join(parts[: parts.index(".git") + 1])
            if root not in reported_git:
                reported_git.add(root)
                found.append((root, kind))
            continue
        data = listing.data.get(index)
        if kind is None and data is not None:
            kind = credentials.content_kind(path, data)
            if kind is None and not credentials.source_or_media(path):
                kind = credentials.token_in_file(data)
        if kind is not None and (listing.kinds[index] in _FILE_FLAGS or data is not None):
            found.append((path, kind))
    return found


class _Stack:
    """The filesystem the layers read so far make, as dive stacks them: each path's size,
    the paths that are directories, and (made when a whiteout first needs them) each path's
    children."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.dirs: set[str] = set()
        self._children: dict[str, set[str]] | None = None

    def children(self) -> dict[str, set[str]]:
        """Each path's children (every path's parent is on the stack)."""
        if self._children is None:
            self._children = {}
            for path in self.sizes:
                self._children.setdefault(path.rpartition("/")[0], set()).add(path)
        return self._children

    def add(self, path: str, size: int, is_dir: bool) -> None:
        if path not in self.sizes:
            parent = path.rpartition("/")[0]
            if parent and parent not in self.sizes:
                self.add(parent, 0, False)
            if self._children is not None:
                self._children.setdefault(parent, set()).add(path)
        self.sizes[path] = size
        if is_dir:
            self.dirs.add(path)
        else:
            self.dirs.discard(path)

    def add_layer(self, part: _Part) -> None:
        """Put a layer without whiteouts on the stack: each of its paths replaces what the
        path held (an implied directory as a size-0 non-directory, as dive has it)."""
        if self._children is not None:
            for path in (part.sizes.keys() | part.implied) - self.sizes.keys():
                self._children.setdefault(path.rpartition("/")[0], set()).add(path)
        self.sizes.update(part.sizes)
        self.sizes.update(dict.fromkeys(part.implied, 0))
        self.dirs -= part.sizes.keys() & self.dirs  # (goes over the smaller of the two)
        self.dirs.difference_update(part.implied)
        self.dirs.update(part.dirs)

    def remove(self, path: str) -> None:
        if path not in self.sizes:
            return
        children = self.children()
        pending = [path]
        while pending:
            current = pending.pop()
            self.sizes.pop(current, None)
            self.dirs.discard(current)
            pending.extend(children.pop(current, ()))
        children.get(path.rpartition("/")[0], set()).discard(path)

    def subtree_size(self, path: str) -> int:
        if path not in self.dirs:
            return 0
        children = self.children()
        total = 0
        pending = [path]
        while pending:
            current = pending.pop()
            total += self.sizes[current]
            pending.extend(children.get(current, ()))
        return total


class _Copies:
    """dive's record of each path's copies (one per layer whose tree has it as a leaf, or
    deletes it): the layer of each path's first copy, the copies of the paths with more than
    one, and the bytes of all copies."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}
        #: Per layer: the size of each path whose first copy is there.
        self.sizes: list[dict[str, int]] = []
        #: Paths with two copies or more: (layer, size) of each, in order.
        self.more: dict[str, list[tuple[int, int]]] = {}
        self.total = 0

    def add(self, path: str, size: int, layer: int) -> None:
        """One more copy of ``path`` (layers in order)."""
        self.total += size
        copies = self.more.get(path)
        if copies is not None:
            copies.append((layer, size))
            return
        first = self.first.get(path)
        if first is None:
            self.first[path] = layer
            self.sizes[layer][path] = size
        else:
            self.more[path] = [(first, self.sizes[first][path]), (layer, size)]

    def add_layer(
        self, leaves: AbstractSet[str], sizes: dict[str, int], layer: int, leaf_bytes: int
    ) -> None:
        """A copy of each of ``leaves`` (sizes in ``sizes``) in the layer ``layer``."""
        self.sizes[layer] = sizes
        self.total += leaf_bytes
        for path in leaves & self.first.keys():
            copies = self.more.get(path)
            if copies is None:
                first = self.first[path]
                self.more[path] = [(first, self.sizes[first][path]), (layer, sizes[path])]
            else:
                copies.append((layer, sizes[path]))
        # A path copied again now has its copies in ``more``, which is read first: its
        # first layer is not read again, and may be overwritten.
        self.first.update(dict.fromkeys(leaves, layer))

    def smallest(self) -> int:
        """The sum over paths of their smallest copy."""
        total = self.total
        for copies in self.more.values():
            smallest = -1
            for _, size in copies:
                total -= size
                if smallest < 0 or size < smallest:
                    smallest = size
            total += smallest
        return total


def analyse(image: ImageSource, reporter: Reporter | None = None) -> InspectReport:
    """Read every layer of ``image`` and report (see the module docstring)."""
    reporter = reporter or Reporter()
    stack = _Stack()
    copies = _Copies()
    history = _layer_history(image.config, len(image.layers))
    layers: list[LayerReport] = []
    found: list[tuple[str, int, str]] = []
    parts: list[_Part] = []
    with contextlib.closing(_read_parts(image.layers)) as parts_read:
        for index, (layer, part) in enumerate(zip(image.layers, parts_read, strict=True)):
            label = f"layer {index + 1}/{len(image.layers)}"
            reporter.step_started(label)
            copies.sizes.append({})
            if part.entries is None:
                changes = _visit_bulk(part, index, stack, copies)
            else:
                tree = _layer_tree(part.entries)
                changes = _visit(tree, index, stack, copies)
                _stack(tree, stack)
            found.extend((path, index, kind) for path, kind in part.secrets)
            parts.append(part)
            created_by, comment = history[index]
            step, file, line = _step_of(comment)
            layers.append(
                LayerReport(
                    index=index,
                    digest=layer.digest,
                    diff_id=layer.diff_id,
                    media_type=layer.media_type,
                    compressed_bytes=layer.size,
                    uncompressed_bytes=part.total,
                    content_bytes=part.content_bytes,
                    created_by=created_by,
                    step=step,
                    file=file,
                    line=line,
                    added=changes[0],
                    changed=changes[1],
                    deleted=changes[2],
                )
            )
            reporter.step_finished(label, "read")
    per_layer = [0] * len(layers)
    ranked = []
    wasted_bytes = 0
    for path, more in copies.more.items():
        in_layers, sizes = zip(*more, strict=True)
        total = sum(sizes)
        wasted_bytes += total
        for layer_index, size in more:
            per_layer[layer_index] += size
        if total > 0:
            ranked.append((-total, "/" + path, in_layers))
    ranked.sort()  # by bytes, most first, then path (paths differ: layers are not compared)
    wasted = [WastedPath(path, -negative, in_layers) for negative, path, in_layers in ranked]
    layers = [attrs.evolve(layer, wasted_bytes=per_layer[layer.index]) for layer in layers]
    total = copies.total
    smallest = copies.smallest()
    hidden_by = [_hiding(part) for part in parts] if found else []
    secrets = tuple(
        LayerSecret("/" + path, index, kind, _hidden_later(path, index, hidden_by))
        for path, index, kind in found
    )
    return InspectReport(
        image=image.reference,
        manifest_digest=image.manifest_digest,
        layers=tuple(layers),
        size_bytes=sum(layer.content_bytes for layer in layers),
        wasted_bytes=wasted_bytes,
        efficiency=1.0 if total == 0 else smallest / total,
        wasted=tuple(wasted),
        secrets=secrets,
    )


def _visit_bulk(part: _Part, index: int, stack: _Stack, copies: _Copies) -> tuple[int, int, int]:
    """:func:`_visit` and :func:`_stack` for a layer without whiteouts, in bulk: its leaves
    are its paths that are no other path's parent, and what it adds or changes are its
    non-directory paths (changed: already on the stack)."""
    present = part.sizes.keys() & stack.sizes.keys()
    changed = len(present) - len(present.intersection(part.dirs))
    added = len(part.sizes) - len(part.dirs) - changed
    copies.add_layer(part.sizes.keys() - part.inner, part.sizes, index, part.leaf_bytes)
    stack.add_layer(part)
    return added, changed, 0


# -- reading layers ----------------------------------------------------------------------------


def _read_parts(layers: Sequence[SourceLayer]) -> Generator[_Part, None, None]:
    """Each layer's :class:`_Part`, in order: read here, or (:func:`_read_in_two`) by this
    process and a forked worker at once."""
    worker = _start_worker(layers) if _worth_forking(layers) else None
    if worker is not None:
        yield from _read_in_two(layers, *worker)
        return
    for layer in layers:
        yield _part_of(_listing_of(layer))


#: Below this many bytes of layers a second process costs more than it saves.
_FORK_BYTES: Final = 4 << 20


def _worth_forking(layers: Sequence[SourceLayer]) -> bool:
    """Fork only where it is safe and pays: ``os.fork`` exists, two CPUs, two layers (and
    not so many that their numbers fill a pipe), enough bytes, and no other thread (a forked
    child of a threaded process may deadlock)."""
    threading_module = sys.modules.get("threading")
    return (
        hasattr(os, "fork")
        and 2 <= len(layers) <= 4096
        and sum(layer.size for layer in layers) >= _FORK_BYTES
        and (threading_module is None or threading_module.active_count() == 1)
        and cores() >= 2
    )


def _start_worker(layers: Sequence[SourceLayer]) -> tuple[int, int, int, IO[bytes]] | None:
    """Fork the worker: (its pid, the pipe of layer numbers, the pipe on which it says a part
    is written, the file it writes them to); None when the system refuses a pipe, the file
    or the fork (the layers are then read here)."""
    opened: list[int] = []
    results = None
    try:
        taken, offer = os.pipe()
        opened += [taken, offer]
        os.write(offer, b"".join(index.to_bytes(4, "little") for index in range(len(layers))))
        os.close(opened.pop())
        told, tell = os.pipe()
        opened += [told, tell]
        # Closed by _read_in_two, which reads it after this returns.
        results = tempfile.TemporaryFile(prefix="imagedsl-inspect-")  # noqa: SIM115
        pid = os.fork()
    except OSError:
        for fd in opened:
            os.close(fd)
        if results is not None:
            results.close()
        return None
    if pid == 0:  # the worker: never returns
        status = 1
        try:
            os.close(told)
            for index in _numbers(taken):
                try:
                    data = _part_of(_listing_of(layers[index])).dump()
                except Exception:  # read again by the parent, which raises it
                    data = b""
                head = index.to_bytes(4, "little") + len(data).to_bytes(8, "little")
                _write_all(results.fileno(), head + data)
                os.write(tell, b".")
            status = 0
        finally:
            os._exit(status)
    os.close(tell)
    return pid, taken, told, results


def _read_in_two(
    layers: Sequence[SourceLayer], pid: int, taken: int, told: int, results: IO[bytes]
) -> Generator[_Part, None, None]:
    """Each layer's part in order, read by this process and the forked worker: the layers'
    numbers wait in the pipe ``taken`` and each process takes the next. The worker appends
    each part (marshal) to the unlinked temporary file ``results``, so it never waits for
    this process, and says so on ``told``; this process reads a layer itself whenever the
    next one in order is not there yet, so the caller's work on each layer overlaps the
    worker's reading. A layer the worker failed (or did not give, having died) is read here
    in its turn, so an error is raised as reading in order would raise it."""
    os.set_blocking(told, False)
    worker = _WorkerResults(results.fileno(), told)
    ready: dict[int, _Part | None] = {}  # None: to be read here
    reaped = False
    try:
        more_to_take = True
        for index in range(len(layers)):
            while index not in ready:
                worker.collect(ready, wait=False)
                if index in ready:
                    break
                if more_to_take:
                    mine = next(_numbers(taken), None)
                    if mine is None:
                        more_to_take = False
                        continue
                    try:
                        ready[mine] = _part_of(_listing_of(layers[mine]))
                    except Exception:  # read again in its turn, raised there
                        ready[mine] = None
                elif not worker.collect(ready, wait=True):  # the worker is gone
                    ready[index] = None
            part = ready.pop(index)
            yield part if part is not None else _part_of(_listing_of(layers[index]))
        os.waitpid(pid, 0)
        reaped = True
    finally:
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(taken)
        os.close(told)
        results.close()


class _WorkerResults:
    """The parts the worker wrote to ``fd`` (one byte on ``told`` for each)."""

    def __init__(self, fd: int, told: int) -> None:
        self._fd = fd
        self._told = told
        self._offset = 0

    def collect(self, ready: dict[int, _Part | None], *, wait: bool) -> bool:
        """Load the parts written since the last call into ``ready`` (None for a layer the
        worker failed); with ``wait``, wait for one first. False: the worker is gone."""
        if wait:
            select.select([self._told], [], [])
        try:
            news = os.read(self._told, 4096)
        except BlockingIOError:
            return True
        for _ in news:
            head = os.pread(self._fd, 12, self._offset)
            index = int.from_bytes(head[:4], "little")
            length = int.from_bytes(head[4:], "little")
            data = os.pread(self._fd, length, self._offset + 12) if length else b""
            self._offset += 12 + length
            ready[index] = _Part.load(data) if data else None
        return bool(news)


def _numbers(taken: int) -> Iterator[int]:
    """The layer numbers this process takes from the pipe, until it is empty."""
    while True:
        token = os.read(taken, 4)
        if len(token) < 4:
            return
        yield int.from_bytes(token, "little")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _listing_of(layer: SourceLayer) -> Listing:
    """A layer's entries: by position when it is an uncompressed tar in a file (nothing
    skipped is read), else from its inflated chunks."""
    with layer.open() as raw:
        where = _position_of(raw)
        if where is not None and sniff_compression(os.pread(where[0], 4, where[1])) == "none":
            return list_at(*where, data_limit=_DATA_LIMIT, unread=_UNREAD, layer=layer.digest or "")
        with contextlib.closing(_prefetched(decompressed_chunks(raw))) as chunks:
            return list_chunks(
                chunks, data_limit=_DATA_LIMIT, unread=_UNREAD, layer=layer.digest or ""
            )


def _position_of(raw: Any) -> tuple[int, int, int] | None:
    """(fd, offset, size) of a layer that is a span of a regular file, else None."""
    if isinstance(raw, ArchiveMember):
        return raw.fd, raw.offset, raw.size
    try:
        fd = raw.fileno()
        start = raw.tell()
        status = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return fd, start, status.st_size - start


_END: Final = object()


def _prefetched(chunks: Iterator[bytes], depth: int = 4) -> Generator[bytes, None, None]:
    """``chunks``, made by a thread of their own while the caller reads the ones before: isal
    inflates without the GIL, so on two cores inflating and parsing overlap."""
    if cores() < 2:
        yield from chunks
        return
    import queue
    import threading

    made: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                made.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(_END)
        except BaseException as error:  # handed to the reading thread, raised there
            put(error)

    worker = threading.Thread(target=produce, name="imagedsl-inflate", daemon=True)
    worker.start()
    try:
        while True:
            item = made.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        worker.join()


# -- a layer with whiteouts, in order as dive reads it -----------------------------------------

#: A path of a layer's tree: (its type flag, its size), or None for a directory it implies.
_Node = tuple[int, int] | None


def _layer_tree(entries: Sequence[tuple[str, int, int]]) -> dict[str, _Node]:
    """The layer's tree as dive builds it: each entry's path (the last entry of a path
    wins) and the directories it implies (None); an opaque marker implies its directory."""
    tree: dict[str, _Node] = {}
    for path, kind, size in entries:
        if not path:
            continue
        parent, _, name = path.rpartition("/")
        while parent and parent not in tree:
            tree[parent] = None
            parent = parent.rpartition("/")[0]
        if not name.startswith(_MARKER):
            tree[path] = (kind, size)
    return tree


def _visit(
    tree: Mapping[str, _Node], index: int, stack: _Stack, copies: _Copies
) -> tuple[int, int, int]:
    """Count each leaf of the layer's tree as a copy of its path; count what changed."""
    inner = {path.rpartition("/")[0] for path in tree}
    added = changed = deleted = 0
    for path, node in tree.items():
        directory, _, name = path.rpartition("/")
        if name.startswith(WHITEOUT):
            target = f"{directory}/{name[4:]}" if directory else name[4:]
            deleted += 1
            if path not in inner:
                copies.add(target, stack.subtree_size(target), index)
            continue
        if node is not None and node[0] != _DIRECTORY:
            if path in stack.sizes:
                changed += 1
            else:
                added += 1
        if path not in inner:
            copies.add(path, 0 if node is None else node[1], index)
    return added, changed, deleted


def _stack(tree: Mapping[str, _Node], stack: _Stack) -> None:
    """Put the layer on the stack as dive does: a whiteout removes its path, every other
    node of the tree (an implied directory too) replaces what the path held."""
    # Component by component ("\0" sorts before every other character of a name).
    for path in sorted(tree, key=lambda p: p.replace("/", "\0")):
        node = tree[path]
        directory, _, name = path.rpartition("/")
        if name.startswith(WHITEOUT):
            stack.remove(f"{directory}/{name[4:]}" if directory else name[4:])
        elif node is None:
            stack.add(path, 0, False)
        else:
            stack.add(path, node[1], node[0] == _DIRECTORY)


# -- secrets hidden later ----------------------------------------------------------------------

_Hiding = tuple[AbstractSet[str], AbstractSet[str], AbstractSet[str]]


def _hiding(part: _Part) -> _Hiding:
    """What a layer hides of the layers below: paths it deletes, directories it makes opaque,
    paths it writes again."""
    if part.entries is None:  # no whiteouts: it writes its paths
        return set(), set(), part.sizes.keys()
    deleted: set[str] = set()
    opaque: set[str] = set()
    written: set[str] = set()
    for path, _, _ in part.entries:
        directory, _, name = path.rpartition("/")
        if name.startswith(OPAQUE):
            opaque.add(directory)
        elif name.startswith(WHITEOUT):
            deleted.add(f"{directory}/{name[4:]}" if directory else name[4:])
        elif path:
            written.add(path)
    return deleted, opaque, written


def _hidden_later(path: str, index: int, hidden_by: Sequence[_Hiding]) -> bool:
    parts = path.split("/")
    ancestors = {"/".join(parts[:depth]) for depth in range(1, len(parts))}
    for deleted, opaque, written in hidden_by[index + 1 :]:
        if path in deleted or path in written or ancestors & deleted or ancestors & opaque:
            return True
    return False


def _layer_history(config: Mapping[str, Any], count: int) -> list[tuple[str, str]]:
    """(created_by, comment) of each layer, from the config's history (as dive pairs them:
    the entries that are not empty layers, in order)."""
    history = [h for h in config.get("history") or [] if isinstance(h, dict)]
    made = [h for h in history if not h.get("empty_layer")]
    pairs = [(str(h.get("created_by") or ""), str(h.get("comment") or "")) for h in made]
    pairs += [("(missing)", "")] * (count - len(pairs))
    return pairs[:count]


def _step_of(comment: str) -> tuple[str | None, str | None, int | None]:
    match = _STEP_COMMENT.match(comment)
    if match is None:
        return None, None, None
    return match["step"], match["file"], int(match["line"])

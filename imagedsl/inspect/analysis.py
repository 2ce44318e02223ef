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
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import stat
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from imagedsl import credentials
from imagedsl.inspect._tar import TarEntry, TarReader
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


#: A path of the stacked filesystem: (its size, whether it is a directory).
_Node = tuple[int, bool]
_IMPLIED_DIRECTORY: Final[_Node] = (0, False)


@attrs.define
class _Copies:
    """dive's record of one path: all copies' bytes, the smallest copy, the layers."""

    total: int = 0
    smallest: int = -1
    layers: list[int] = attrs.field(factory=list)
    sizes: list[int] = attrs.field(factory=list)

    def add(self, size: int, layer: int) -> None:
        self.total += size
        if self.smallest < 0 or size < self.smallest:
            self.smallest = size
        self.layers.append(layer)
        self.sizes.append(size)


def _copies_of(copies: dict[str, _Copies], path: str) -> _Copies:
    record = copies.get(path)
    if record is None:
        record = copies[path] = _Copies()
    return record


class _Stack:
    """The filesystem the layers read so far make, as dive stacks them."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self.children: dict[str, set[str]] = {}

    def add(self, path: str, node: _Node) -> None:
        if path not in self.nodes:
            parent = path.rpartition("/")[0]
            if parent and parent not in self.nodes:
                self.add(parent, _IMPLIED_DIRECTORY)
            self.children.setdefault(parent, set()).add(path)
        self.nodes[path] = node

    def remove(self, path: str) -> None:
        if path not in self.nodes:
            return
        pending = [path]
        while pending:
            current = pending.pop()
            self.nodes.pop(current, None)
            pending.extend(self.children.pop(current, ()))
        self.children.get(path.rpartition("/")[0], set()).discard(path)

    def subtree_size(self, path: str) -> int:
        node = self.nodes.get(path)
        if node is None or not node[1]:
            return 0
        total = 0
        pending = [path]
        while pending:
            current = pending.pop()
            total += self.nodes[current][0]
            pending.extend(self.children.get(current, ()))
        return total


def analyse(image: ImageSource, reporter: Reporter | None = None) -> InspectReport:
    """Read every layer of ``image`` and report (see the module docstring)."""
    reporter = reporter or Reporter()
    stack = _Stack()
    copies: dict[str, _Copies] = {}
    history = _layer_history(image.config, len(image.layers))
    layers: list[LayerReport] = []
    found: list[tuple[str, int, str]] = []
    hidden_by: list[tuple[set[str], set[str], set[str]]] = []
    with _LayerReads(image.layers) as reads:
        for index, layer in enumerate(image.layers):
            label = f"layer {index + 1}/{len(image.layers)}"
            reporter.step_started(label)
            items, total = reads.result(index)
            tree = _layer_tree(items)
            changes = _visit(tree, index, stack, copies)
            found.extend(_secrets(items, index))
            hidden_by.append(_hiding(items))
            _stack(tree, stack)
            created_by, comment = history[index]
            step, file, line = _step_of(comment)
            layers.append(
                LayerReport(
                    index=index,
                    digest=layer.digest,
                    diff_id=layer.diff_id,
                    media_type=layer.media_type,
                    compressed_bytes=layer.size,
                    uncompressed_bytes=total,
                    content_bytes=sum(item.size for item in items),
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
    for record in copies.values():
        if len(record.layers) > 1:
            for layer_index, size in zip(record.layers, record.sizes, strict=True):
                per_layer[layer_index] += size
    layers = [attrs.evolve(layer, wasted_bytes=per_layer[layer.index]) for layer in layers]
    wasted = sorted(
        (
            WastedPath("/" + path, record.total, tuple(record.layers))
            for path, record in copies.items()
            if len(record.layers) > 1 and record.total > 0
        ),
        key=lambda w: (-w.bytes, w.path),
    )
    total = sum(record.total for record in copies.values())
    smallest = sum(record.smallest for record in copies.values())
    secrets = tuple(
        LayerSecret("/" + path, index, kind, _hidden_later(path, index, hidden_by))
        for path, index, kind in found
    )
    return InspectReport(
        image=image.reference,
        manifest_digest=image.manifest_digest,
        layers=tuple(layers),
        size_bytes=sum(layer.content_bytes for layer in layers),
        wasted_bytes=sum(record.total for record in copies.values() if len(record.layers) > 1),
        efficiency=1.0 if total == 0 else smallest / total,
        wasted=tuple(wasted),
        secrets=secrets,
    )


class _LayerReads:
    """Layers read ahead, ``window`` at a time, each by a thread of its own: inflating
    (isal, without the GIL) one layer while the next is inflated and the one before is
    analysed keeps both cores busy. Each layer is opened on its own (its own file or fd), so
    reads do not share a position."""

    def __init__(self, layers: Sequence[SourceLayer]) -> None:
        import concurrent.futures

        self._layers = layers
        self._window = 2 if (os.cpu_count() or 1) >= 2 else 1
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._window, thread_name_prefix="imagedsl-layer"
        )
        self._pending: dict[int, concurrent.futures.Future[tuple[list[TarEntry], int]]] = {}
        for index in range(min(self._window, len(layers))):
            self._submit(index)

    def _submit(self, index: int) -> None:
        self._pending[index] = self._pool.submit(_read_opened, self._layers[index])

    def result(self, index: int) -> tuple[list[TarEntry], int]:
        """Layer ``index``'s entries and tar size (and the next read started)."""
        future = self._pending.pop(index)
        if index + self._window < len(self._layers):
            self._submit(index + self._window)
        return future.result()

    def __enter__(self) -> _LayerReads:
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)


def _read_opened(layer: SourceLayer) -> tuple[list[TarEntry], int]:
    with layer.open() as raw:
        return _read_layer(raw)


def _read_layer(raw: Any) -> tuple[list[TarEntry], int]:
    """A layer's entries and its tar's size: by position when it is an uncompressed tar in a
    file (nothing skipped is read), else from its inflated chunks."""
    where = _position_of(raw)
    if where is not None and sniff_compression(os.pread(where[0], 4, where[1])) == "none":
        reader = TarReader.at(*where)
        items = list(reader.entries(_wants_data, data_limit=credentials.CONTENT_LIMIT))
        return items, reader.total
    with contextlib.closing(_prefetched(decompressed_chunks(raw))) as chunks:
        reader = TarReader.of_chunks(chunks)
        items = list(reader.entries(_wants_data, data_limit=credentials.CONTENT_LIMIT))
        reader.finish()
    return items, reader.total


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


def _wants_data(path: str, size: int) -> bool:
    """Look at a small file's bytes unless it is source code, markup or media: credentials
    are in key files and configuration (and reading every source file would cost most of
    the time)."""
    del size  # the reader asks only for files up to the content limit
    return not credentials.source_or_media(path)


_END: Final = object()


def _prefetched(chunks: Iterator[bytes], depth: int = 4) -> Generator[bytes, None, None]:
    """``chunks``, made by a thread of their own while the caller reads the ones before: isal
    inflates without the GIL, so on two cores inflating and parsing overlap."""
    if (os.cpu_count() or 1) < 2:
        yield from chunks
        return
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


def _layer_tree(items: Sequence[TarEntry]) -> dict[str, TarEntry | None]:
    """The layer's tree as dive builds it: each entry's path (the last entry of a path
    wins) and the directories it implies (None); an opaque marker implies its directory."""
    tree: dict[str, TarEntry | None] = {}
    for item in items:
        path = item.path
        if not path:
            continue
        parent, _, name = path.rpartition("/")
        while parent and parent not in tree:
            tree[parent] = None
            parent = parent.rpartition("/")[0]
        if not name.startswith(_MARKER):
            tree[path] = item
    return tree


def _visit(
    tree: Mapping[str, TarEntry | None], index: int, stack: _Stack, copies: dict[str, _Copies]
) -> tuple[int, int, int]:
    """Count each leaf of the layer's tree as a copy of its path; count what changed."""
    inner = {path.rpartition("/")[0] for path in tree}
    added = changed = deleted = 0
    for path, item in tree.items():
        directory, _, name = path.rpartition("/")
        if name.startswith(WHITEOUT):
            target = f"{directory}/{name[4:]}" if directory else name[4:]
            deleted += 1
            if path not in inner:
                _copies_of(copies, target).add(stack.subtree_size(target), index)
            continue
        if item is not None and not item.is_dir:
            if path in stack.nodes:
                changed += 1
            else:
                added += 1
        if path not in inner:
            _copies_of(copies, path).add(0 if item is None else item.size, index)
    return added, changed, deleted


def _stack(tree: Mapping[str, TarEntry | None], stack: _Stack) -> None:
    """Put the layer on the stack as dive does: a whiteout removes its path, every other
    node of the tree (an implied directory too) replaces what the path held."""
    # Component by component ("\0" sorts before every other character of a name).
    for path in sorted(tree, key=lambda p: p.replace("/", "\0")):
        item = tree[path]
        directory, _, name = path.rpartition("/")
        if name.startswith(WHITEOUT):
            stack.remove(f"{directory}/{name[4:]}" if directory else name[4:])
        else:
            stack.add(path, _IMPLIED_DIRECTORY if item is None else (item.size, item.is_dir))


def _secrets(items: Sequence[TarEntry], index: int) -> Iterator[tuple[str, int, str]]:
    reported_git: set[str] = set()
    for item in items:
        if not item.path or item.path.rpartition("/")[2].startswith(WHITEOUT):
            continue
        kind = credentials.path_kind(item.path)
        if kind == "git-directory":
            parts = item.path.split("/")
            root = "/".join(parts[: parts.index(".git") + 1])
            if root not in reported_git:
                reported_git.add(root)
                yield root, index, kind
            continue
        if kind is None and item.data is not None:
            kind = credentials.content_kind(item.path, item.data)
            if kind is None and not credentials.source_or_media(item.path):
                kind = credentials.token_in_file(item.data)
        if kind is not None and (item.is_file or item.data is not None):
            yield item.path, index, kind


def _hiding(items: Sequence[TarEntry]) -> tuple[set[str], set[str], set[str]]:
    """What a layer hides of the layers below: paths it deletes, directories it makes opaque,
    paths it writes again."""
    deleted: set[str] = set()
    opaque: set[str] = set()
    written: set[str] = set()
    for item in items:
        directory, _, name = item.path.rpartition("/")
        if name.startswith(OPAQUE):
            opaque.add(directory)
        elif name.startswith(WHITEOUT):
            deleted.add(f"{directory}/{name[4:]}" if directory else name[4:])
        elif item.path:
            written.add(item.path)
    return deleted, opaque, written


def _hidden_later(path: str, index: int, hidden_by: Sequence[tuple[set[str], ...]]) -> bool:
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

"""Writing layers into the store: one now, or several at once on forked processes (else
threads).

A COPY split into layers (``layers="auto"``) has parts that do not depend on each other (each
is written over what lies below the whole COPY), so the backend hands every missing part to
:meth:`LayerWriter.write_ahead` when it reaches the first, and takes each one's blob in plan
order. Where a fork is safe, one process per core makes and writes whole parts, compressing on
its own thread: per file, entries, tar headers and the index are Python, which threads would
take turns at (the cold 420 MB benchmark: 2.30 s on two processes, 2.95 s on two threads, and
2.40 s against 2.55 s for a child compressing on its one thread rather than a second).
Otherwise the parts go to a pool of threads, each layer keeping :class:`~.layer.LayerStream`'s
second thread (reading on one, compressing on the other). Each layer's bytes depend only on its
entries: neither the processes, the threads nor the order the parts finish in change a digest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

from imagedsl._cores import cores, fork_is_safe
from imagedsl.backends.oci.filesystem import LayerIndex, save_index
from imagedsl.backends.oci.layer import LayerEntry, LayerStream, arrange, write_tar
from imagedsl.oci.blobs import BlobStore
from imagedsl.oci.image import LayerBlob
from imagedsl.oci.mediatypes import Compression

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from imagedsl._forked import ForkedJobs

ParentFactory = Callable[[str], LayerEntry]
#: What :meth:`LayerWriter.write_ahead` calls to make a layer's entries (None: no layer).
LayerMaker = Callable[[], "tuple[list[LayerEntry], ParentFactory] | None"]
#: Layers written at once at most (each holds its pieces, 8 MiB, and a compressing thread).
_MAX_WORKERS: Final = 4


class LayerWriter:
    """Writes layers (tar, compression, blob, index) for one build."""

    def __init__(
        self,
        blobs: BlobStore,
        compression: Compression,
        epoch: int,
        *,
        workers: int | None = None,
    ) -> None:
        self.blobs = blobs
        self.compression: Compression = compression
        self.epoch = epoch
        self.workers = min(_MAX_WORKERS, cores()) if workers is None else workers
        self._pool: ThreadPoolExecutor | None = None
        self._forked: list[ForkedJobs[LayerBlob | None]] = []  # at most one per split COPY
        self._ahead: dict[int, Callable[[], LayerBlob | None]] = {}
        self._stop = threading.Event()

    def write(self, entries: list[LayerEntry], parent: ParentFactory) -> LayerBlob:
        """Write one layer now."""
        return self._write(entries, parent)

    def parallel(self, count: int) -> bool:
        """Whether ``count`` layers are better written at once than one after the other."""
        return count > 1 and self.workers > 1

    def write_ahead(self, layers: Sequence[tuple[int, LayerMaker]]) -> None:
        """Start writing layers, each ``(key, make)``: ``make()`` gives its entries and parent
        factory (or None: no layer); :meth:`take` ``key`` gives its blob.

        In forked children where that is safe (:func:`~imagedsl._cores.fork_is_safe`): making the
        entries, arranging them, the tar headers and the index are Python, and threads would
        take turns at them; each child makes and writes whole layers. Otherwise the entries are
        made here, one layer after another, and written on a pool of threads.
        """
        # Here, not at the top: an edit build writes one layer, and needs none of this.
        from imagedsl._forked import ForkedJobs

        jobs = [partial(self._make_and_write, make) for _, make in layers]
        forked = ForkedJobs.start(jobs, self.workers) if fork_is_safe(self.workers) else None
        if forked is not None:
            self._forked.append(forked)
            for position, (key, _) in enumerate(layers):
                self._ahead[key] = partial(forked.result, position)
            return
        if self._pool is None:
            # Imported here: concurrent.futures (and the logging it loads) costs an edit
            # build, which writes one layer, 5 ms of start-up.
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="imagedsl-layer")
        for key, make in layers:
            made = make()
            if made is not None:
                self._ahead[key] = self._pool.submit(self._write, *made).result

    def _make_and_write(self, make: LayerMaker) -> LayerBlob | None:
        made = make()
        return None if made is None else self._write(*made, threaded=False)

    def has(self, key: int) -> bool:
        """Whether the layer ``key`` was handed to :meth:`write_ahead` (and not taken)."""
        return key in self._ahead

    def take(self, key: int) -> LayerBlob | None:
        """The blob of a layer written ahead (waiting for it; its failure is raised here)."""
        return self._ahead.pop(key)()

    def close(self) -> None:
        """Stop: layers not started are dropped, those being written stop at their next entry
        (their temporary files are removed); wait for the threads and children."""
        self._stop.set()
        for forked in self._forked:
            forked.close()
        self._forked = []
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ahead.clear()
        self._stop.clear()

    def _write(
        self, entries: list[LayerEntry], parent: ParentFactory, *, threaded: bool = True
    ) -> LayerBlob:
        arranged = arrange(entries, parent)
        with self.blobs.writer() as handle:
            stream = LayerStream(handle, self.compression, threaded=threaded)
            write_tar(arranged, stream, mtime=self.epoch, stop=self._stop)
            layer = stream.finish()
            if not self.blobs.intact(layer.digest, layer.size):
                self.blobs.commit(handle, layer.digest)
        index = LayerIndex.of_entries(layer.diff_id, arranged, kept_files(arranged))
        save_index(self.blobs.store, index)
        return layer


def kept_files(entries: Sequence[LayerEntry]) -> dict[str, str]:
    """The files later steps read from a layer's index (``--chown`` names): passwd, group."""
    kept = {}
    for entry in entries:
        if entry.path in ("etc/passwd", "etc/group") and entry.kind == "file":
            source = entry.source
            data = source if isinstance(source, bytes) else Path(str(source)).read_bytes()
            kept[entry.path] = data.decode("utf-8", "replace")
    return kept


__all__ = ["LayerMaker", "LayerWriter", "ParentFactory", "kept_files"]

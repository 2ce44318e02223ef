"""Hashing one file's bytes (blake3), as the planner hashes context files: bounded memory
for any size, few system calls for small files."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import blake3

from imagedsl._cores import cores, fork_is_safe
from imagedsl.errors import ContextError

#: Up to this many (small) files are hashed here, without other threads or processes.
INLINE_FILES: Final = 16
#: Files at least this big are hashed with blake3's own threads, a piece at a time.
BIG_FILE: Final = 4 << 20
_HASH_PIECE: Final = 8 << 20


def hash_file(path: str, size: int) -> str:
    """blake3 of a file's bytes, read in pieces of at most 8 MiB (memory stays bounded for any
    file size, unlike a whole-file mmap, whose pages count as the process's resident memory);
    big files use blake3's threads on each piece. A small file is read with one ``readv``
    into a buffer its thread keeps: no allocation, and few system calls (each one lets another
    thread take the GIL, which costs more than the call)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if size < BIG_FILE:
            buffer = getattr(_buffers, "piece", None)
            if buffer is None or len(buffer) <= size:
                buffer = _buffers.piece = bytearray(min(BIG_FILE, max(size + 1, 1 << 20)))
            with memoryview(buffer) as view:
                count = os.readv(fd, [view[: size + 1]])
                # Not what its stat said (it grew, or a short read): read on to its end.
                while count != size and count < len(buffer):
                    more = os.readv(fd, [view[count:]])
                    if not more:
                        break
                    count += more
                if count < len(buffer):
                    return blake3.blake3(view[:count]).hexdigest()
                hasher = blake3.blake3(view, max_threads=_threads)
        else:
            hasher = blake3.blake3(max_threads=_threads)
        buffer = bytearray(_HASH_PIECE)
        with memoryview(buffer) as view:
            while count := os.readv(fd, [view]):
                hasher.update(view[:count])
        return hasher.hexdigest()
    finally:
        os.close(fd)


def hash_files(
    root: str, files: Sequence[tuple[str, int]], progress: Callable[[int, int], None]
) -> Iterator[str]:
    """blake3 of each of ``files`` (a path under ``root``, its size), in their order; after
    each batch, ``progress(files, bytes)`` so far. A few small files are hashed here; more on
    one forked process per core where that is safe (:func:`~imagedsl._cores.fork_is_safe`), each
    hashing a batch at a time, or else on as many threads."""
    total = sum(size for _, size in files)
    if len(files) <= INLINE_FILES and total < BIG_FILE:
        # An edit or two: hashing them here costs less than starting workers.
        yield from _hash_batch(root, files)
        progress(len(files), total)
        return
    # Here, not at the top: a warm plan hashes an edit or two at most, inline.
    from imagedsl._forked import ForkedJobs

    batches = list(_batches(files))
    work = functools.partial(_hash_batch, root)
    # One worker per core: more threads only hand the GIL around (each file is a few system
    # calls); processes do not take turns at all.
    workers = min(8, cores())
    with contextlib.ExitStack() as stack:
        results: Iterator[list[str]]
        forked = None
        if len(batches) > 1 and fork_is_safe(workers):
            forked = ForkedJobs.start([functools.partial(work, b) for b in batches], workers)
        if forked is not None:
            stack.enter_context(forked)
            results = (forked.result(i) for i in range(len(batches)))
        else:
            from concurrent.futures import ThreadPoolExecutor

            results = stack.enter_context(ThreadPoolExecutor(workers)).map(work, batches)
        done_files = done_bytes = 0
        for batch, digests in zip(batches, results, strict=True):
            done_files += len(batch)
            done_bytes += sum(size for _, size in batch)
            progress(done_files, done_bytes)
            yield from digests


def _hash_batch(root: str, files: Sequence[tuple[str, int]]) -> list[str]:
    digests = []
    for path, size in files:
        try:
            digests.append(hash_file(os.path.join(root, path), size))
        except OSError as error:
            raise ContextError(root, problem=f"cannot read {path}: {error}") from None
    return digests


def _batches(files: Sequence[tuple[str, int]]) -> Iterator[Sequence[tuple[str, int]]]:
    """At most 64 files or :data:`BIG_FILE` bytes (or one bigger file) each."""
    batch: list[tuple[str, int]] = []
    batch_bytes = 0
    for item in files:
        batch.append(item)
        batch_bytes += item[1]
        if len(batch) >= 64 or batch_bytes >= BIG_FILE:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


#: Per thread: the buffer :func:`hash_file` reads small files into.
_buffers = threading.local()

#: blake3's threads for big files: its shared pool (Rust's rayon), except in a forked child,
#: where that pool's threads do not exist but the pool may believe they do (a child that used
#: it would wait for them forever), so a child hashes on its own thread.
_threads = blake3.blake3.AUTO


def _in_forked_child() -> None:  # pragma: no cover - runs in children
    global _threads
    _threads = 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_forked_child)


__all__ = ["BIG_FILE", "INLINE_FILES", "hash_file", "hash_files"]

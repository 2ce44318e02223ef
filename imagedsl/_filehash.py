"""Hashing one file's bytes (blake3), as the planner hashes context files: bounded memory
for any size, few system calls for small files."""

from __future__ import annotations

import os
import threading
from typing import Final

import blake3

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
                hasher = blake3.blake3(view, max_threads=blake3.blake3.AUTO)
        else:
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        buffer = bytearray(_HASH_PIECE)
        with memoryview(buffer) as view:
            while count := os.readv(fd, [view]):
                hasher.update(view[:count])
        return hasher.hexdigest()
    finally:
        os.close(fd)


#: Per thread: the buffer :func:`hash_file` reads small files into.
_buffers = threading.local()


__all__ = ["BIG_FILE", "hash_file"]

"""Python bytecode a RUN writes stays valid under the layer's fixed mtimes.

Every file in a layer the OCI backend writes has the build's epoch as its mtime (that is what
makes the blobs byte-identical at any time). A ``.pyc`` that records its source's mtime
(Python's default, "timestamp" invalidation) would then name a time the source no longer has,
and Python would find it stale at every start of the container and compile again. BuildKit
keeps the mtimes a RUN wrote, so there the same ``.pyc`` is used.

So, for a ``.pyc`` the RUN wrote whose source it also wrote (both are in the layer, so the
source's mtime becomes the epoch), the recorded mtime is set to the epoch when it is the
source's mtime and size as they were when the RUN ended. The bytes then agree with the layer,
as the RUN's own ``.pyc`` agreed with its source, and depend only on the epoch. Hash-checked
and unchecked ``.pyc`` files (flags other than 0) name no time and are left alone, as is a
``.pyc`` whose source lives in a layer below (that source's mtime does not change).

The RUN's environment is not touched: BuildKit gives a RUN no ``SOURCE_DATE_EPOCH`` unless the
Dockerfile declares it as an ARG, so neither do we.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from typing import Final

from imagedsl.backends.oci.layer import LayerEntry

__all__ = ["settle_bytecode", "source_of"]

#: The header of a ``.pyc`` since Python 3.7 (PEP 552): magic, flags, mtime, source size.
_HEADER: Final = 16
#: Magic numbers from Python 3.7 (3390) on; the high end leaves room for versions to come.
_FIRST_MAGIC: Final = 3390
_LAST_MAGIC: Final = 9999


def source_of(pyc: str) -> str | None:
    """The source file a ``.pyc`` path was compiled from (``d/__pycache__/m.tag.pyc`` is
    ``d/m.py``; a legacy ``d/m.pyc`` is ``d/m.py``), or None when the name is neither."""
    head, name = posixpath.split(pyc)
    if not name.endswith(".pyc"):
        return None
    if posixpath.basename(head) == "__pycache__":
        module, dot, _tag = name[: -len(".pyc")].partition(".")
        if not dot or not module:
            return None
        return posixpath.join(posixpath.dirname(head), module + ".py")
    return pyc[: -len(".pyc")] + ".py"


def settle_bytecode(entries: Iterable[LayerEntry], epoch: int) -> list[str]:
    """Rewrite in place the recorded source mtime of the timestamp-checked ``.pyc`` files in
    ``entries`` whose source is in ``entries`` too (see the module's docstring); return the
    paths rewritten. Files are host paths in the RUN's scratch tree, which nobody else reads."""
    files = {
        entry.path: entry.source
        for entry in entries
        if entry.kind == "file" and isinstance(entry.source, str)
    }
    settled = []
    for path, host in sorted(files.items()):
        source = source_of(path)
        if source is None or source not in files:
            continue
        source_host = files[source]
        assert isinstance(host, str)
        assert isinstance(source_host, str)
        if _settle(host, source_host, epoch):
            settled.append(path)
    return settled


def _settle(pyc: str, source: str, epoch: int) -> bool:
    try:
        fd = os.open(pyc, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # not ours to write (a read-only bind leftover): leave it
    try:
        header = os.pread(fd, _HEADER, 0)
        if len(header) < _HEADER or header[2:4] != b"\r\n":
            return False
        magic = int.from_bytes(header[0:2], "little")
        flags = int.from_bytes(header[4:8], "little")
        if not _FIRST_MAGIC <= magic <= _LAST_MAGIC or flags != 0:
            return False
        try:
            st = os.stat(source, follow_symlinks=False)
        except OSError:
            return False
        recorded_mtime = int.from_bytes(header[8:12], "little")
        recorded_size = int.from_bytes(header[12:16], "little")
        if recorded_mtime != int(st.st_mtime) & 0xFFFFFFFF:
            return False  # stale already when the RUN ended: Python would recompile there too
        if recorded_size != st.st_size & 0xFFFFFFFF:
            return False
        os.pwrite(fd, (epoch & 0xFFFFFFFF).to_bytes(4, "little"), 8)
        return True
    finally:
        os.close(fd)

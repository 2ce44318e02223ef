"""What each filesystem step puts in its layer, as :class:`LayerEntry` values.

Placement follows Docker's COPY: a directory's contents go into the destination, a single
file goes to the destination (into it when it ends with ``/`` or is an existing directory).
Paths above the destination that the layer must hold keep the metadata they have in the layers
below (so a COPY never changes the mode or owner of ``/app`` that the base made), unless the
step is ``link=True``, whose layer must not depend on what is below it. Context files are
written with the normalised modes their keys hold, owned by root unless ``chown``.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
import blake3

from imagedsl._ignore import IgnoreRules
from imagedsl.backends.oci.filesystem import (
    Filesystem,
    FsEntry,
    PathResolutionError,
    UnsafeLayerError,
    _clean_member_name,
    lookup_id,
)
from imagedsl.backends.oci.layer import LayerEntry, LayerError, Xattrs
from imagedsl.contexts import ContextSource, glob_regex, names_itself
from imagedsl.errors import InputError
from imagedsl.steps import GLOB_CHARS, INLINE_FILE_NAME
from imagedsl.treehash import Row, Tree, TreeEntry

if TYPE_CHECKING:
    from imagedsl.oci.blobs import BlobStore
    from imagedsl.steps import InlineFile, UrlSource

_URL_TIMEOUT: Final = 60.0


@attrs.define
class StepInputError(InputError):
    """A step's inputs cannot be placed: unknown ``--chown`` user, a missing source path."""

    step: str
    problem: str

    def __str__(self) -> str:
        return f"{self.step}: {self.problem}"


@attrs.frozen(kw_only=True)
class Owner:
    """Numeric owner of what a step writes."""

    uid: int = 0
    gid: int = 0


def resolve_owner(step: str, chown: str | None, files: Mapping[str, str]) -> Owner:
    """``user[:group]`` (names or numbers) to numbers, names looked up in the image below."""
    if chown is None:
        return Owner()
    user, _, group = chown.partition(":")
    if user.isdigit() or not user:  # ``:group``: BuildKit's user is then root
        uid = int(user or "0")
        primary = uid
    else:
        found = lookup_id(files, "etc/passwd", user)
        if found is None:
            raise StepInputError(step, f"--chown user {user!r} is not in the image's /etc/passwd")
        uid = found
        primary = _primary_gid(files, user, uid)
    if not group:
        return Owner(uid=uid, gid=primary)
    if group.isdigit():
        return Owner(uid=uid, gid=int(group))
    gid = lookup_id(files, "etc/group", group)
    if gid is None:
        raise StepInputError(step, f"--chown group {group!r} is not in the image's /etc/group")
    return Owner(uid=uid, gid=gid)


def _primary_gid(files: Mapping[str, str], user: str, uid: int) -> int:
    for line in files.get("etc/passwd", "").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == user and fields[3].isdigit():
            return int(fields[3])
    return uid


def chmod_bits(chmod: str | None) -> int | None:
    """The mode ``--chmod`` sets, or None."""
    return None if chmod is None else int(chmod, 8)


class Placement:
    """Where things land under a destination, and the parents the layer needs for them."""

    def __init__(
        self,
        dest: str,
        lower: Filesystem | None,
        *,
        owner: Owner,
        chmod: int | None,
        single_file: bool,
        step: str = "COPY",
    ) -> None:
        self.lower = lower
        self.owner = owner
        self.chmod = chmod
        self.step = step
        rel = dest.strip("/")
        ends_with_slash = dest.endswith("/")
        if lower is not None and rel:
            head, base = posixpath.split(rel)
            resolved_head = lower.resolve(head) if head else ""
            rel = posixpath.join(resolved_head, base) if resolved_head else base
            existing = lower.get(rel)
            if existing is not None and existing.kind == "symlink":
                rel = lower.resolve(rel)
                existing = lower.get(rel)
            if single_file and existing is not None and existing.kind == "dir":
                ends_with_slash = True
        self.root = rel
        self.into_dir = ends_with_slash or not single_file

    def target(self, placed: str, name: str) -> str:
        """The layer path of an entry placed at ``placed`` (``.`` is the destination itself)."""
        if placed == ".":
            if self.into_dir:
                return posixpath.join(self.root, name) if self.root else name
            if not self.root:
                raise StepInputError("COPY", "cannot replace the root directory with a file")
            return self.root
        return posixpath.join(self.root, placed) if self.root else placed

    def parent(self, path: str) -> LayerEntry:
        """A directory the layer needs but no source gave.

        Below the destination it is one of the copied directories (``chmod``/``chown``
        apply); at or above it, it keeps what the layers below have, else it is made 0755
        and owned per ``chown`` (BuildKit makes every missing parent with the copy's owner;
        WORKDIR's with the USER's).
        """
        if not self.root or path.startswith(self.root + "/"):
            mode = 0o755 if self.chmod is None else self.chmod
            return LayerEntry(
                path=path, kind="dir", mode=mode, uid=self.owner.uid, gid=self.owner.gid
            )
        found = self.lower.get(path) if self.lower is not None else None
        if found is not None and found.kind == "dir":
            return LayerEntry(
                path=path,
                kind="dir",
                mode=found.mode,
                uid=found.uid,
                gid=found.gid,
                xattrs=found.xattrs,
            )
        return LayerEntry(path=path, kind="dir", mode=0o755, uid=self.owner.uid, gid=self.owner.gid)

    def refuse_type_conflicts(self, entries: Sequence[LayerEntry]) -> None:
        """Fail where a copy meets a path of another type below it, as BuildKit's copy does:
        a directory over a file or symlink ("cannot copy to non-directory"), a file over a
        directory. (A file over a file or a symlink replaces it, as in BuildKit.)"""
        lower, root = self.lower, self.root
        if lower is None:
            return  # link=True: the copy is made on an empty filesystem
        directories = set()
        for entry in entries:
            if entry.kind == "dir":
                directories.add(entry.path)
            head = posixpath.dirname(entry.path)
            while head and head != root and (not root or head.startswith(root + "/")):
                directories.add(head)  # a parent the layer makes, below the destination
                head = posixpath.dirname(head)
        for path in sorted(directories):
            found = lower.get(path)
            if found is not None and found.kind != "dir":
                raise StepInputError(self.step, f"cannot copy to non-directory: /{path}")
        for entry in entries:
            if entry.kind != "dir":
                found = lower.get(entry.path)
                if found is not None and found.kind == "dir":
                    problem = f"cannot replace to directory /{entry.path} with file"
                    raise StepInputError(self.step, problem)


def context_entries(
    items: Iterable[TreeEntry],
    root: str,
    placement: Placement,
    named: Container[str] | None = None,
) -> list[LayerEntry]:
    """Entries for files selected from a build context (checked against their tree digests).

    ``named``: the sources a selector names (only those can be symlinks the plan followed; a
    file found in a directory it scanned was no symlink), or None to look at every file."""
    entries: list[LayerEntry] = []
    owner, chmod = placement.owner, placement.chmod
    for item in items:
        host = os.path.join(root, item.source)
        path = placement.target(item.placed, posixpath.basename(item.source))
        if item.type == "file" and (named is None or item.source in named) and os.path.islink(host):
            # A symlink named as the source: its target's bytes, under its name (as BuildKit
            # follows it; the plan checked that the target is inside the context).
            host = _inside(root, os.path.realpath(host), item)
        if item.type == "file":
            entries.append(
                LayerEntry(
                    path=path,
                    kind="file",
                    mode=item.mode if chmod is None else chmod,
                    uid=owner.uid,
                    gid=owner.gid,
                    size=item.size,
                    source=host,
                    digest=item.digest,
                )
            )
        elif item.type == "dir":
            entries.append(
                LayerEntry(
                    path=path,
                    kind="dir",
                    mode=item.mode if chmod is None else chmod,
                    uid=owner.uid,
                    gid=owner.gid,
                )
            )
        else:
            target = _read_symlink(host, item)
            entries.append(
                LayerEntry(
                    path=path,
                    kind="symlink",
                    mode=0o777,
                    uid=owner.uid,
                    gid=owner.gid,
                    linkname=target,
                )
            )
    placement.refuse_type_conflicts(entries)
    return entries


def _inside(root: str, host: str, item: TreeEntry) -> str:
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, host]) != real_root:
        raise LayerError(item.placed, f"{item.source} is a symlink that leaves the build context")
    return host


def _read_symlink(host: str, item: TreeEntry) -> str:
    try:
        target = os.readlink(host)
    except OSError as error:
        raise LayerError(item.placed, f"cannot read symlink {host}: {error.strerror}") from None
    digest = blake3.blake3(target.encode("utf-8", "surrogateescape")).hexdigest()
    if digest != item.digest:
        raise LayerError(item.placed, f"symlink {host} changed since it was planned")
    return target


# -- ADD -------------------------------------------------------------------------------------


def unpacked_by_add(root: str, source: ContextSource, entry: TreeEntry) -> bool:
    """Whether ADD unpacks a context entry: a file a selector names itself
    (:func:`~imagedsl.contexts.names_itself`) that is an archive (:func:`is_archive`)."""
    return (
        entry.type == "file"
        and names_itself(source, entry.source)
        and is_archive(os.path.join(root, entry.source))
    )


def is_archive(path: str) -> bool:
    """Whether ADD unpacks this file: a tar, plain or gzip/bzip2/xz-compressed."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return False
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        try:
            with tarfile.open(path, "r:*") as archive:
                return archive.next() is not None
        except (tarfile.TarError, OSError, EOFError):
            return False
    return _tar_header(head)


def _tar_header(block: bytes) -> bool:
    """Whether ``block`` is a tar header Go's reader takes (BuildKit's test for an archive):
    512 bytes, not all zero, whose checksum field holds the sum of its bytes (the field read
    as spaces; unsigned or signed, as old tars wrote it). The old v7 format has no magic."""
    if len(block) < 512 or not any(block[:512]):
        return False
    field = block[148:156].strip(b" \x00")
    if not field or any(c not in b"01234567" for c in field):
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    signed = unsigned - 256 * sum(1 for c in block[:148] + block[156:512] if c > 127)
    return int(field, 8) in (unsigned, signed)


def archive_entries(
    path: str, placement: Placement, spool: Callable[[], Path], step: str
) -> list[LayerEntry]:
    """Entries for a local tar unpacked by ADD; member names cannot leave the destination,
    and a damaged archive (a member cut short, bad compressed data) is the step's error."""
    try:
        return _archive_entries(path, placement, spool, step)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise StepInputError(step, f"{path}: a damaged archive ({error})") from None
    except OSError as error:
        if error.errno is not None:
            raise  # the machine's (a full disk), not the archive's
        raise StepInputError(step, f"{path}: a damaged archive ({error})") from None


def _archive_entries(
    path: str, placement: Placement, spool: Callable[[], Path], step: str
) -> list[LayerEntry]:
    entries: list[LayerEntry] = []
    seen: dict[str, LayerEntry] = {}
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            try:
                name = _clean_member_name(path, member.name.lstrip("/"))
            except UnsafeLayerError as error:
                raise StepInputError(step, str(error)) from None
            if not name:
                continue
            target = placement.target(name, name)
            # The archive's owners, --chown or not, as the engine's BuildKit unpacks it.
            uid, gid = member.uid, member.gid
            mode = member.mode & 0o7777
            entry: LayerEntry
            if member.isdir():
                entry = LayerEntry(path=target, kind="dir", mode=mode, uid=uid, gid=gid)
            elif member.isreg():
                spooled = spool()
                handle = archive.extractfile(member)
                assert handle is not None
                with spooled.open("wb") as out:
                    while data := handle.read(1 << 20):
                        out.write(data)
                entry = LayerEntry(
                    path=target,
                    kind="file",
                    mode=mode,
                    uid=uid,
                    gid=gid,
                    size=member.size,
                    source=str(spooled),
                )
            elif member.issym():
                entry = LayerEntry(
                    path=target, kind="symlink", mode=0o777, uid=uid, gid=gid,
                    linkname=member.linkname,
                )  # fmt: skip
            elif member.islnk():
                link = _clean_member_name(path, member.linkname.lstrip("/"))
                linked = placement.target(link, link)
                if linked not in seen or seen[linked].kind != "file":
                    raise StepInputError(
                        step, f"{path}: hard link {member.name!r} to a file not in the archive"
                    )
                entry = LayerEntry(
                    path=target, kind="hardlink", mode=mode, uid=uid, gid=gid, linkname=linked
                )
            else:
                raise StepInputError(step, f"{path}: {member.name!r} is a device or special file")
            seen[target] = entry
    entries.extend(seen.values())
    return entries


def url_entry(source: UrlSource, placement: Placement, blobs: BlobStore) -> LayerEntry:
    """ADD of a URL: the blob named by its checksum, fetched only if the store lacks it."""
    digest = source.checksum
    path = blobs.path(digest)
    if not path.exists():
        import urllib.request  # here: only ADD of a URL needs it, and it is slow to import

        try:
            with urllib.request.urlopen(source.url, timeout=_URL_TIMEOUT) as response:
                blobs.import_stream(response, digest, source.url)
        except OSError as error:
            raise StepInputError("ADD", f"cannot fetch {source.url}: {error}") from None
    return LayerEntry(
        path=placement.target(".", source.file_name),
        kind="file",
        mode=0o600 if placement.chmod is None else placement.chmod,
        uid=placement.owner.uid,
        gid=placement.owner.gid,
        size=path.stat().st_size,
        source=str(path),
    )


def inline_entry(source: InlineFile, placement: Placement) -> LayerEntry:
    """``COPY <<EOF``: a file written in the build file, with its own mode unless ``chmod``."""
    return LayerEntry(
        path=placement.target(".", INLINE_FILE_NAME),
        kind="file",
        mode=source.mode if placement.chmod is None else placement.chmod,
        uid=placement.owner.uid,
        gid=placement.owner.gid,
        size=len(source.content),
        source=source.content,
        digest=source.digest,
    )


# -- COPY --from -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StageFile:
    """One entry copied out of another stage."""

    source: str
    placed: str
    entry: FsEntry
    hardlink_to: str | None = None
    #: The name a file placed at ``.`` takes in a destination directory, when not its
    #: source's: a symlink named as the source lands under its own name, with its target's
    #: bytes (as BuildKit copies it).
    name: str | None = None


def select_from_stage(
    fs: Filesystem, path: str, exclude: Sequence[str], step: str
) -> tuple[list[StageFile], bool]:
    """What ``COPY --from`` takes from ``path`` in ``fs``; True if it is a single file."""
    try:
        resolved = fs.resolve(path.strip("/"))
    except PathResolutionError as error:
        raise StepInputError(step, str(error)) from None
    top = fs.get(resolved) if resolved else FsEntry(kind="dir", mode=0o755)
    if top is None:
        raise StepInputError(step, f"{path} does not exist in the source stage")
    rules = IgnoreRules.from_lines(exclude) if exclude else None
    if top.kind != "dir":
        name = posixpath.basename(path.rstrip("/")) or None
        return [StageFile(source=resolved, placed=".", entry=top, name=name)], True
    chosen: list[StageFile] = []
    prefix = resolved + "/" if resolved else ""
    for source, entry in sorted(fs.below(resolved)):
        rel = source[len(prefix) :]
        if rules is not None and rules.excludes(rel):
            continue
        chosen.append(StageFile(source=source, placed=rel, entry=entry))
    return chosen, False


def select_from_stage_paths(
    fs: Filesystem, paths: Sequence[str], exclude: Sequence[str], step: str
) -> tuple[list[StageFile], bool]:
    """What one ``COPY --from`` takes from ``paths`` in ``fs``; True if it is a single file
    (one path, no wildcard, naming a file: it may land as the destination itself).

    Several paths (or a wildcard) copy into the destination directory in order, as BuildKit's
    chained copies do: a file by its name, a directory's contents, each path what
    :func:`select_from_stage` takes from it; what a later path places replaces what an earlier
    one placed there. A missing path is an error; a wildcard matching nothing is not (BuildKit
    allows empty wildcards)."""
    if len(paths) == 1 and not GLOB_CHARS.search(paths[0]):
        return select_from_stage(fs, paths[0], exclude, step)
    chosen: dict[str, StageFile] = {}
    for path in paths:
        for name, match in _stage_matches(fs, path):
            files, single = select_from_stage(fs, match, exclude, step)
            for item in files:
                placed = name if single else item.placed
                chosen.pop(placed, None)  # BuildKit's later copy overwrites
                chosen[placed] = attrs.evolve(item, placed=placed)
    return sorted(chosen.values(), key=lambda item: item.placed), False


def names_something(fs: Filesystem, paths: Sequence[str]) -> bool:
    """Whether ``COPY --from`` of ``paths`` names anything (a wildcard may match nothing)."""
    return any(_stage_matches(fs, path) for path in paths)


def _stage_matches(fs: Filesystem, path: str) -> list[tuple[str, str]]:
    """(name, path) of what one source path names: the path itself, or what its wildcards
    match (Go's ``filepath.Match`` per path element, sorted), each under its own name (a
    symlink matched is followed by the copy but keeps its name)."""
    if not GLOB_CHARS.search(path):
        return [(posixpath.basename(path.rstrip("/")), path)]
    parts = [part for part in path.split("/") if part]
    fixed = next(i for i, part in enumerate(parts) if GLOB_CHARS.search(part))
    try:
        base = fs.resolve("/".join(parts[:fixed]))
    except PathResolutionError:
        return []
    top = fs.get(base) if base else FsEntry(kind="dir", mode=0o755)
    if top is None or top.kind != "dir":
        return []
    pattern = glob_regex("/".join(parts[fixed:]))
    depth = len(parts) - fixed - 1
    prefix = base + "/" if base else ""
    found = []
    for candidate, _ in fs.below(base):
        rel = candidate[len(prefix) :]
        if rel.count("/") == depth and pattern.match(rel):
            found.append((posixpath.basename(rel), candidate))
    return sorted(found, key=lambda match: match[1])


def stage_entries(
    files: Sequence[StageFile],
    contents: Mapping[str, Path],
    placement: Placement,
    *,
    keep_owners: bool = False,
) -> tuple[list[LayerEntry], Tree]:
    """Entries for files taken from a stage, and the tree digest of what was placed.

    Owners are kept (``keep_owners``: no ``--chown``, as BuildKit keeps them) or become
    ``chown``'s; modes are kept (or ``chmod``), and so are the extended attributes a layer
    carries (file capabilities, ACLs, ``user.*``). The tree digest covers all of these but
    the owners, which BuildKit's content key leaves out too. A hard link stays a hard link
    when its target is copied too, else it becomes a copy of the target's bytes (and
    attributes).
    """
    placed_of = {f.source: f.placed for f in files}
    files_by_source = {f.source: f for f in files}
    entries: list[LayerEntry] = []
    rows: list[Row] = []
    chmod = placement.chmod
    for item in files:
        entry = item.entry
        owner = Owner(uid=entry.uid, gid=entry.gid) if keep_owners else placement.owner
        path = placement.target(item.placed, item.name or posixpath.basename(item.source))
        mode = entry.mode if chmod is None or entry.kind == "symlink" else chmod
        xattrs = entry.xattrs
        if entry.kind == "hardlink":
            target = files_by_source.get(entry.linkname)
            xattrs = target.entry.xattrs if target is not None else ()
        if entry.kind == "dir":
            entries.append(
                LayerEntry(path=path, kind="dir", mode=mode, xattrs=xattrs, **attrs.asdict(owner))
            )
            digest = _xattrs_digest(xattrs)
            size = 0
        elif entry.kind == "symlink":
            entries.append(
                LayerEntry(
                    path=path,
                    kind="symlink",
                    mode=0o777,
                    linkname=entry.linkname,
                    **attrs.asdict(owner),
                )
            )
            digest = blake3.blake3(entry.linkname.encode("utf-8", "surrogateescape")).hexdigest()
            size = 0
        else:
            content_of = entry.linkname if entry.kind == "hardlink" else item.source
            spooled = contents[content_of]
            size = spooled.stat().st_size
            digest = _file_digest(spooled)
            if entry.kind == "hardlink" and entry.linkname in placed_of:
                linked = placement.target(placed_of[entry.linkname], entry.linkname)
                entries.append(
                    LayerEntry(
                        path=path,
                        kind="hardlink",
                        mode=mode,
                        linkname=linked,
                        **attrs.asdict(owner),
                    )
                )
                digest = f"{digest}>{placed_of[entry.linkname]}"
            else:
                entries.append(
                    LayerEntry(
                        path=path,
                        kind="file",
                        mode=mode,
                        size=size,
                        source=str(spooled),
                        xattrs=xattrs,
                        **attrs.asdict(owner),
                    )
                )
            digest += _xattrs_digest(xattrs)
        kind = "file" if entry.kind == "hardlink" else entry.kind
        rows.append((item.placed, "/" + item.source, kind, mode, size, digest))
    placement.refuse_type_conflicts(entries)
    return entries, Tree.from_rows(rows)


def _xattrs_digest(xattrs: Xattrs) -> str:
    """What a tree row adds for extended attributes ("" without any, so the digests of
    trees without them are what they always were)."""
    if not xattrs:
        return ""
    hasher = blake3.blake3()
    for name, value in xattrs:
        hasher.update(name.encode("utf-8", "surrogateescape") + b"\0" + value + b"\0")
    return "+xattrs:" + hasher.hexdigest()[:32]


def _file_digest(path: Path) -> str:
    hasher = blake3.blake3()
    with path.open("rb") as handle:
        while data := handle.read(1 << 20):
            hasher.update(data)
    return hasher.hexdigest()


def needed_contents(files: Iterable[StageFile]) -> set[str]:
    """Source paths whose bytes must be read (hard links read their target's)."""
    needed = set()
    for item in files:
        if item.entry.kind == "file":
            needed.add(item.source)
        elif item.entry.kind == "hardlink":
            needed.add(item.entry.linkname)
    return needed


def sha256_file(path: Path) -> str:
    """sha256 of a file, as ``sha256:<hex>``."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while data := handle.read(1 << 20):
            hasher.update(data)
    return "sha256:" + hasher.hexdigest()

"""Comparing what the two backends build: the same bases for both, and root filesystem listings.

The Debian test bases are imports of mmdebstrap root filesystems, which hold device nodes in
``/dev``; the OCI backend refuses base layers with device nodes (docs/oci-backend.md, hostile
layers), and official images have none. :func:`ensure_nodev_image` makes a copy of such a base
without them, once per engine (the image carries the source image's ID as a label), so that
both backends start from the very same bytes: the docker backend by name, the OCI backend
through ``docker-daemon:NAME``.

Listings map each path to (type, mode, uid, gid, content digest or link target); they are
read from a ``docker export`` tar, and from an OCI layout by applying its layers in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path

from tests.support.docker import DockerEngine

Listing = dict[str, tuple[str, int, int, int, str]]
NODEV_LABEL = "org.imagedsl.test.nodev-of"
_RECIPE = "nodev-1"

#: What ``docker create`` + ``docker export`` add to every container's root filesystem (the
#: runtime's mount points and files), never part of an image: the by-nature differences.
CONTAINER_ARTIFACTS = (
    ".dockerenv",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/mtab",
    "dev",
    "proc",
    "sys",
)


def ensure_nodev_image(engine: DockerEngine, source: str) -> str:
    """``<source name>-nodev:<tag>``: ``source`` without device nodes and FIFOs."""
    name, _, tag = source.rpartition(":")
    target = f"{name}-nodev:{tag}"
    found = engine.run("image", "inspect", "--format", "{{.Id}}", source)
    source_id = found.stdout.strip()
    wanted = f"{_RECIPE}:{source_id}"
    labels = engine.run(
        "image", "inspect", "--format", "{{json .Config.Labels}}", target, check=False
    )
    if (
        labels.returncode == 0
        and (json.loads(labels.stdout or "null") or {}).get(NODEV_LABEL) == wanted
    ):
        return target
    config = json.loads(
        engine.run("image", "inspect", "--format", "{{json .Config}}", source).stdout
    )
    with tempfile.TemporaryDirectory(prefix="imagedsl-nodev-") as tmp:
        saved = Path(tmp, "saved.tar")
        engine.run("save", "-o", str(saved), source)
        filtered = Path(tmp, "rootfs.tar")
        _without_devices(saved, filtered)
        changes = [f"LABEL {NODEV_LABEL}={wanted}"]
        changes += [f"ENV {item}" for item in config.get("Env") or []]
        if config.get("Cmd"):
            changes.append(f"CMD {json.dumps(config['Cmd'])}")
        args = [arg for change in changes for arg in ("--change", change)]
        engine.run("import", *args, str(filtered), target)
    return target


def _without_devices(saved: Path, out: Path) -> None:
    """The layers of a ``docker save`` archive (one, as imports have) minus special files."""
    with tarfile.open(saved) as outer:
        manifest = json.loads(_read(outer, "manifest.json"))
        layers = manifest[0]["Layers"]
        if len(layers) != 1:
            raise AssertionError(f"expected a single-layer import, got {len(layers)} layers")
        handle = outer.extractfile(layers[0])
        assert handle is not None
        with (
            tarfile.open(fileobj=handle, mode="r|") as layer,
            tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as result,
        ):
            for member in layer:
                if member.ischr() or member.isblk() or member.isfifo():
                    continue
                result.addfile(member, layer.extractfile(member) if member.isreg() else None)


def _read(archive: tarfile.TarFile, name: str) -> bytes:
    handle = archive.extractfile(name)
    assert handle is not None
    return handle.read()


def export_listing(engine: DockerEngine, image: str, workdir: Path) -> Listing:
    """The root filesystem of a container of ``image``, from ``docker export`` (a command is
    given, so that an image without CMD and ENTRYPOINT can be exported too)."""
    container = engine.run("create", "--entrypoint", "/", image).stdout.strip()
    try:
        tar = workdir / "export.tar"
        engine.run("export", "-o", str(tar), container)
    finally:
        engine.run("rm", "--force", container, check=False)
    listing = tar_listing(tar)
    tar.unlink()
    return listing


def tar_listing(path: Path) -> Listing:
    """A listing of a tar (hard links listed as the files they share content with)."""
    listing: Listing = {}
    with tarfile.open(path) as archive:
        for member in archive:
            name = member.name.removeprefix("./").strip("/")
            if name:
                _add(listing, archive, member, name)
    return listing


def layout_listing(layout: Path, tag: str) -> Listing:
    """The root filesystem of an image in an OCI layout, by applying its layer tars in order
    in memory (whiteouts and opaque directories as the image spec says), without unpacking."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        m
        for m in index["manifests"]
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag
    )

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.partition(":")[2]

    manifest = json.loads(blob(entry["digest"]).read_bytes())
    listing: Listing = {}
    for descriptor in manifest["layers"]:
        with tarfile.open(blob(descriptor["digest"]), "r|*") as archive:
            for member in archive:
                _apply(listing, archive, member)
    return listing


def _apply(listing: Listing, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    name = os.path.normpath(member.name).strip("/")
    if name == ".":
        return  # the root itself
    head, base = os.path.split(name)
    if base == ".wh..wh..opq":
        prefix = head + "/" if head else ""
        for path in [p for p in listing if p.startswith(prefix) and p != head]:
            del listing[path]
        return
    if base.startswith(".wh."):
        gone = os.path.join(head, base[len(".wh.") :])
        for path in [p for p in listing if p == gone or p.startswith(gone + "/")]:
            del listing[path]
        return
    old = listing.get(name)
    if old is not None and old[0] == "dir" and not member.isdir():
        for path in [p for p in listing if p.startswith(name + "/")]:
            del listing[path]
    _add(listing, archive, member, name)


def _add(listing: Listing, archive: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
    """List one tar member: type, mode, owner, and content digest or link target."""
    mode = member.mode & 0o7777
    if member.isdir():
        listing[name] = ("dir", mode, member.uid, member.gid, "")
    elif member.issym():
        listing[name] = ("symlink", 0o777, member.uid, member.gid, member.linkname)
    elif member.islnk():
        target = listing[member.linkname.removeprefix("./").strip("/")]
        listing[name] = ("file", mode, member.uid, member.gid, target[4])
    elif member.isreg():
        handle = archive.extractfile(member)
        assert handle is not None
        digest = hashlib.sha256(handle.read()).hexdigest()
        listing[name] = ("file", mode, member.uid, member.gid, digest)
    else:
        listing[name] = ("special", mode, member.uid, member.gid, "")


def differences(
    docker: Mapping[str, tuple[str, int, int, int, str]],
    oci: Mapping[str, tuple[str, int, int, int, str]],
    *,
    mount_points: Collection[str] = (),
    timestamped: Collection[str] = (".pyc",),
) -> dict[str, tuple[object, object]]:
    """Path -> (docker's, ours) for every path that differs, apart from the by-nature
    differences: :data:`CONTAINER_ARTIFACTS` (and directories docker made only to hold them),
    empty directories left at RUN ``mount_points`` by Docker 20.10's BuildKit (0.8; BuildKit
    0.11 removes them, as we do), and the contents of files that embed build times (bytecode
    written during a RUN carries its sources' mtimes in its header)."""

    def artifact(path: str) -> bool:
        return any(path == a or path.startswith(a + "/") for a in CONTAINER_ARTIFACTS)

    left = {p: v for p, v in docker.items() if not artifact(p)}
    right = {p: v for p, v in oci.items() if not artifact(p)}
    for point in mount_points:
        rel = point.strip("/")
        while rel and rel in left and rel not in right and left[rel][0] == "dir":
            if any(p.startswith(rel + "/") for p in left):
                break
            del left[rel]
            rel = os.path.dirname(rel)
    for path in [p for p in left if p not in right and left[p][0] == "dir"]:
        # A directory docker made for its artifacts (e.g. /etc in a scratch image).
        if not any(q.startswith(path + "/") for q in left) and any(
            a.startswith(path + "/") for a in CONTAINER_ARTIFACTS
        ):
            del left[path]
    found: dict[str, tuple[object, object]] = {}
    for path in sorted(set(left) | set(right)):
        a: tuple[object, ...] | None = left.get(path)
        b: tuple[object, ...] | None = right.get(path)
        if a is not None and b is not None and path.endswith(tuple(timestamped)):
            a, b = a[:4], b[:4]
        if a != b:
            found[path] = (a, b)
    return found

"""Helpers for the OCI backend tests: base images made here, builds, and outside checkers.

Base images are written with the standard library's ``tarfile`` and ``gzip`` (not with the
code under test), so reading them also checks that we accept layouts other tools make. The
busybox base holds the host's static busybox, a few applet links, ``/tmp``, and an
``/etc/passwd`` with ``root`` and ``app`` (uid 1000, gid 1000).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from imagedsl.backends import BuildRequest
from imagedsl.backends.oci.backend import OCIBackend, OCIBuild
from imagedsl.dsl import Stage
from imagedsl.planner import Plan, plan
from imagedsl.reporting import Reporter
from imagedsl.store import Store

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "cat", "ls", "stat", "id", "test", "true")
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:\n"


def sha256(data: bytes) -> str:
    """``sha256:<hex>`` of bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


Member = tuple[tarfile.TarInfo, bytes | None]


def member(
    name: str,
    *,
    data: bytes | None = None,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    linkname: str = "",
    uid: int = 0,
) -> Member:
    """One tar member for a crafted layer (any name, however hostile)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = uid
    info.mtime = 1_000_000
    info.linkname = linkname
    if data is not None:
        info.size = len(data)
    return info, data


def tar_bytes(members: Sequence[Member]) -> bytes:
    """An uncompressed tar of ``members``, in the order given (duplicates allowed)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, None if data is None else io.BytesIO(data))
    return out.getvalue()


def busybox_members() -> list[Member]:
    """The members of the busybox base layer."""
    members = [
        member("bin/", kind=tarfile.DIRTYPE, mode=0o755),
        member("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755),
    ]
    members += [
        member(f"bin/{a}", kind=tarfile.SYMTYPE, mode=0o777, linkname="busybox") for a in APPLETS
    ]
    members += [
        member("etc/", kind=tarfile.DIRTYPE, mode=0o755),
        member("etc/passwd", data=PASSWD.encode()),
        member("etc/group", data=GROUP.encode()),
        member("home/", kind=tarfile.DIRTYPE, mode=0o755),
        member("home/app/", kind=tarfile.DIRTYPE, mode=0o700, uid=1000),
        member("tmp/", kind=tarfile.DIRTYPE, mode=0o1777),
    ]
    return members


def write_layout(
    directory: Path,
    layers: Sequence[bytes],
    *,
    tag: str | None = "1",
    config: Mapping[str, Any] | None = None,
    compress: bool = True,
    history: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Write an OCI layout holding one image of ``layers`` (uncompressed tars); return the
    manifest digest."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest.partition(":")[2]).write_bytes(data)
        return digest

    descriptors = []
    for tar in layers:
        blob = gzip.compress(tar, mtime=0) if compress else tar
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
        descriptors.append({"mediaType": media, "digest": put(blob), "size": len(blob)})
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config or {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}),
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in layers]},
        "history": list(history)
        if history is not None
        else [{"created_by": f"test layer {i}"} for i in range(len(layers))],
    }
    config_bytes = json.dumps(image_config).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config_bytes),
                "size": len(config_bytes),
            },
            "layers": descriptors,
        }
    ).encode()
    manifest_digest = put(manifest)
    entry: dict[str, Any] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": len(manifest),
    }
    if tag:
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return manifest_digest


def make_busybox_layout(directory: Path, tag: str = "1") -> str:
    """An OCI layout with the busybox base; return ``oci:DIR:TAG``."""
    write_layout(directory, [tar_bytes(busybox_members())], tag=tag)
    return f"oci:{directory}:{tag}"


def read_image(layout: Path, tag: str | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(manifest digest, manifest, config) of an image in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    manifests = index["manifests"]
    if tag is not None:
        manifests = [
            m
            for m in manifests
            if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag
        ]
    assert len(manifests) == 1, manifests
    digest = manifests[0]["digest"]

    def blob(d: str) -> bytes:
        return (layout / "blobs" / "sha256" / d.partition(":")[2]).read_bytes()

    manifest = json.loads(blob(digest))
    config = json.loads(blob(manifest["config"]["digest"]))
    return digest, manifest, config


def layer_tar(layout: Path, descriptor: Mapping[str, Any]) -> bytes:
    """The uncompressed tar of a layer blob in a layout."""
    data: bytes = (
        layout / "blobs" / "sha256" / descriptor["digest"].partition(":")[2]
    ).read_bytes()
    if descriptor["mediaType"].endswith("+gzip"):
        data = gzip.decompress(data)
    elif descriptor["mediaType"].endswith("+zstd"):
        import zstandard

        data = bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return data


def layer_members(layout: Path, descriptor: Mapping[str, Any]) -> list[tarfile.TarInfo]:
    """The tar members of a layer blob in a layout, in order."""
    with tarfile.open(fileobj=io.BytesIO(layer_tar(layout, descriptor)), mode="r:") as archive:
        return archive.getmembers()


def layer_file(layout: Path, descriptor: Mapping[str, Any], name: str) -> bytes:
    """The content of the regular file ``name`` in a layer blob of a layout."""
    with tarfile.open(fileobj=io.BytesIO(layer_tar(layout, descriptor)), mode="r:") as archive:
        handle = archive.extractfile(name)
        assert handle is not None, f"{name} is not a regular file in the layer"
        return handle.read()


def build(
    stages: Mapping[str, Stage] | Stage,
    store: Store,
    *,
    target: str | None = None,
    output: str | None = None,
    tags: Sequence[str] = (),
    backend: OCIBackend | None = None,
) -> tuple[OCIBuild, Plan]:
    """Plan and build with the OCI backend as the CLI does."""

    if target is None and not isinstance(stages, Stage):
        target = list(stages)[-1]
    first = plan(stages, target, store=store, project="test")
    request = BuildRequest(output=output, tags=tuple(tags))
    outcome = (backend or OCIBackend()).build_image(
        first, request, store=store, reporter=Reporter()
    )
    return outcome, first


def tool(name: str) -> str | None:
    """A command-line tool on PATH (or in /usr/sbin, where runc lives)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def run(*argv: str, check: bool = True, env: Mapping[str, str] | None = None) -> str:
    """Run a command; return stdout (stderr included in the failure message)."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def rootfs_listing(root: Path) -> dict[str, tuple[str, int, int, int, str]]:
    """path -> (type, mode, uid, gid, content digest | link target) of an unpacked rootfs."""
    listing: dict[str, tuple[str, int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                listing[rel] = ("symlink", 0o777, st.st_uid, st.st_gid, os.readlink(path))
            elif path.is_dir():
                listing[rel] = ("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid, "")
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                listing[rel] = ("file", st.st_mode & 0o7777, st.st_uid, st.st_gid, digest)
    return listing


Check = Callable[[], None]

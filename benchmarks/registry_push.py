"""Benchmark pushing a 400 MB image to a loopback registry: imagedsl against ``skopeo copy``.

The same image (one config, layers of 200, 120, 60 and 20 MB of incompressible bytes) is kept
in an imagedsl store and, hard-linked, in an OCI layout. Each round starts two fresh
``docker-registry`` servers on loopback; skopeo copies the layout into one, imagedsl pushes
the store's image into the other, in alternating order. Then imagedsl pushes again with
nothing new (HEADs only). Prints medians and the targets of the registry issue: imagedsl's
push at most 1.0x skopeo's, a second push at most 0.2 s.

    python benchmarks/registry_push.py [--runs N] [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from _workload import Row, report

from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.mediatypes import OCI_MANIFEST
from imagedsl.registry.auth import DockerConfig
from imagedsl.registry.client import RegistryClient
from imagedsl.store import Store

LAYER_MB = (200, 120, 60, 20)
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
RATIO_TARGET = 1.0
NOTHING_NEW_TARGET = 0.2


def put(store: Store, data: bytes, media_type: str) -> Descriptor:
    """Write bytes as a store blob."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = store.blob_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return Descriptor(media_type=media_type, digest=digest, size=len(data))


def make_image(work: Path) -> tuple[Store, Path, Descriptor]:
    """The image in a store and in an OCI layout (hard links); the manifest descriptor."""
    store = Store(work / "store")
    layers = [put(store, os.urandom(mb << 20), LAYER) for mb in LAYER_MB]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
    }
    config_descriptor = put(store, json.dumps(config).encode(), CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor.to_json(),
        "layers": [d.to_json() for d in layers],
    }
    descriptor = put(store, json.dumps(manifest).encode(), OCI_MANIFEST)
    layout = work / "layout"
    shutil.rmtree(layout, ignore_errors=True)
    (layout / "blobs" / "sha256").mkdir(parents=True)
    for blob in (descriptor, config_descriptor, *layers):
        os.link(store.blob_path(blob.digest), layout / "blobs" / "sha256" / blob.digest[7:])
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entry = {**descriptor.to_json(), "annotations": {"org.opencontainers.image.ref.name": "b"}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return store, layout, descriptor


@contextmanager
def registry(workdir: Path) -> Iterator[str]:
    """A fresh ``docker-registry`` on a free loopback port; yields ``127.0.0.1:PORT``."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir.mkdir(parents=True)
    config = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "bench"},
    }
    (workdir / "config.yml").write_text(json.dumps(config))
    process = subprocess.Popen(
        [binary, "serve", str(workdir / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def median(values: list[float]) -> float:
    """The median."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="rounds (median reported)")
    parser.add_argument("--work", type=Path, default=Path("bench-work/registry"))
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        sys.exit("skopeo is needed (Debian: apt-get install skopeo)")
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store, layout, manifest = make_image(work)
    total = sum(LAYER_MB)
    print(f"image: {total} MB in {len(LAYER_MB)} layers; python {sys.version.split()[0]}")
    times: dict[str, list[float]] = {"skopeo copy": [], "imagedsl push": [], "nothing new": []}
    for run in range(args.runs):
        with (
            registry(work / f"reg-{run}-a") as skopeo_host,
            registry(work / f"reg-{run}-b") as our_host,
        ):
            order = ("skopeo", "imagedsl") if run % 2 == 0 else ("imagedsl", "skopeo")
            for who in order:
                if who == "skopeo":
                    target = f"docker://{skopeo_host}/bench:1"
                    started = time.perf_counter()
                    subprocess.run(
                        [
                            skopeo,
                            "copy",
                            "-q",
                            "--dest-tls-verify=false",
                            f"oci:{layout}:b",
                            target,
                        ],
                        check=True,
                    )
                    times["skopeo copy"].append(time.perf_counter() - started)
                else:
                    with RegistryClient(docker_config=DockerConfig()) as client:
                        started = time.perf_counter()
                        client.push(store, manifest, f"{our_host}/bench:1")
                        times["imagedsl push"].append(time.perf_counter() - started)
            with RegistryClient(docker_config=DockerConfig()) as client:
                started = time.perf_counter()
                result = client.push(store, manifest, f"{our_host}/bench:1")
                times["nothing new"].append(time.perf_counter() - started)
                assert result.bytes_uploaded == 0
    medians = {case: median(values) for case, values in times.items()}
    ratio = medians["imagedsl push"] / medians["skopeo copy"]
    for case, value in medians.items():
        rate = f"{total / value:7.0f} MB/s" if case != "nothing new" else ""
        print(f"{case:14} {value:7.3f} s  {rate}")
    print(f"ratio imagedsl/skopeo: {ratio:.2f}x (target <= {RATIO_TARGET:.1f}x)")
    print(f"second push: {medians['nothing new']:.3f} s (target <= {NOTHING_NEW_TARGET} s)")
    rows = [
        Row(f"push {total} MB to a registry", medians["imagedsl push"], "skopeo copy",
            medians["skopeo copy"], RATIO_TARGET),
        Row("push again, nothing new", medians["nothing new"], "(bound in s)", None,
            NOTHING_NEW_TARGET),
    ]  # fmt: skip
    report("Registry push (medians of one run)", rows, args.json)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

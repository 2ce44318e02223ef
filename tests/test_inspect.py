"""``imagedsl inspect`` on crafted images: dive's measure, changes, secrets, every source."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from imagedsl.api import BuildSession, inspect_image, push_image
from imagedsl.inspect import InspectReport
from imagedsl.inspect._tar import TarReader
from imagedsl.store import Store
from tests.support import docker as docker_support
from tests.support.cli import imagedsl
from tests.support.oci import member, tar_bytes, write_layout

PEM = b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAB3NzaC1yc2EAAAADAQABAAABAQ==\n"
TOKEN = b"GITHUB = 'ghp_" + b"x" * 36 + b"'\n"
DIR = tarfile.DIRTYPE


def crafted_layers() -> list[bytes]:
    """Three layers: a base; one that overwrites a file and deletes two (a .env among them);
    one that makes a directory opaque, deletes a directory and adds a token."""
    base = [
        member("etc/", kind=DIR, mode=0o755),
        member("etc/passwd", data=b"p" * 100),
        member("etc/ssl/", kind=DIR, mode=0o755),
        member("etc/ssl/a.crt", data=b"a" * 300),
        member("etc/ssl/b.crt", data=b"b" * 200),
        member("app/", kind=DIR, mode=0o755),
        member("app/big.bin", data=b"\0" * 5000),
        member("app/conf.txt", data=b"c" * 10),
        member("keys/", kind=DIR, mode=0o700),
        member("keys/deploy.pem", data=PEM),
        member("root/", kind=DIR, mode=0o700),
        member("root/.env", data=b"DB_PASSWORD=hunter22\n"),
        member("src/.git/config", data=b"[core]\n"),
        member("src/.git/HEAD", data=b"ref: refs/heads/main\n"),
    ]
    second = [
        member("app/conf.txt", data=b"C" * 12),
        member("app/.wh.big.bin", data=b""),
        member("root/.wh..env", data=b""),
    ]
    third = [
        member("app/.wh..wh..opq", data=b""),
        member("app/new.txt", data=b"n" * 7),
        member("app/settings.json", data=TOKEN),
        member("etc/.wh.ssl", data=b""),
    ]
    return [tar_bytes(base), tar_bytes(second), tar_bytes(third)]


HISTORY: list[dict[str, Any]] = [
    {"created_by": "base", "comment": "imagedsl base[0] build.py:3"},
    {"created_by": "ENV A=1", "empty_layer": True},
    {"created_by": "RUN change", "comment": "imagedsl app[2] build.py:7"},
    {"created_by": "COPY more", "comment": "imagedsl app[3] files-0 lib/helpers.py:12"},
]


@pytest.fixture(name="layout")
def fixture_layout(tmp_path: Path) -> Path:
    """An OCI layout (tag ``1``) of the crafted layers."""
    write_layout(tmp_path / "layout", crafted_layers(), history=HISTORY)
    return tmp_path / "layout"


def test_waste_and_efficiency_are_divess(layout: Path) -> None:
    """Overwritten and deleted paths count all their copies; a deleted directory counts what
    it held; efficiency is the smallest copies over all copies."""
    report = inspect_image(f"oci:{layout}:1")
    env = len(b"DB_PASSWORD=hunter22\n")
    assert report.wasted_bytes == 5000 + 22 + env
    assert {w.path: (w.bytes, w.layers) for w in report.wasted} == {
        "/app/big.bin": (5000, (0, 1)),
        "/app/conf.txt": (22, (0, 1)),
        "/root/.env": (env, (0, 1)),
    }
    singles = 100 + 300 + 200 + len(PEM) + len(b"[core]\n") + len(b"ref: refs/heads/main\n")
    singles += 7 + len(TOKEN) + 500  # new.txt, settings.py, and what deleting etc/ssl held
    assert report.efficiency == pytest.approx((singles + 10) / (singles + 5000 + 22 + env))
    assert report.size_bytes == sum(layer.content_bytes for layer in report.layers)
    assert [layer.wasted_bytes for layer in report.layers] == [5000 + 10 + env, 12, 0]


def test_layers_say_what_they_changed_and_which_step_made_them(layout: Path) -> None:
    """Added, changed and deleted counts per layer; the step and line from the history."""
    layers = inspect_image(f"oci:{layout}:1").layers
    assert [(layer.added, layer.changed, layer.deleted) for layer in layers] == [
        (9, 0, 0),
        (0, 1, 2),
        (2, 0, 1),
    ]
    assert [(layer.step, layer.file, layer.line) for layer in layers] == [
        ("base[0]", "build.py", 3),
        ("app[2]", "build.py", 7),
        ("app[3] files-0", "lib/helpers.py", 12),
    ]
    assert layers[0].compressed_bytes < layers[0].uncompressed_bytes


def test_secrets_in_any_layer_deleted_or_not(layout: Path) -> None:
    """Credentials are found by name and by content in every layer, and a credential a later
    layer deletes is reported as still shipping."""
    found = inspect_image(f"oci:{layout}:1").secrets
    secrets = {(s.path, s.layer, s.kind, s.deleted_later) for s in found}
    assert secrets == {
        ("/keys/deploy.pem", 0, "private-key", False),
        ("/root/.env", 0, "dotenv", True),
        ("/src/.git", 0, "git-directory", False),
        ("/app/settings.json", 2, "github-token", False),
    }


def test_the_same_image_from_every_local_source(layout: Path, tmp_path: Path) -> None:
    """An OCI layout, the same as an OCI archive, and as a docker-archive give one report."""
    expected = inspect_image(f"oci:{layout}:1")
    archive = tmp_path / "image.oci.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    docker_archive = write_docker_archive(layout, tmp_path / "image.docker.tar")
    for source in (f"oci-archive:{archive}:1", f"docker-archive:{docker_archive}"):
        assert same_measures(inspect_image(source), expected)


def test_registry_source(
    registry: docker_support.RegistryServer, layout: Path, tmp_path: Path
) -> None:
    """An image in a registry is pulled into the store and reported like its layout."""
    push_image(f"oci:{layout}:1", f"{registry.host}/inspected:1")
    store = Store(tmp_path / "store")
    pulled = inspect_image(f"{registry.host}/inspected:1", store=store)
    assert same_measures(pulled, inspect_image(f"oci:{layout}:1"))
    assert pulled.manifest_digest == inspect_image(f"oci:{layout}:1").manifest_digest


def test_oci_backend_records_step_and_line(tmp_path: Path) -> None:
    """An image the OCI backend builds names, per layer, the step and build-file line."""
    project = tmp_path / "project"
    (project / "site").mkdir(parents=True)
    (project / "site" / "index.html").write_text("<h1>hi</h1>\n")
    (project / "build.py").write_text(
        "import imagedsl as dsl\n"
        "\n"
        'src = dsl.context(".", ignore=["build.py"])\n'
        'site = dsl.scratch().copy(src.dir("site"), "/www").copy(src.dir("site"), "/again")\n'
    )
    session = BuildSession(project / "build.py", store=tmp_path / "store")
    session.build("oci", output=f"oci:{tmp_path / 'out'}:1")
    layers = inspect_image(f"oci:{tmp_path / 'out'}:1").layers
    assert [(layer.step, layer.file, layer.line) for layer in layers] == [
        ("site[1]", "build.py", 4),
        ("site[2]", "build.py", 4),
    ]


def test_tar_reader_agrees_with_tarfile(tmp_path: Path) -> None:
    """Long names (PAX and GNU), links and sizes read as tarfile reads them, from chunks cut
    anywhere."""
    long_name = "d/" + "x" * 150 + "/file"
    members = [
        member("d/", kind=DIR, mode=0o755),
        member(long_name, data=b"12345"),
        member("d/link", kind=tarfile.SYMTYPE, linkname="../" + "y" * 120),
        member("d/hard", kind=tarfile.LNKTYPE, linkname=long_name),
    ]
    pax = tar_bytes(members)
    gnu_buffer = tmp_path / "gnu.tar"
    with tarfile.open(gnu_buffer, "w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, None if data is None else io.BytesIO(data))
    for data in (pax, gnu_buffer.read_bytes()):
        pieces = iter([data[i : i + 700] for i in range(0, len(data), 700)])  # split anywhere
        found = TarReader.of_chunks(pieces).entries(lambda _p, _s: True, data_limit=1 << 20)
        read = [(e.path, e.type, e.size, e.link, e.data) for e in found]
        assert read == [
            ("d", "5", 0, "", None),
            (long_name, "0", 5, "", b"12345"),
            ("d/link", "2", 0, "../" + "y" * 120, None),
            ("d/hard", "1", 0, long_name, None),
        ]


def test_inspect_command(layout: Path, tmp_path: Path) -> None:
    """`imagedsl inspect` prints a table, or JSON with the documented top-level fields; an
    image that is not there is bad input (exit 2)."""
    store = tmp_path / "store"
    text = imagedsl("inspect", f"oci:{layout}:1", cwd=tmp_path, store=store)
    assert text.returncode == 0, text.stderr
    assert "efficiency" in text.stdout
    assert "secret: /root/.env (dotenv) in layer 0, deleted later" in text.stdout
    shown = imagedsl("inspect", f"oci:{layout}:1", "--json", cwd=tmp_path, store=store)
    data = json.loads(shown.stdout)
    assert set(data) >= {"schema", "image", "layers", "size_bytes", "wasted_bytes",
                         "efficiency", "wasted", "secrets"}  # fmt: skip
    assert data["schema"] == 1
    assert set(data["wasted"][0]) == {"path", "bytes", "layers"}
    assert set(data["secrets"][0]) == {"path", "layer", "kind", "deleted_later"}
    missing = imagedsl("inspect", f"oci:{tmp_path / 'nothing'}:1", cwd=tmp_path, store=store)
    assert missing.returncode == 2


# -- helpers -----------------------------------------------------------------------------------


def same_measures(one: InspectReport, other: InspectReport) -> bool:
    """Whether two reports measure the same (sizes, waste, efficiency, secrets, changes)."""

    def measures(report: InspectReport) -> object:
        return (
            report.size_bytes,
            report.wasted_bytes,
            report.efficiency,
            report.wasted,
            report.secrets,
            [(x.content_bytes, x.added, x.changed, x.deleted, x.step) for x in report.layers],
        )

    return measures(one) == measures(other)


def write_docker_archive(layout: Path, target: Path) -> Path:
    """The image of an OCI layout as ``docker save`` writes it (uncompressed layer tars)."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    config_hex = manifest["config"]["digest"][7:]
    names = []
    with tarfile.open(target, "w") as tar:
        tar.add(blobs / config_hex, arcname=f"{config_hex}.json")
        for i, layer in enumerate(manifest["layers"]):
            data = gzip.decompress((blobs / layer["digest"][7:]).read_bytes())
            path = target.parent / f"layer{i}.tar"
            path.write_bytes(data)
            tar.add(path, arcname=f"layer{i}/layer.tar")
            names.append(f"layer{i}/layer.tar")
        listing = json.dumps(
            [{"Config": f"{config_hex}.json", "RepoTags": ["x:1"], "Layers": names}]
        )
        info = tarfile.TarInfo("manifest.json")
        info.size = len(listing)
        tar.addfile(info, io.BytesIO(listing.encode()))
    return target


def test_tar_reader_by_position_agrees_with_chunks(tmp_path: Path) -> None:
    """An uncompressed tar read by position gives what its chunks give, and reads only the
    files it is asked for."""
    data = tar_bytes(
        [member("a.py", data=b"print()\n" * 100), member("b.conf", data=b"k=v\n"),
         member("big.bin", data=b"\0" * 70_000)]
    )  # fmt: skip
    path = tmp_path / "layer.tar"
    path.write_bytes(b"junk" + data)

    def wants(path: str, _size: int) -> bool:
        return path.endswith(".conf")

    chunked = TarReader.of_chunks(iter([data[:3000], data[3000:]]))
    expected = [(e.path, e.size, e.data) for e in chunked.entries(wants, data_limit=65536)]
    with path.open("rb") as handle:
        positional = TarReader.at(handle.fileno(), 4, len(data))
        found = [(e.path, e.size, e.data) for e in positional.entries(wants, data_limit=65536)]
    assert found == expected
    assert found == [("a.py", 800, None), ("b.conf", 4, b"k=v\n"), ("big.bin", 70_000, None)]

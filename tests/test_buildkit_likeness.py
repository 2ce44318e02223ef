"""Images from the OCI backend behave like BuildKit's where users notice: ``SOURCE_DATE_EPOCH``
in RUN (so ``.pyc`` files stay valid), the base annotation, archive names, ``--chown`` on
created parents, large epochs, tag grammar and non-UTF-8 names."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl._epoch import MAX_EPOCH, EpochError
from imagedsl.backends import BuildRequest, BuildRequestError
from imagedsl.backends.oci.backend import OCIBackend, OCIBuild
from imagedsl.dsl import Stage
from imagedsl.planner import plan
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from tests.support import oci as oci_support
from tests.support.cli import imagedsl_on
from tests.support.docker import DockerEngine
from tests.support.equivalence import ensure_nodev_image
from tests.support.oci import layer_members, read_image

#: Root and runc, or a skip that fails under IMAGEDSL_REQUIRE_DOCKER=1 (tests.support.skips).
needs_runc = pytest.mark.usefixtures("run_runtime")


@pytest.fixture(name="base", scope="module")
def fixture_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``oci:DIR:1``: the busybox base (``app`` is uid 1000)."""
    return oci_support.make_busybox_layout(tmp_path_factory.mktemp("base"))


@pytest.fixture(name="tag")
def fixture_tag(docker_engine: DockerEngine) -> Iterator[str]:
    """A unique image name, removed afterwards."""
    tag = f"imagedsl-test/likeness-{uuid.uuid4().hex[:12]}"
    yield tag
    docker_engine.run("image", "rm", "--force", f"{tag}:1", f"{tag}:2", check=False)


def _build(
    stages: dict[str, Stage], store: Store, *, epoch: int = 0, output: str | None = None
) -> OCIBuild:
    target = list(stages)[-1]
    planned = plan(stages, target, store=store, project="test", source_date_epoch=epoch)
    return OCIBackend(epoch=epoch).build_image(
        planned, BuildRequest(output=output), store=store, reporter=Reporter()
    )


# -- SOURCE_DATE_EPOCH --------------------------------------------------------------------------


@needs_runc
@pytest.mark.parametrize("epoch", [0, 1_700_000_000])
def test_a_run_sees_source_date_epoch_only_when_its_stage_declares_it(
    base: str, tmp_path: Path, epoch: int
) -> None:
    """As under BuildKit, the build's epoch is not in a RUN's environment; an ``ARG
    SOURCE_DATE_EPOCH`` with a value puts that value there, as any ARG."""
    dump = "echo ${SOURCE_DATE_EPOCH-unset} > /epoch"
    for stage, expected in [
        (dsl.image(base).run(dump), b"unset\n"),
        (dsl.image(base).arg("SOURCE_DATE_EPOCH", "77").run(dump), b"77\n"),
    ]:
        out = tmp_path / f"o-{expected.decode().strip()}"
        built = _build({"a": stage}, Store(tmp_path / "s"), epoch=epoch, output=f"oci:{out}")
        _, manifest, _ = read_image(out)
        data = out / "blobs" / "sha256" / manifest["layers"][-1]["digest"][7:]
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data.read_bytes()))) as layer:
            member = layer.getmember("epoch")
            seen = layer.extractfile(member).read()  # type: ignore[union-attr]
        assert seen == expected
        assert member.mtime == epoch
        assert built.result.digest is not None


def test_source_date_epoch_is_in_the_run_key_only(base: str) -> None:
    """Another epoch is another RUN key (the RUN writes other bytes); COPY and config steps,
    whose keys do not depend on it, keep theirs."""
    stage = dsl.image(base).env(A="1").run("python3 -m compileall /app")
    zero = plan(stage, "a", source_date_epoch=0)
    later = plan(stage, "a", source_date_epoch=1_700_000_000)
    assert [s.key for s in zero.steps[:-1]] == [s.key for s in later.steps[:-1]]
    assert zero.steps[-1].key != later.steps[-1].key
    assert later.steps[-1].node.preimage["source_date_epoch"] == 1_700_000_000


def test_the_plan_follows_the_environment_as_the_backend_does(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an argument, plan and backend both take ``$SOURCE_DATE_EPOCH``."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    planned = plan(dsl.image(base).run("true"), "a")
    assert planned.graph.source_date_epoch == OCIBackend().epoch == 1234


def test_a_plan_keyed_for_another_epoch_is_refused(base: str, tmp_path: Path) -> None:
    """A RUN keyed for epoch 0 cannot be built with epoch 5: its key would lie."""
    store = Store(tmp_path / "s")
    planned = plan(dsl.image(base).run("true"), "a", store=store, source_date_epoch=0)
    with pytest.raises(BuildRequestError, match="SOURCE_DATE_EPOCH=0"):
        OCIBackend(epoch=5).build_image(planned, BuildRequest(), store=store, reporter=Reporter())


def test_pyc_written_by_a_run_is_used_at_start(
    docker_engine: DockerEngine, debian_python_image: str, tmp_path: Path, tag: str
) -> None:
    """A module a RUN writes and compiles (as pip does, timestamp ``.pyc`` files) is imported
    from its ``.pyc`` when a container starts, ``python3 -v`` says so, though the layer gives the
    source the epoch as its mtime; so is one compiled by a later RUN from a source in a layer
    below. A ``.pyc`` already stale when its RUN ended stays stale, as under BuildKit."""
    write = "mkdir -p {d} && printf 'VALUE = 1\\n' > {d}/mod.py"
    compile_ = "python3 -m compileall -q {d}"
    stale = "touch -d @12345 {d}/mod.py"
    nodev = ensure_nodev_image(
        docker_engine, debian_python_image
    )  # the OCI backend refuses devices
    stage = (
        dsl.image(f"docker-daemon:{nodev}")
        .run(f"{write.format(d='/app')} && {compile_.format(d='/app')}")
        .run(write.format(d="/below"))
        .run(compile_.format(d="/below"))
        .run(f"{write.format(d='/old')} && {compile_.format(d='/old')} && {stale.format(d='/old')}")
    )
    backend = OCIBackend(engine=lambda: docker_engine, epoch=1_700_000_000)
    store = Store(tmp_path / "s")
    planned = plan(stage, "a", store=store, source_date_epoch=1_700_000_000)
    backend.build_image(
        planned, BuildRequest(output=f"docker:{tag}:1"), store=store, reporter=Reporter()
    )

    def imported(directory: str) -> str:
        return docker_engine.run(
            "run", "--rm", "-e", "PYTHONDONTWRITEBYTECODE=1", "-e", f"PYTHONPATH={directory}",
            f"{tag}:1", "python3", "-v", "-c", "import mod",
        ).stderr  # fmt: skip

    for directory in ("/app", "/below"):
        used = imported(directory)
        assert f"{directory}/__pycache__/mod.cpython-311.pyc matches {directory}/mod.py" in used
        assert f"code object from '{directory}/__pycache__/mod.cpython-311.pyc'" in used
    assert "bytecode is stale for 'mod'" in imported("/old")


# -- the base annotation --------------------------------------------------------------------------


def test_the_base_annotation_is_a_name_and_a_digest_never_a_path(base: str, tmp_path: Path) -> None:
    """The same archive at two paths makes the same image: ``base.name`` is the name inside
    the archive (its RepoTags), ``base.digest`` its content digest, and no local path is in
    the manifest or the config."""
    store = Store(tmp_path / "s")
    first = tmp_path / "one" / "base.tar"
    _build({"b": dsl.image(base)}, store, output=f"docker-archive:{first}:myorg/base:1")
    second = tmp_path / "elsewhere" / "copy.tar"
    second.parent.mkdir()
    shutil.copy(first, second)
    digests = []
    for archive in (first, second):
        out = tmp_path / f"out-{archive.parent.name}"
        built = _build(
            {"a": dsl.image(f"docker-archive:{archive}").cmd("x")}, store, output=f"oci:{out}"
        )
        digests.append(built.image.manifest_digest)
        _, manifest, config = read_image(out)
        annotations = manifest["annotations"]
        assert annotations["org.opencontainers.image.base.name"] == "docker.io/myorg/base:1"
        assert annotations["org.opencontainers.image.base.digest"].startswith("sha256:")
        text = json.dumps([manifest, config])
        assert str(tmp_path) not in text
    assert digests[0] == digests[1]


def test_an_unnamed_layout_base_has_no_base_name(base: str, tmp_path: Path) -> None:
    """A layout without an image name gives ``base.digest`` only."""
    built = _build(
        {"a": dsl.image(base).cmd("x")}, Store(tmp_path / "s"), output=f"oci:{tmp_path / 'o'}"
    )
    _, manifest, _ = read_image(tmp_path / "o")
    assert "org.opencontainers.image.base.name" not in manifest["annotations"]
    assert built.image.manifest_digest


# -- archive names and tags -----------------------------------------------------------------------


def _archive_names(archive: Path) -> tuple[list[str], list[str | None]]:
    with tarfile.open(archive) as tar:
        docker = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    refs = [
        (m.get("annotations") or {}).get("org.opencontainers.image.ref.name")
        for m in index["manifests"]
    ]
    return docker[0]["RepoTags"], refs


@pytest.mark.parametrize(
    ("tag", "repo_tags"),
    [
        pytest.param("1.0", ["app:1.0"], id="bare-tag"),
        pytest.param("myorg/app:1.0", ["myorg/app:1.0"], id="name-and-tag"),
        pytest.param("myorg/app", ["myorg/app:latest"], id="name"),
    ],
)
def test_an_archive_tag_without_a_name_takes_the_files_name(
    base: str, tmp_path: Path, tag: str, repo_tags: list[str]
) -> None:
    """``oci-archive:app.tar:1.0`` (the docs' example) is ``app:1.0`` to Docker, not
    ``1.0:latest``; the layout's ``ref.name`` stays the tag as written (what skopeo reads)."""
    archive = tmp_path / "app.tar"
    _build({"a": dsl.image(base)}, Store(tmp_path / "s"), output=f"oci-archive:{archive}:{tag}")
    assert _archive_names(archive) == (repo_tags, [tag])


def test_docker_loads_an_archive_under_the_files_name(
    docker_engine: DockerEngine, tmp_path: Path, tag: str
) -> None:
    """``docker load`` of ``NAME.tar:1`` gives the image ``NAME:1``."""
    name = tag.rsplit("/", 1)[1]
    archive = tmp_path / f"{name}.tar"
    base = tmp_path / "base"
    oci_support.make_busybox_layout(base)
    _build(
        {"a": dsl.image(f"oci:{base}:1")}, Store(tmp_path / "s"), output=f"oci-archive:{archive}:1"
    )
    loaded = docker_engine.run("load", "-i", str(archive)).stdout
    try:
        assert f"Loaded image: {name}:1" in loaded
    finally:
        docker_engine.run("image", "rm", "--force", f"{name}:1", check=False)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--output", "oci:{out}:v 1"], id="space-in-output-tag"),
        pytest.param(["--output", "oci:{out}:-v1"], id="leading-dash"),
        pytest.param(["--output", "oci:{out}", "-t", "a..b"], id="double-dot-in-t"),
        pytest.param(["--output", "oci-archive:{out}.tar:Ü"], id="non-ascii"),
    ],
)
def test_tags_are_checked_against_the_oci_grammar(
    base: str, tmp_path: Path, args: list[str]
) -> None:
    """A tag the OCI ``ref.name`` grammar refuses is an input error (exit 2, one line)."""
    (tmp_path / "build.py").write_text(f"import imagedsl as dsl\napp = dsl.image({base!r})\n")
    out = str(tmp_path / "out")
    result = subprocess.run(
        [sys.executable, "-m", "imagedsl", "build", "build.py", "--backend", "oci",
         *[a.format(out=out) for a in args]],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "IMAGEDSL_STORE": str(tmp_path / "s")},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "is not a valid tag" in result.stderr
    assert not Path(out).exists()


# -- --chown on created parents --------------------------------------------------------------------


def test_chown_and_user_own_the_parents_they_create(base: str, tmp_path: Path) -> None:
    """``COPY --chown=app`` into a new ``/new1/new2/`` and ``WORKDIR /wd1/wd2`` under ``USER
    app`` give every directory they create to app (uid 1000); existing ones keep theirs."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("hi\n")
    stage = (
        dsl.image(base)
        .user("app")
        .workdir("/wd1/wd2/data")
        .user("root")
        .copy(dsl.context(ctx).file("f"), "/new1/new2/f", chown="app:app")
        .copy(dsl.context(ctx).file("f"), "/etc/f2", chown="app:app")
    )
    _build({"a": stage}, Store(tmp_path / "s"), output=f"oci:{tmp_path / 'o'}")
    _, manifest, _ = read_image(tmp_path / "o")
    owners = {}
    for layer in manifest["layers"][1:]:
        owners.update({m.name: m.uid for m in layer_members(tmp_path / "o", layer)})
    assert {p: owners[p] for p in ("wd1", "wd1/wd2", "wd1/wd2/data")} == dict.fromkeys(
        ("wd1", "wd1/wd2", "wd1/wd2/data"), 1000
    )
    assert {p: owners[p] for p in ("new1", "new1/new2", "new1/new2/f")} == dict.fromkeys(
        ("new1", "new1/new2", "new1/new2/f"), 1000
    )
    assert owners["etc"] == 0  # it existed: it keeps its owner
    assert owners["etc/f2"] == 1000


def _succeeds(engine: DockerEngine, project: Path, *args: str) -> None:
    """``python -m imagedsl ARGS`` in ``project`` against ``engine`` (store ``project/s``);
    it must succeed."""
    result = imagedsl_on(engine, *args, cwd=project, store=project / "s")
    assert result.returncode == 0, result.stderr


def test_created_parents_match_buildkit(
    docker_engine: DockerEngine, debian_python_image: str, tmp_path: Path, tag: str
) -> None:
    """The docker backend (BuildKit itself) and the OCI backend give created parents the
    same owners."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("hi\n")
    paths = ["/wd1", "/wd1/wd2", "/new1", "/new1/new2", "/new1/new2/f"]
    nodev = ensure_nodev_image(docker_engine, debian_python_image)  # the same bytes for both
    (tmp_path / "build.py").write_text(
        "import imagedsl as dsl\n"
        f"app = (dsl.image({nodev!r}).user('1000').workdir('/wd1/wd2').user('0')\n"
        "       .copy(dsl.context('ctx').file('f'), '/new1/new2/f', chown='1000:1000'))\n"
        f"oci = (dsl.image('docker-daemon:{nodev}').user('1000').workdir('/wd1/wd2')\n"
        "       .user('0').copy(dsl.context('ctx').file('f'), '/new1/new2/f', chown='1000:1000'))\n"
    )

    def cli(*args: str) -> None:
        _succeeds(docker_engine, tmp_path, *args)

    cli("build", "build.py:app", "--backend", "docker", "-t", f"{tag}:1")
    cli("build", "build.py:oci", "--backend", "oci", "--output", f"docker:{tag}:2")
    owners = []
    for image in (f"{tag}:1", f"{tag}:2"):
        stat = docker_engine.run("run", "--rm", image, "stat", "-c", "%n %u", *paths).stdout
        owners.append(stat.split("\n"))
    assert owners[0] == owners[1]
    assert "/new1 1000" in owners[0]


# -- epochs and names in tar headers ----------------------------------------------------------------


def test_epochs_past_the_tar_mtime_field_are_refused(
    base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SOURCE_DATE_EPOCH`` of 8589934592 (8**11) or more would overflow a tar header's
    mtime: refused (exit 2); the largest that fits makes layers that read back."""
    with pytest.raises(EpochError):
        OCIBackend(epoch=8**11)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(8**11))
    with pytest.raises(EpochError) as caught:
        OCIBackend()
    assert caught.value.exit_code == 2
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("x")
    stage = dsl.image(base).copy(dsl.context(ctx).file("f"), "/f")
    _build({"a": stage}, Store(tmp_path / "s"), epoch=MAX_EPOCH, output=f"oci:{tmp_path / 'o'}")
    _, manifest, _ = read_image(tmp_path / "o")
    assert {m.mtime for m in layer_members(tmp_path / "o", manifest["layers"][-1])} == {MAX_EPOCH}


def test_non_utf8_names_are_marked_binary(base: str, tmp_path: Path) -> None:
    """A context file whose name is not UTF-8 goes into the layer with ``hdrcharset=BINARY``
    beside its PAX path, and reads back as the same bytes."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    raw = b"caf\xe9.txt"
    (ctx / os.fsdecode(raw)).write_text("x")
    stage = dsl.image(base).copy(dsl.context(ctx), "/data/")
    _build({"a": stage}, Store(tmp_path / "s"), output=f"oci:{tmp_path / 'o'}")
    _, manifest, _ = read_image(tmp_path / "o")
    members = {m.name: m for m in layer_members(tmp_path / "o", manifest["layers"][-1])}
    odd = members["data/" + os.fsdecode(raw)]
    assert odd.pax_headers.get("hdrcharset") == "BINARY"
    assert os.fsencode(odd.name) == b"data/" + raw


# -- MAINTAINER: the config's author -----------------------------------------------------------


def test_the_base_images_author_is_kept_until_maintainer_sets_one(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path, tag: str
) -> None:
    """A build FROM an image whose config has an ``author`` keeps it (BuildKit copies the
    base's config), and a MAINTAINER replaces it: the same with both backends."""
    base = f"{tag}:1"
    docker_engine.run(
        "build", "-q", "-t", base, "-", input=f"FROM {busybox_image}\nMAINTAINER the base\n"
    )
    (tmp_path / "build.py").write_text(
        "import imagedsl as dsl\n"
        f"kept = dsl.image({base!r}).env(A='1')\n"
        f"kept_oci = dsl.image('docker-daemon:{base}').env(A='1')\n"
        f"set = dsl.image({base!r}).author('the build')\n"
        f"set_oci = dsl.image('docker-daemon:{base}').author('the build')\n"
    )

    def cli(*args: str) -> None:
        _succeeds(docker_engine, tmp_path, *args)

    authors = {}
    for target in ("kept", "set"):
        cli("build", f"build.py:{target}", "--backend", "docker", "-t", f"{tag}:2")
        inspected = docker_engine.run("image", "inspect", "--format", "{{.Author}}", f"{tag}:2")
        cli(
            "build",
            f"build.py:{target}_oci",
            "--backend",
            "oci",
            "--output",
            f"oci:{tmp_path / target}",
        )
        _, _, config = read_image(tmp_path / target)
        authors[target] = (inspected.stdout.strip(), config.get("author"))
    assert authors == {"kept": ("the base", "the base"), "set": ("the build", "the build")}

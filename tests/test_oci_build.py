"""Building images with the OCI backend: config, caching, reproducibility, COPY variants."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

import imagedsl as dsl
from imagedsl import api
from imagedsl._forked import ForkedJobs
from imagedsl.backends import BuildRequest, BuildRequestError
from imagedsl.backends.oci.backend import OCIBackend
from imagedsl.backends.oci.layer import LayerError
from imagedsl.backends.oci.outputs import Output
from imagedsl.planner import PlanStatus, plan
from imagedsl.reporting import Reporter
from imagedsl.store import Store, StoreArea
from tests.support import oci
from tests.support.oci import build, layer_members, read_image
from tests.support.skips import require_root


@pytest.fixture(name="base", scope="module")
def fixture_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``oci:DIR:1``: the busybox base as an OCI layout."""
    return oci.make_busybox_layout(tmp_path_factory.mktemp("base"))


@pytest.fixture(name="ctx")
def fixture_ctx(tmp_path: Path) -> Path:
    """A small build context: an app directory, a lock file, a symlink."""
    root = tmp_path / "ctx"
    (root / "app" / "pkg").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('main')\n")
    (root / "app" / "pkg" / "util.py").write_text("X = 1\n")
    (root / "app" / "run.sh").write_text("#!/bin/sh\necho hello from app\n")
    (root / "app" / "run.sh").chmod(0o755)
    (root / "app" / "current").symlink_to("main.py")
    (root / "requirements.txt").write_text("attrs==23.1\n")
    return root


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path) -> Store:
    """A fresh store."""
    return Store(tmp_path / "store")


def test_config_history_and_annotations(base: str, ctx: Path, store: Store, tmp_path: Path) -> None:
    """Config steps land in the image config, one history entry per step, standard annotations."""
    src = dsl.context(ctx)
    app = (
        dsl.image(base)
        .env(APP_HOME="/app")
        .env(GREETING="hi $APP_HOME")
        .workdir("/app")
        .copy(src.dir("app"), ".")
        .user("app")
        .label({"org.opencontainers.image.title": "demo", "home": "$APP_HOME"})
        .expose(8080, "53/udp")
        .volume("/data")
        .entrypoint(["/bin/sh"])
        .cmd(["/app/run.sh"])
        .healthcheck(["/bin/true"], interval="30s", timeout=5, retries=3)
        .stopsignal("TERM")
    )
    outcome, _ = build({"app": app}, store, output=f"oci:{tmp_path / 'out'}:v1")
    digest, manifest, config = read_image(tmp_path / "out", "v1")
    assert digest == outcome.image.manifest_digest
    container = config["config"]
    assert container["Env"] == ["PATH=/bin", "APP_HOME=/app", "GREETING=hi /app"]
    assert container["WorkingDir"] == "/app"
    assert container["User"] == "app"
    assert container["Labels"] == {"org.opencontainers.image.title": "demo", "home": "/app"}
    assert container["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert container["Volumes"] == {"/data": {}}
    assert container["Entrypoint"] == ["/bin/sh"]
    assert container["Cmd"] == ["/app/run.sh"]
    assert container["Healthcheck"] == {
        "Test": ["CMD", "/bin/true"],
        "Interval": 30 * 10**9,
        "Timeout": 5 * 10**9,
        "Retries": 3,
    }
    assert container["StopSignal"] == "TERM"  # as written, as BuildKit keeps it
    history = config["history"]
    assert len(history) == 1 + 12  # the base layer, then every step after FROM
    assert len([h for h in history if not h.get("empty_layer")]) == len(manifest["layers"])
    assert history[4]["created_by"] == "COPY app . # imagedsl"
    annotations = manifest["annotations"]
    assert annotations["org.opencontainers.image.created"] == "1970-01-01T00:00:00Z"
    # The base is a layout with no image name: no base.name, never its local path (issue 14).
    assert "org.opencontainers.image.base.name" not in annotations
    base_digest, _, _ = read_image(Path(base.split(":")[1]), "1")
    assert annotations["org.opencontainers.image.base.digest"] == base_digest
    assert manifest["layers"][0]["digest"] in {
        d["digest"] for d in read_image(Path(base.split(":")[1]), "1")[1]["layers"]
    }


def test_entrypoint_resets_inherited_cmd(base: str, store: Store) -> None:
    """ENTRYPOINT drops the base's CMD unless this stage set CMD, as in a Dockerfile."""
    only_entry, _ = build({"a": dsl.image(base).entrypoint("/bin/echo")}, store)
    config = json.loads(store.blob_path(only_entry.image.config_digest).read_bytes())
    assert "Cmd" not in config["config"]
    both, _ = build({"a": dsl.image(base).cmd(["x"]).entrypoint("/bin/echo", shell=False)}, store)
    config = json.loads(store.blob_path(both.image.config_digest).read_bytes())
    assert config["config"]["Cmd"] == ["x"]
    shell, _ = build({"a": dsl.image(base).cmd("echo $HOME", shell=True)}, store)
    config = json.loads(store.blob_path(shell.image.config_digest).read_bytes())
    assert config["config"]["Cmd"] == ["/bin/sh", "-c", "echo $HOME"]


def test_rebuild_compresses_nothing_and_plan_hits(
    base: str, ctx: Path, store: Store, tmp_path: Path
) -> None:
    """A second build of unchanged inputs writes no layer and only copies the output."""
    src = dsl.context(ctx)
    app = dsl.image(base).copy(src.file("requirements.txt"), "/app/").copy(src.dir("app"), "/app")
    stages = {"app": app}
    first, planned = build(stages, store, output=f"oci:{tmp_path / 'one'}")
    assert [s.status for s in planned.steps] == [PlanStatus.MISS] * 3
    assert first.stats.layers_written == 2
    after = plan(stages, "app", store=store, project="test")
    assert [s.status for s in after.steps] == [PlanStatus.HIT] * 3
    second, _ = build(stages, store, output=f"oci:{tmp_path / 'two'}")
    assert second.stats.layers_written == 0
    assert second.stats.bytes_compressed == 0
    assert second.image.manifest_digest == first.image.manifest_digest
    layer = second.image.layers[-1].digest.partition(":")[2]
    copied = tmp_path / "two" / "blobs" / "sha256" / layer
    stored = store.area(StoreArea.BLOBS) / layer
    # A copy, never a hard link: editing the output cannot change the store (issue 14).
    assert copied.stat().st_ino != stored.stat().st_ino
    assert copied.read_bytes() == stored.read_bytes()


def test_edit_rebuilds_only_the_changed_layer(base: str, ctx: Path, store: Store) -> None:
    """Editing a file rebuilds the COPY that holds it; the base and other layers are reused."""
    src = dsl.context(ctx)
    app = dsl.image(base).copy(src.file("requirements.txt"), "/app/").copy(src.dir("app"), "/app")
    first, _ = build({"app": app}, store)
    (ctx / "app" / "main.py").write_text("print('edited')\n")
    second, planned = build({"app": app}, store)
    assert [s.status for s in planned.steps] == [PlanStatus.HIT, PlanStatus.HIT, PlanStatus.MISS]
    assert second.stats.layers_written == 1
    assert second.image.layers[:2] == first.image.layers[:2]
    assert second.image.layers[2] != first.image.layers[2]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("oci", id="no-path"),
        pytest.param("tar:/x", id="unknown-kind"),
        pytest.param("oci-archive:", id="empty-path"),
    ],
)
def test_bad_output_is_refused(text: str) -> None:
    """An output spec that names nothing usable is a BuildRequestError."""
    with pytest.raises(BuildRequestError):
        Output.parse(text)


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        pytest.param("docker:org/UpperCase:v1", (), id="docker-output"),
        pytest.param("docker", ("Org/app:1",), id="docker-output-from-t"),
        pytest.param("docker-archive:/x/app.tar:Org/App:1", (), id="docker-archive"),
    ],
)
def test_a_name_docker_would_not_tag_is_refused_before_building(
    text: str, tags: tuple[str, ...]
) -> None:
    """Docker loads an image under an upper-case repository untagged: the build reported a
    name it did not make (and a docker-archive held no RepoTags). Refused up front now."""
    with pytest.raises(BuildRequestError, match="not an image name Docker accepts"):
        Output.parse(text, tags)


def test_an_oci_archive_keeps_a_name_docker_has_no_spelling_for() -> None:
    """An OCI archive's index may name ``Org/App:1``; only its Docker manifest leaves it out."""
    output = Output.parse("oci-archive:/x/app.tar:Org/App:1")
    assert output.tag == "Org/App:1"
    assert output.docker_names() == ()


def _copy_tree_differently(source: Path, dest: Path, *, mtime: int, umask: int, uid: int) -> None:
    """Copy a context changing only what must not matter: mtime, owner, umask, directory."""
    shutil.copytree(source, dest, symlinks=True)
    for path in [dest, *dest.rglob("*")]:
        if path.is_symlink():
            os.lchown(path, uid, uid)
            continue
        mode = path.stat().st_mode & 0o777
        path.chmod(mode & ~umask | (0o100 if mode & 0o100 else 0))
        os.chown(path, uid, uid)
        os.utime(path, (mtime, mtime))


def test_reproducible_across_checkouts(base: str, ctx: Path, tmp_path: Path) -> None:
    """Same build.py and inputs give the same manifest digest whatever mtime, owner, umask and
    checkout directory the sources have (two stores, so nothing is shared)."""
    require_root("changing file owners needs root")
    digests = []
    for i, (mtime, umask, uid) in enumerate(
        [(1_000_000_000, 0o022, 0), (1_600_000_000, 0o077, 4321)]
    ):
        checkout = tmp_path.joinpath(f"checkout-{i}", *["deeper"] * i, "ctx")
        _copy_tree_differently(ctx, checkout, mtime=mtime, umask=umask, uid=uid)
        src = dsl.context(checkout)
        app = (
            dsl.image(base)
            .copy(src.file("requirements.txt"), "/app/")
            .copy(src.dir("app"), "/app", layers="auto")
            .cmd("/app/run.sh")
        )
        outcome, _ = build({"app": app}, Store(tmp_path / f"store-{i}"))
        digests.append(outcome.image.manifest_digest)
    assert digests[0] == digests[1]


def test_source_date_epoch_sets_mtimes_and_created(base: str, ctx: Path, store: Store) -> None:
    """SOURCE_DATE_EPOCH (here passed explicitly) is every mtime and the creation time."""
    src = dsl.context(ctx)
    stages = {"app": dsl.image(base).copy(src.dir("app"), "/app")}
    plain, _ = build(stages, store)
    dated, _ = build(stages, store, backend=OCIBackend(epoch=1_700_000_000))
    assert plain.image.manifest_digest != dated.image.manifest_digest
    config = json.loads(store.blob_path(dated.image.config_digest).read_bytes())
    assert config["created"] == "2023-11-14T22:13:20Z"
    blob = store.blob_path(dated.image.layers[-1].digest).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as archive:
        assert {m.mtime for m in archive.getmembers()} == {1_700_000_000}


def test_copy_modes_owners_and_existing_parents(
    base: str, ctx: Path, store: Store, tmp_path: Path
) -> None:
    """chown/chmod apply to what is copied; a directory that exists below keeps its owner and
    mode; symlinks are kept; context modes are normalised (0644 / 0755)."""
    (ctx / "app" / "main.py").chmod(0o600)
    src = dsl.context(ctx)
    app = (
        dsl.image(base)
        .copy(src.dir("app"), "/home/app/", chown="app:staff")
        .copy(src.file("requirements.txt"), "/opt/req.txt", chmod="640")
    )
    build({"app": app}, store, output=f"oci:{tmp_path / 'out'}")
    _, manifest, _ = read_image(tmp_path / "out")
    members = {m.name: m for m in layer_members(tmp_path / "out", manifest["layers"][1])}
    assert (members["home/app"].mode, members["home/app"].uid) == (0o700, 1000)
    assert (members["home"].mode, members["home"].uid) == (0o755, 0)
    main = members["home/app/main.py"]
    assert (main.mode, main.uid, main.gid) == (0o644, 1000, 50)
    assert members["home/app/run.sh"].mode == 0o755
    assert members["home/app/current"].linkname == "main.py"
    assert (members["home/app/pkg"].uid, members["home/app/pkg"].gid) == (1000, 50)
    req = {m.name: m for m in layer_members(tmp_path / "out", manifest["layers"][2])}
    assert req["opt/req.txt"].mode == 0o640
    assert req["opt"].mode == 0o755


def test_unknown_chown_user_is_an_error(base: str, ctx: Path, store: Store) -> None:
    """A --chown name the image's /etc/passwd does not know is refused."""
    src = dsl.context(ctx)
    with pytest.raises(dsl.ImageDSLError, match="nobody-here"):
        build({"a": dsl.image(base).copy(src.dir("app"), "/x", chown="nobody-here")}, store)


def test_copy_from_stage_keeps_downstream_hits(
    base: str, ctx: Path, store: Store, tmp_path: Path
) -> None:
    """COPY --from reads the source stage's layers; an upstream rebuild that yields the same
    bytes leaves the COPY a hit (early cutoff)."""
    src = dsl.context(ctx)
    builder = dsl.image(base).copy(src.dir("app"), "/src")
    app = (
        dsl.scratch()
        .copy(builder.path("/src/run.sh"), "/run.sh")
        .copy(builder.path("/bin/busybox"), "/bin/")
        .copy(builder.path("/src/pkg"), "/pkg", chmod=0o700)
    )
    stages = {"builder": builder, "app": app}
    first, _ = build(stages, store, target="app", output=f"oci:{tmp_path / 'out'}")
    _, manifest, _ = read_image(tmp_path / "out")
    names = [[m.name for m in layer_members(tmp_path / "out", d)] for d in manifest["layers"]]
    assert names == [["run.sh"], ["bin", "bin/busybox"], ["pkg", "pkg/util.py"]]
    busybox = layer_members(tmp_path / "out", manifest["layers"][1])[1]
    assert busybox.mode == 0o755
    assert busybox.size == oci.BUSYBOX.stat().st_size

    (ctx / "app" / "main.py").write_text("print('changed, but not copied')\n")
    after = plan(stages, "app", store=store, project="test")
    statuses = {s.instruction: s.status for s in after.steps}
    assert statuses["COPY app /src"] is PlanStatus.MISS
    assert statuses["COPY --from=builder /src/run.sh /run.sh"] is PlanStatus.MAYBE
    second, _ = build(stages, store, target="app")
    assert second.image.manifest_digest == first.image.manifest_digest
    assert second.stats.layers_written == 1  # only the builder's COPY
    final = plan(stages, "app", store=store, project="test")
    assert {s.status for s in final.steps} == {PlanStatus.HIT}


def test_add_unpacks_local_archives(base: str, tmp_path: Path, store: Store) -> None:
    """ADD unpacks a local tar.gz into the destination (owners and modes from the archive)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    data = oci.tar_bytes(
        [
            oci.member("pkg/", kind=tarfile.DIRTYPE, mode=0o755),
            oci.member("pkg/tool", data=b"#!/bin/sh\n", mode=0o750, uid=5),
            oci.member("pkg/alias", kind=tarfile.LNKTYPE, linkname="pkg/tool"),
        ]
    )
    (ctx / "vendor.tar.gz").write_bytes(gzip.compress(data))
    (ctx / "notes.txt").write_text("plain file\n")
    src = dsl.context(ctx)
    app = (
        dsl.image(base).add(src.file("vendor.tar.gz"), "/opt/").add(src.file("notes.txt"), "/opt/")
    )
    build({"app": app}, store, output=f"oci:{tmp_path / 'out'}")
    _, manifest, _ = read_image(tmp_path / "out")
    members = {m.name: m for m in layer_members(tmp_path / "out", manifest["layers"][1])}
    assert (members["opt/pkg/tool"].mode, members["opt/pkg/tool"].uid) == (0o750, 5)
    assert members["opt/pkg/alias"].islnk()
    assert members["opt/pkg/alias"].linkname == "opt/pkg/tool"
    notes = {m.name for m in layer_members(tmp_path / "out", manifest["layers"][2])}
    assert "opt/notes.txt" in notes


def test_add_url_uses_the_store_before_the_network(base: str, store: Store, tmp_path: Path) -> None:
    """ADD of a URL takes the blob named by its checksum when the store has it (no fetch)."""
    payload = b"downloaded\n"
    checksum = "sha256:" + hashlib.sha256(payload).hexdigest()
    path = store.blob_path(checksum)
    path.parent.mkdir(parents=True)
    path.write_bytes(payload)
    url = dsl.url("https://example.invalid/files/tool.txt?x=1", checksum=checksum)
    build({"a": dsl.image(base).add(url, "/opt/")}, store, output=f"oci:{tmp_path / 'out'}")
    _, manifest, _ = read_image(tmp_path / "out")
    member = {m.name: m for m in layer_members(tmp_path / "out", manifest["layers"][1])}
    assert member["opt/tool.txt"].mode == 0o600
    assert member["opt/tool.txt"].size == len(payload)


def test_workdir_creates_missing_directories_only(base: str, store: Store, tmp_path: Path) -> None:
    """WORKDIR makes a layer only when the directory is missing, owned by the USER, and so
    are the parents it makes (as BuildKit 0.8 makes them)."""
    app = dsl.image(base).workdir("/tmp").user("app").workdir("/srv/data")
    build({"a": app}, store, output=f"oci:{tmp_path / 'out'}")
    _, manifest, config = read_image(tmp_path / "out")
    assert len(manifest["layers"]) == 2
    members = {m.name: m for m in layer_members(tmp_path / "out", manifest["layers"][1])}
    # Parents it creates belong to the USER too, as BuildKit makes them (issue 14; checked
    # against BuildKit in tests/test_buildkit_likeness.py).
    assert (members["srv/data"].uid, members["srv"].uid) == (1000, 1000)
    assert config["history"][1]["empty_layer"] is True


def test_fine_layers_rebuild_one_small_layer(base: str, tmp_path: Path, store: Store) -> None:
    """With layers="auto" a COPY becomes several layers, each with its own plan status, and a
    one-file edit rewrites only the layer holding that file."""
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "requirements.txt").write_text("attrs\n")
    (ctx / "model.bin").write_bytes(os.urandom(2 << 20))
    for i in range(300):
        (ctx / "src" / f"mod{i}.py").write_text(f"VALUE = {i}\n" * 200)
    src = dsl.context(ctx)
    stages = {"app": dsl.image(base).copy(src, "/app", layers="auto").cmd("/bin/sh")}
    first, planned = build(stages, store, output=f"oci:{tmp_path / 'out'}")
    parts = [s for s in planned.steps if s.kind == "copy"]
    assert len(parts) >= 3
    assert len(first.image.layers) == 1 + len(parts)
    _, manifest, config = read_image(tmp_path / "out")
    histories = [h["created_by"] for h in config["history"] if "(layer " in h["created_by"]]
    assert len(histories) == len(parts)
    all_names: set[str] = set()
    for descriptor in manifest["layers"][1:]:
        names = {m.name for m in layer_members(tmp_path / "out", descriptor) if not m.isdir()}
        assert not names & all_names
        all_names |= names
    assert "app/model.bin" in all_names
    assert "app/requirements.txt" in all_names

    (ctx / "src" / "mod7.py").write_text("VALUE = 'edited'\n")
    after = plan(stages, "app", store=store, project="test")
    assert [s.status for s in after.steps if s.kind == "copy"].count(PlanStatus.MISS) == 1
    second, _ = build(stages, store, output=f"oci:{tmp_path / 'out'}")
    assert second.stats.layers_written == 1
    total = sum(p.stat().st_size for p in ctx.rglob("*") if p.is_file())
    assert second.stats.bytes_compressed <= 0.4 * total  # 5% at benchmark scale
    changed = [a != b for a, b in zip(first.image.layers, second.image.layers, strict=True)]
    assert changed.count(True) == 1


@pytest.mark.parametrize("fail", [False, True])
def test_parts_written_at_once_are_the_parts_written_in_turn(
    base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    """The parts of a split COPY are written by forked processes, or on a pool of threads
    where forking is not safe: the layers are byte for byte those written one after the
    other, and a part that cannot be written fails the build (with its own error, from a
    child too) and leaves no temporary blob and no child process behind."""
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "requirements.txt").write_text("attrs\n")
    (ctx / "model.bin").write_bytes(os.urandom(3 << 20))
    for i in range(200):
        (ctx / "src" / f"mod{i}.py").write_text(f"VALUE = {i}\n" * (i + 1))
    stages = {"app": dsl.image(base).copy(dsl.context(ctx), "/app", layers="auto")}
    images = []
    for workers, fork in ((1, "1"), (4, "0"), (4, "1")):
        monkeypatch.setattr("imagedsl.backends.oci.writer.cores", lambda n=workers: n)
        monkeypatch.setenv("IMAGEDSL_FORK", fork)
        forks = _count_forks(monkeypatch)
        store = Store(tmp_path / f"store-{workers}-{fork}")
        first = plan(stages, "app", store=store, project="test")
        if fail:  # same size, other bytes: only the check as it is written sees it
            for step in first.steps:
                for tree in step.node.trees:
                    assert tree.rows
            (ctx / "src" / "mod150.py").write_text("VALUE = 151\n" * 151)
        request = BuildRequest(output=None)
        backend = OCIBackend()
        if fail:
            with pytest.raises(LayerError, match="changed content since it was planned"):
                backend.build_image(first, request, store=store, reporter=Reporter())
            blobs = store.area(StoreArea.BLOBS)
            assert not [p.name for p in blobs.iterdir() if p.name.startswith(".incoming.")]
            (ctx / "src" / "mod150.py").write_text("VALUE = 150\n" * 151)
        else:
            built = backend.build_image(first, request, store=store, reporter=Reporter())
            copies = [s for s in first.steps if s.kind == "copy"]
            assert built.stats.layers_written == len(copies)
            images.append(built.image.layers)
            # Each part's manifest (what the next plan's miss reasons diff) is in the store,
            # written by whichever process made the part.
            for step in copies:
                for tree in step.node.trees:
                    assert store.get_tree(tree.digest) == tree.manifest()
        assert (forks[0] > 0) == (workers > 1 and fork == "1")
        assert not _children_left()
    if not fail:
        assert images[0] == images[1] == images[2]
        assert len(images[0]) >= 4


def _count_forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the times the layer writer forks processes from now on (not the plan's
    hashing, which may fork too)."""
    count = [0]
    real = ForkedJobs.start

    def counted(jobs: Any, workers: int) -> Any:
        count[0] += getattr(jobs[0].func, "__name__", "") == "_make_and_write"
        return real(jobs, workers)

    monkeypatch.setattr(ForkedJobs, "start", counted)
    return count


def _children_left() -> list[str]:
    """This process's children still running (or not waited for)."""
    found = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return found.read_text().split() if found.exists() else []


def test_a_named_symlink_is_copied_as_its_target(base: str, ctx: Path, store: Store) -> None:
    """A symlink a selector names is followed (its target's bytes under its name); one inside
    a copied directory stays a symlink."""
    src = dsl.context(ctx)
    stages = {"a": dsl.image(base).copy(src.file("app/current"), "/x").copy(src.dir("app"), "/d")}
    built, _ = build(stages, store, output=None)
    layers = built.image.layers
    blobs = store.area(StoreArea.BLOBS)
    members = {}
    for layer in layers[-2:]:
        data = gzip.decompress((blobs / layer.digest.partition(":")[2]).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                extracted = archive.extractfile(member) if member.isfile() else None
                members[member.name] = (member.type, extracted.read() if extracted else b"")
    assert members["x"] == (tarfile.REGTYPE, b"print('main')\n")
    assert members["d/current"][0] == tarfile.SYMTYPE


def test_zstd_layers(base: str, ctx: Path, store: Store, tmp_path: Path) -> None:
    """compression="zstd" writes tar+zstd layers with the same diff_ids as gzip ones."""
    src = dsl.context(ctx)
    stages = {"a": dsl.image(base).copy(src.dir("app"), "/app")}
    gz, _ = build(stages, store)
    zst, _ = build(
        stages, store, backend=OCIBackend(compression="zstd"), output=f"oci:{tmp_path / 'z'}"
    )
    assert zst.image.layers[-1].media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert zst.image.layers[-1].diff_id == gz.image.layers[-1].diff_id
    assert zst.image.layers[0] == gz.image.layers[0]  # the base layer is never recompressed


def test_archives_are_one_layout_with_docker_manifest(
    base: str, ctx: Path, store: Store, tmp_path: Path
) -> None:
    """oci-archive and docker-archive outputs are one tar: an OCI layout plus manifest.json."""
    src = dsl.context(ctx)
    stages = {"a": dsl.image(base).copy(src.dir("app"), "/app")}
    built, _ = build(
        stages, store, output=f"docker-archive:{tmp_path / 'd.tar'}:imagedsl-test/oci-a:1"
    )
    build(stages, store, output=f"oci-archive:{tmp_path / 'o.tar'}:v1")
    with tarfile.open(tmp_path / "d.tar") as archive:
        names = set(archive.getnames())
        docker = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        index = json.loads(archive.extractfile("index.json").read())  # type: ignore[union-attr]
    assert {"oci-layout", "index.json", "manifest.json"} <= names
    assert docker[0]["RepoTags"] == ["imagedsl-test/oci-a:1"]
    assert docker[0]["Layers"] == [f"blobs/sha256/{d.digest[7:]}" for d in built.image.layers]
    assert index["manifests"][0]["digest"] == built.image.manifest_digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == (
        "imagedsl-test/oci-a:1"
    )
    with tarfile.open(tmp_path / "o.tar") as archive:
        index = json.loads(archive.extractfile("index.json").read())  # type: ignore[union-attr]
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"


def test_layout_keeps_other_tags(base: str, ctx: Path, store: Store, tmp_path: Path) -> None:
    """Writing a tag into an existing layout replaces that tag only."""
    src = dsl.context(ctx)
    out = tmp_path / "layout"
    one, _ = build(
        {"a": dsl.image(base).copy(src.dir("app"), "/a")}, store, output=f"oci:{out}:one"
    )
    two, _ = build(
        {"a": dsl.image(base).copy(src.dir("app"), "/b")}, store, output=f"oci:{out}:two"
    )
    again, _ = build(
        {"a": dsl.image(base).copy(src.dir("app"), "/c")}, store, output=f"oci:{out}:one"
    )
    assert read_image(out, "two")[0] == two.image.manifest_digest
    assert read_image(out, "one")[0] == again.image.manifest_digest != one.image.manifest_digest


def test_layout_written_again_keeps_only_what_tags_reach(
    base: str, ctx: Path, store: Store, tmp_path: Path
) -> None:
    """A layout rewritten after edits drops the blobs no tag reaches, keeps other tags' blobs."""
    src = dsl.context(ctx)
    out = tmp_path / "layout"
    other, _ = build(
        {"a": dsl.image(base).copy(src.dir("app"), "/b")}, store, output=f"oci:{out}:two"
    )
    (out / "blobs" / "sha256" / ("f" * 64)).write_bytes(b"stray")
    for i in range(4):
        (ctx / "app" / "main.py").write_text(f"print({i})\n")
        last, _ = build(
            {"a": dsl.image(base).copy(src.dir("app"), "/a")}, store, output=f"oci:{out}:one"
        )
    wanted = set()
    for result in (other, last):
        image = result.image
        wanted |= {d.removeprefix("sha256:") for d in [*image.blob_digests, image.manifest_digest]}
    kept = {p.name for p in (out / "blobs" / "sha256").iterdir()}
    assert kept == wanted
    assert read_image(out, "one")[0] == last.image.manifest_digest
    assert read_image(out, "two")[0] == other.image.manifest_digest


def test_layout_written_again_trusts_stamped_blobs_and_repairs_damaged_ones(
    base: str, ctx: Path, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing an image into a layout that holds it reads no blob whose stamp still matches
    (a stat each); a blob damaged in place (same size: only its ctime shows it) is hashed,
    found wrong, and copied again."""
    from imagedsl.oci import blobs as blobs_module

    src = dsl.context(ctx)
    out = tmp_path / "layout"
    result, _ = build({"a": dsl.image(base).copy(src.dir("app"), "/a")}, store, output=f"oci:{out}")
    image = result.image
    digests = [*image.blob_digests, image.manifest_digest]
    blob_dir = out / "blobs" / "sha256"
    hashed: list[str] = []
    real_file_holds = blobs_module.file_holds

    def spy(path: Path, digest: str) -> bool:
        hashed.append(path.name)
        return real_file_holds(path, digest)

    monkeypatch.setattr(blobs_module, "file_holds", spy)
    blobs = blobs_module.BlobStore(store)
    assert blobs.place(digests, blob_dir) == 0
    assert hashed == []
    layer = blob_dir / image.layers[-1].digest.removeprefix("sha256:")
    original = layer.read_bytes()
    layer.chmod(0o644)
    layer.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    assert blobs.place(digests, blob_dir) == 1
    assert hashed == [layer.name]
    assert layer.read_bytes() == original
    assert blobs.place(digests, blob_dir) == 0
    assert hashed == [layer.name]
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{out}"], capture_output=True, check=False
    )
    assert inspected.returncode == 0, inspected.stderr


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagedsl", *args], capture_output=True, text=True, check=False
    )


def test_cli_build_to_layout(base: str, ctx: Path, tmp_path: Path) -> None:
    """``imagedsl build FILE:TARGET --backend oci --output oci:DIR:TAG`` writes the image."""
    (ctx / "build.py").write_text(
        "import imagedsl as dsl\n"
        "src = dsl.context('.', ignore=['build.py'])\n"
        f"app = dsl.image({base!r}).copy(src.dir('app'), '/app').cmd(['/app/run.sh'])\n"
        "broken = app.run('make')\n"
    )
    store = str(tmp_path / "store")
    out = tmp_path / "out"
    done = _run_cli("build", f"{ctx / 'build.py'}:app", "--backend", "oci", "--store", store,
                    "--output", f"oci:{out}:v2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert read_image(out, "v2")[2]["config"]["Cmd"] == ["/app/run.sh"]
    planned = _run_cli("plan", f"{ctx / 'build.py'}:app", "--store", store, "--json")
    statuses: list[Any] = [s["status"] for s in json.loads(planned.stdout)["steps"]]
    assert statuses == ["hit", "hit", "config"]
    failed = _run_cli("build", f"{ctx / 'build.py'}:broken", "--backend", "oci", "--store", store)
    assert failed.returncode == 1  # a failed RUN (busybox has no make) at its line
    assert "build.py:4" in failed.stderr
    assert "exit code 127" in failed.stderr


def test_add_url_downloads_and_checks_the_checksum(base: str, store: Store, tmp_path: Path) -> None:
    """ADD of a URL the store lacks downloads it and refuses bytes that miss the checksum."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "tool.txt").write_bytes(b"from the server\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/tool.txt"
            good = "sha256:" + hashlib.sha256(b"from the server\n").hexdigest()
            stages = {"a": dsl.image(base).add(dsl.url(url, checksum=good), "/opt/tool")}
            build(stages, store, output=f"oci:{tmp_path / 'out'}")
            assert store.blob_path(good).read_bytes() == b"from the server\n"
            wrong = "sha256:" + "1" * 64
            with pytest.raises(dsl.ImageDSLError, match="1111"):
                build({"a": dsl.image(base).add(dsl.url(url, checksum=wrong), "/opt/")}, store)
            assert not store.blob_path(wrong).exists()
        finally:
            server.shutdown()
    _, manifest, _ = read_image(tmp_path / "out")
    members = {m.name: m for m in layer_members(tmp_path / "out", manifest["layers"][1])}
    assert members["opt/tool"].size == len(b"from the server\n")


def test_result_names_each_step_once(base: str, ctx: Path, store: Store) -> None:
    """Each layer step is reported once, as built or cached, by the name the plan shows."""
    src = dsl.context(ctx)
    builder = dsl.image(base).copy(src.dir("app"), "/src")
    app = dsl.image(base).workdir("/tmp").copy(builder.path("/src/run.sh"), "/run.sh")
    stages = {"builder": builder, "app": app}
    first, _ = build(stages, store, target="app")
    assert sorted(first.result.built) == sorted(
        [
            "app[2] COPY --from=builder /src/run.sh /run.sh",
            "builder[1] COPY app /src",
            "app[1] WORKDIR /tmp",
        ]
    )
    names = [*first.result.built, *first.result.cached]
    assert len(names) == len(set(names))
    assert "app[2] COPY --from=builder /src/run.sh /run.sh" in first.result.built
    second, _ = build(stages, store, target="app")
    assert second.result.built == ()
    assert sorted(second.result.cached) == sorted(names)


def test_base_config_is_inherited(store: Store, tmp_path: Path) -> None:
    """ENV $VARs and relative paths resolve against the base image's Env and WorkingDir."""
    layout = tmp_path / "base-layout"
    oci.write_layout(
        layout,
        [oci.tar_bytes(oci.busybox_members())],
        tag="1",
        config={"Env": ["PATH=/bin:/usr/bin", "LANG=C.UTF-8"], "WorkingDir": "/work", "User": "7"},
    )
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "f.txt").write_text("f\n")
    src = dsl.context(tmp_path / "ctx")
    stage = (
        dsl.image(f"oci:{layout}:1")
        .env(PATH="/opt/bin:$PATH", GREETING="${LANG:-none}")
        .copy(src.file("f.txt"), "rel/")
        .workdir("sub")
    )
    planned = plan(stage, store=store)
    # At plan time the base's config is unknown: references stay as written.
    assert dict(planned.steps[-1].node.state.env)["PATH"] == "/opt/bin:$PATH"
    assert planned.steps[2].node.preimage["dest"] == "rel/"
    out = tmp_path / "out"
    build(stage, store, output=f"oci:{out}:t")
    _, _, config = read_image(out, "t")
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    assert env["PATH"] == "/opt/bin:/bin:/usr/bin"
    assert env["GREETING"] == "C.UTF-8"
    assert config["config"]["WorkingDir"] == "/work/sub"
    assert config["config"]["User"] == "7"
    files = {m.name for layer in _layers(out, "t") for m in layer}
    assert "work/rel/f.txt" in files


def _layers(layout: Path, tag: str) -> list[list[tarfile.TarInfo]]:
    _, manifest, _ = read_image(layout, tag)
    return [layer_members(layout, d) for d in manifest["layers"]]


def _config_digest(layout: Path, manifest_digest: str) -> str:
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest[7:]).read_bytes())
    digest: str = manifest["config"]["digest"]
    return digest


def test_plan_pins_a_local_base_by_what_it_holds(tmp_path: Path) -> None:
    """Replacing the image behind oci:DIR:TAG changes the FROM key, and the plan says so."""
    layout = tmp_path / "layout"
    first = oci.write_layout(layout, [oci.tar_bytes(oci.busybox_members())])
    first_image = _config_digest(layout, first)
    build_path = tmp_path / "build.py"
    build_path.write_text(f"import imagedsl as dsl\n\napp = dsl.image('oci:{layout}:1')\n")
    store = Store(tmp_path / "store")
    before = api.load_buildfile(build_path).plan(store=store)
    assert before.steps[0].node.preimage["digest"] == first_image
    assert before.steps[0].notes == (f"resolved to {first_image} from the local image",)
    api.record_step(store, before.steps[0])
    shutil.rmtree(layout)
    second = oci.write_layout(layout, [oci.tar_bytes(oci.busybox_members())], config={"Cmd": ["x"]})
    after = api.load_buildfile(build_path).plan(store=store)
    assert after.steps[0].status is PlanStatus.MISS
    assert after.steps[0].reasons == (
        f"base image changed: oci:{layout}:1 is now {_config_digest(layout, second)}",
    )


def test_inline_files_parents_and_config_forms(
    base: str, ctx: Path, store: Store, tmp_path: Path
) -> None:
    """COPY <<EOF writes the bytes with their mode (into an existing directory as EOF);
    COPY --parents keeps context paths; USER uid gid, CMD/ENTRYPOINT resets and ONBUILD
    land in the config as BuildKit writes them."""
    src = dsl.context(ctx)
    app = (
        dsl.image(base)
        .copy(dsl.inline("a = 1\n", mode=0o600), "/etc/app.conf", chown="1000:1000")
        .copy(dsl.inline("into tmp\n"), "/tmp")
        .copy(src.file("app/pkg/util.py"), "/srv/", parents=True)
        .user(1000, 50)
        .entrypoint("/bin/echo", "x")
        .cmd()
        .expose("8000-8002/tcp")
        .onbuild("RUN make")
        .onbuild("ENV BUILT=1")
    )
    build({"app": app}, store, output=f"oci:{tmp_path / 'out'}")
    _, manifest, config = read_image(tmp_path / "out")
    members = {
        m.name: m
        for layer in manifest["layers"][1:]
        for m in layer_members(tmp_path / "out", layer)
    }
    conf = members["etc/app.conf"]
    assert (conf.mode, conf.uid, conf.gid, conf.size) == (0o600, 1000, 1000, 6)
    assert members["tmp/EOF"].mode == 0o644
    assert members["srv/app/pkg/util.py"].isfile()
    assert members["srv/app/pkg"].isdir()
    container = config["config"]
    assert container["User"] == "1000:50"
    assert container["Entrypoint"] == ["/bin/echo", "x"]
    assert "Cmd" not in container  # CMD [] after an ENTRYPOINT: none, as BuildKit writes it
    assert container["OnBuild"] == ["RUN make", "ENV BUILT=1"]
    assert sorted(container["ExposedPorts"]) == ["8000/tcp", "8001/tcp", "8002/tcp"]


def test_base_onbuild_triggers_run_first(store: Store, tmp_path: Path) -> None:
    """FROM a base with ONBUILD triggers runs them (ENV, WORKDIR, LABEL, CMD, USER) before
    the stage's own steps; the image keeps none of the base's triggers."""
    layout = tmp_path / "base"
    oci.write_layout(
        layout,
        [oci.tar_bytes(oci.busybox_members())],
        config={
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh"],
            "OnBuild": [
                'ENV GREETING="hello there" TARGET=$PATH',
                "WORKDIR /srv/$TARGET_DIR",
                "LABEL from.base=yes",
                "CMD echo $GREETING",
                "USER app",
            ],
        },
    )
    app = dsl.image(f"oci:{layout}:1").env(MINE="$GREETING!").entrypoint(["/bin/sh", "-c"])
    build({"app": app}, store, output=f"oci:{tmp_path / 'out'}")
    _, manifest, config = read_image(tmp_path / "out")
    container = config["config"]
    assert container["Env"] == [
        "PATH=/bin",
        "GREETING=hello there",
        "TARGET=/bin",
        "MINE=hello there!",
    ]
    assert container["WorkingDir"] == "/srv/"  # as written, $TARGET_DIR unset
    assert container["Labels"] == {"from.base": "yes"}
    assert container["Cmd"] == ["/bin/sh", "-c", "echo $GREETING"]  # a trigger set it: kept
    assert container["User"] == "app"
    assert "OnBuild" not in container
    assert len(manifest["layers"]) == 2  # the base's, and WORKDIR /srv made by a trigger
    history = [h["created_by"] for h in config["history"]]
    assert history[1].startswith("ONBUILD ENV GREETING=")


@pytest.mark.parametrize(
    "trigger",
    [
        pytest.param("COPY . /app", id="copy"),
        pytest.param("ADD x.tar /", id="add"),
        pytest.param("ARG VERSION", id="arg"),
        pytest.param("RUN --mount=type=cache,target=/c make", id="run-flags"),
    ],
)
def test_base_triggers_that_read_outside_the_base_are_refused(
    store: Store, tmp_path: Path, trigger: str
) -> None:
    """A trigger that reads the Dockerfile's context, or a --build-arg, is an input error
    naming the base and the trigger."""
    from imagedsl.backends.oci.triggers import TriggerError

    layout = tmp_path / "base"
    oci.write_layout(
        layout,
        [oci.tar_bytes(oci.busybox_members())],
        config={"Env": ["PATH=/bin"], "OnBuild": [trigger]},
    )
    with pytest.raises(TriggerError) as caught:
        build({"app": dsl.image(f"oci:{layout}:1").env(A="1")}, store)
    assert caught.value.trigger == trigger
    assert caught.value.base.startswith("oci:")

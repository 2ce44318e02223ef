"""A context file edited after planning and before its bytes are read: both backends refuse
to build what was not planned, and say which file changed."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import imagedsl as dsl
from imagedsl import treehash
from imagedsl.backends import BuildRequest
from imagedsl.backends.dockerfile.buildkit import DockerfileBackend
from imagedsl.backends.oci.backend import OCIBackend
from imagedsl.backends.oci.layer import LayerError
from imagedsl.planner import plan
from imagedsl.reporting import Reporter
from imagedsl.store import Store
from imagedsl.treehash import ContextChangedError, ContextHasher
from tests.support import oci
from tests.support.docker import DockerEngine


@pytest.fixture(name="project")
def fixture_project(tmp_path: Path) -> Path:
    """A context with one file under app/."""
    root = tmp_path / "project"
    (root / "app").mkdir(parents=True)
    (root / "app" / "config.txt").write_text("planned\n")
    return root


@pytest.fixture(name="settled")
def fixture_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scans start a second from now: no file is racily clean, so the plan keeps every file's
    digest and the backend's own check is what meets the edit."""
    later = time.time_ns() + 1_000_000_000
    monkeypatch.setattr(treehash, "time", SimpleNamespace(time_ns=lambda: later))


def _edit_same_size(path: Path) -> None:
    """New bytes, same size: only hashing the content can notice."""
    old = path.read_bytes()
    path.write_bytes(old.upper())
    assert path.stat().st_size == len(old)


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize("same_size", [True, False], ids=["same-size", "other-size"])
def test_oci_backend_refuses_a_file_changed_after_planning(
    project: Path, tmp_path: Path, same_size: bool
) -> None:
    """The OCI backend checks every file's bytes against the planned digest as it writes the
    layer: an edit in between is an error naming the file, and nothing is recorded."""
    base = oci.make_busybox_layout(tmp_path / "base")
    stage = dsl.image(base).copy(dsl.context(project).dir("app"), "/app")
    store = Store(tmp_path / "store")
    planned = plan({"img": stage}, "img", store=store, project="changed")
    config = project / "app" / "config.txt"
    if same_size:
        _edit_same_size(config)
    else:
        config.write_text("edited after planning\n")
    with pytest.raises(LayerError) as caught:
        OCIBackend().build_image(planned, BuildRequest(), store=store, reporter=Reporter())
    assert caught.value.path == "app/config.txt"
    expected = "changed content since it was planned" if same_size else "changed size"
    assert caught.value.problem.startswith(expected)
    assert str(config) in caught.value.problem
    assert store.get(planned.steps[-1].key) is None


@pytest.mark.usefixtures("settled")
def test_docker_backend_refuses_a_file_changed_after_planning(
    docker_engine: DockerEngine, busybox_image: str, project: Path, tmp_path: Path
) -> None:
    """The Docker backend re-hashes each file as it stages the context: an edit in between
    is an error naming the file, before BuildKit sees anything, and nothing is recorded."""
    stage = dsl.image(busybox_image).copy(dsl.context(project).dir("app"), "/app")
    store = Store(tmp_path / "store")
    planned = plan({"img": stage}, "img", store=store, project="changed")
    _edit_same_size(project / "app" / "config.txt")
    with pytest.raises(ContextChangedError) as caught:
        DockerfileBackend(docker_engine).build(
            planned, BuildRequest(), store=store, reporter=Reporter()
        )
    assert caught.value.root == str(project)
    assert caught.value.path == "app/config.txt"
    assert store.get(planned.steps[-1].key) is None


def test_tree_rows_read_after_an_edit_are_refused(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan builds a tree's rows only when a backend reads them; a racily-clean file is
    read again then. Rows that no longer give the planned digest are refused, rather than
    handing the backend bytes other than those keyed (which staging would then accept)."""
    # Scans start 1 ms after the file was written: it is racily clean.
    written = (project / "app" / "config.txt").stat().st_ctime_ns
    monkeypatch.setattr(treehash, "time", SimpleNamespace(time_ns=lambda: written + 1_000_000))
    hasher = ContextHasher(Store(tmp_path / "store"), Reporter())
    tree = hasher.tree(dsl.context(project).dir("app"))
    hasher.save()
    _edit_same_size(project / "app" / "config.txt")
    with pytest.raises(ContextChangedError) as caught:
        _ = tree.rows
    assert caught.value.root == str(project)
    assert caught.value.path == "app"


def test_layer_part_rows_read_after_an_edit_are_refused(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory copied whole in layers="auto" parts builds each part's rows on its own
    (not the whole tree's): those of the part holding an edited file are refused as the
    whole tree's are, while another part's rows are still given."""
    (project / "app" / "requirements.txt").write_text("flask\n")
    written = (project / "app" / "config.txt").stat().st_ctime_ns
    monkeypatch.setattr(treehash, "time", SimpleNamespace(time_ns=lambda: written + 1_000_000))
    hasher = ContextHasher(Store(tmp_path / "store"), Reporter())
    source = dsl.context(project).dir("app")
    parts = hasher.partition(source, hasher.tree(source), "auto")
    assert parts is not None
    by_name = dict(parts)
    assert sorted(by_name) == ["files-0", "manifests"]
    hasher.save()  # forgets the racily clean digest: rows read the file again
    _edit_same_size(project / "app" / "config.txt")
    with pytest.raises(ContextChangedError) as caught:
        _ = by_name["files-0"].rows
    assert caught.value.path == "app"
    assert [row[0] for row in by_name["manifests"].rows] == ["requirements.txt"]

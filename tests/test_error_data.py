"""Store and base-image errors carry their facts as attributes: tests read those,
not the wording, and the CLI's exit code follows each error's category (plain HTTP:
tests/test_registry_auth.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl.errors import EnvironmentFailure, InputError, StoreError
from imagedsl.oci.layout import BaseImageError
from imagedsl.store import Store
from tests.support import oci


def test_store_on_a_file_names_the_path_and_the_problem(tmp_path: Path) -> None:
    """A store whose root is a file: the path and what is wrong, an environment failure."""
    occupied = tmp_path / "occupied"
    occupied.write_text("not a store")
    with pytest.raises(StoreError) as caught:
        Store(occupied)
    assert caught.value.path == str(occupied)
    assert caught.value.problem == "exists and is not a directory"
    assert isinstance(caught.value, EnvironmentFailure)


def test_store_that_cannot_be_created_names_the_os_error(tmp_path: Path) -> None:
    """A store below a file cannot be made: its path, and the operating system's reason."""
    (tmp_path / "file").write_text("x")
    store = Store(tmp_path / "file" / "store")
    with pytest.raises(StoreError) as caught, store.locked():
        pass
    assert caught.value.path == str(tmp_path / "file" / "store")
    assert caught.value.problem == "cannot create it: Not a directory"


@pytest.fixture(name="layout")
def fixture_layout(tmp_path: Path) -> Path:
    """An OCI layout holding busybox under the tag 1."""
    oci.make_busybox_layout(tmp_path / "base")
    return tmp_path / "base"


@pytest.mark.parametrize(
    ("reference", "reported", "problem"),
    [
        pytest.param(
            "oci:{tmp}/missing:1",
            "{tmp}/missing",
            "is not a directory (an OCI layout was expected)",
            id="no-layout",
        ),
        pytest.param("oci:{tmp}/empty:1", "{tmp}/empty", "has no file index.json", id="no-index"),
        pytest.param(
            "oci:{tmp}/base:2",
            "oci:{tmp}/base:2",
            "no single image matches 2; it holds ['1']",
            id="no-such-tag",
        ),
        pytest.param(
            "oci-archive:{tmp}/nothing.tar",
            "oci-archive:{tmp}/nothing.tar",
            "{tmp}/nothing.tar is not a file",
            id="no-archive",
        ),
    ],
)
def test_unreadable_base_image_names_reference_and_problem(
    layout: Path, tmp_path: Path, reference: str, reported: str, problem: str
) -> None:
    """A base image that is not where its reference says: which one, and what is missing; an
    input error (exit 2), raised before any layer is written."""
    (tmp_path / "empty").mkdir()
    assert layout.is_dir()
    store = Store(tmp_path / "store")
    stage = dsl.image(reference.format(tmp=tmp_path)).cmd("x")
    with pytest.raises(BaseImageError) as caught:
        oci.build({"app": stage}, store)
    assert caught.value.reference == reported.format(tmp=tmp_path)
    assert caught.value.problem == problem.format(tmp=tmp_path)
    assert isinstance(caught.value, InputError)

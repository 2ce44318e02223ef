"""The recorded source mtime of the ``.pyc`` files a RUN writes (imagedsl/backends/oci/run/bytecode.py)."""

from __future__ import annotations

import importlib.util
import os
import py_compile
from pathlib import Path

import pytest

from imagedsl.backends.oci.layer import LayerEntry
from imagedsl.backends.oci.run.bytecode import settle_bytecode, source_of

EPOCH = 1_700_000_000


@pytest.mark.parametrize(
    ("pyc", "source"),
    [
        ("app/__pycache__/mod.cpython-311.pyc", "app/mod.py"),
        ("app/__pycache__/mod.cpython-311.opt-1.pyc", "app/mod.py"),
        ("__pycache__/top.cpython-312.pyc", "top.py"),
        ("app/mod.pyc", "app/mod.py"),
        ("app/__pycache__/notag.pyc", None),
        ("app/__pycache__/.cpython-311.pyc", None),
        ("app/mod.py", None),
        ("app/mod.pyo", None),
    ],
)
def test_the_source_of_a_pyc_is_found_by_its_name(pyc: str, source: str | None) -> None:
    assert source_of(pyc) == source


def _compiled(root: Path, mode: py_compile.PycInvalidationMode) -> tuple[Path, Path]:
    source = root / "app" / "mod.py"
    source.parent.mkdir(parents=True)
    source.write_text("VALUE = 1\n")
    os.utime(source, (1_650_000_123, 1_650_000_123))
    pyc = Path(importlib.util.cache_from_source(str(source)))
    py_compile.compile(str(source), cfile=str(pyc), invalidation_mode=mode, doraise=True)
    return source, pyc


def _entries(root: Path, *paths: Path) -> list[LayerEntry]:
    return [
        LayerEntry(path=str(p.relative_to(root)), kind="file", size=p.stat().st_size, source=str(p))
        for p in paths
    ]


def test_a_timestamp_pyc_of_a_source_in_the_layer_records_the_epoch(tmp_path: Path) -> None:
    source, pyc = _compiled(tmp_path, py_compile.PycInvalidationMode.TIMESTAMP)
    before = pyc.read_bytes()
    assert int.from_bytes(before[8:12], "little") == 1_650_000_123
    settled = settle_bytecode(_entries(tmp_path, source, pyc), EPOCH)
    after = pyc.read_bytes()
    assert settled == [str(pyc.relative_to(tmp_path))]
    assert int.from_bytes(after[8:12], "little") == EPOCH
    assert after[:8] == before[:8]
    assert after[12:] == before[12:]


def test_an_epoch_beyond_32_bits_is_recorded_as_python_does(tmp_path: Path) -> None:
    source, pyc = _compiled(tmp_path, py_compile.PycInvalidationMode.TIMESTAMP)
    settle_bytecode(_entries(tmp_path, source, pyc), 2**32 + 5)
    assert int.from_bytes(pyc.read_bytes()[8:12], "little") == 5


@pytest.mark.parametrize(
    "mode",
    [py_compile.PycInvalidationMode.CHECKED_HASH, py_compile.PycInvalidationMode.UNCHECKED_HASH],
)
def test_hash_based_pycs_are_left_alone(
    tmp_path: Path, mode: py_compile.PycInvalidationMode
) -> None:
    source, pyc = _compiled(tmp_path, mode)
    before = pyc.read_bytes()
    assert settle_bytecode(_entries(tmp_path, source, pyc), EPOCH) == []
    assert pyc.read_bytes() == before


def test_a_pyc_whose_source_is_in_a_layer_below_is_left_alone(tmp_path: Path) -> None:
    _, pyc = _compiled(tmp_path, py_compile.PycInvalidationMode.TIMESTAMP)
    before = pyc.read_bytes()
    assert settle_bytecode(_entries(tmp_path, pyc), EPOCH) == []
    assert pyc.read_bytes() == before


def test_a_pyc_stale_when_the_run_ended_stays_stale(tmp_path: Path) -> None:
    source, pyc = _compiled(tmp_path, py_compile.PycInvalidationMode.TIMESTAMP)
    os.utime(source, (1_650_000_999, 1_650_000_999))  # edited after it was compiled
    before = pyc.read_bytes()
    assert settle_bytecode(_entries(tmp_path, source, pyc), EPOCH) == []
    assert pyc.read_bytes() == before
    source.write_text("VALUE = 22\n")  # same mtime as recorded, another size
    os.utime(source, (1_650_000_123, 1_650_000_123))
    assert settle_bytecode(_entries(tmp_path, source, pyc), EPOCH) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 8,
        b"not a pyc at all, just some bytes",
        (3000).to_bytes(2, "little") + b"\r\n" + b"\x00" * 12,
    ],
)
def test_files_named_pyc_that_are_not_bytecode_are_left_alone(tmp_path: Path, data: bytes) -> None:
    source = tmp_path / "m.py"
    source.write_text("x = 1\n")
    pyc = tmp_path / "m.pyc"
    pyc.write_bytes(data)
    assert settle_bytecode(_entries(tmp_path, source, pyc), EPOCH) == []
    assert pyc.read_bytes() == data


def test_a_pyc_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    source, pyc = _compiled(tmp_path, py_compile.PycInvalidationMode.TIMESTAMP)
    outside = tmp_path / "outside.pyc"
    outside.write_bytes(pyc.read_bytes())
    pyc.unlink()
    pyc.symlink_to(outside)
    entry = LayerEntry(path=str(pyc.relative_to(tmp_path)), kind="file", source=str(pyc))
    before = outside.read_bytes()
    assert settle_bytecode([*_entries(tmp_path, source), entry], EPOCH) == []
    assert outside.read_bytes() == before

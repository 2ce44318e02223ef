"""Golden keys: a fixed build file's keys are pinned; changing any key needs a version bump."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagedsl import keys
from imagedsl.loader import load_buildfile
from tests.support import golden


def test_keys_match_the_golden_file() -> None:
    """Every key of the golden build file is the one recorded for this KEY_VERSION."""
    old, new = golden.recorded(), golden.compute()
    if old["key_version"] != keys.KEY_VERSION:
        raise AssertionError(
            f"KEY_VERSION is {keys.KEY_VERSION}, the golden file has {old['key_version']}: "
            f"regenerate it with `{golden.COMMAND}`"
        )
    lines = golden.differences(old, new)
    assert not lines, (
        "keys changed (every user's next build would be cold): if that is meant, bump "
        f"KEY_VERSION in imagedsl/keys.py and run `{golden.COMMAND}`\n" + "\n".join(lines)
    )


def test_golden_file_covers_every_case() -> None:
    """The golden file holds exactly the cases the helper plans, none empty."""
    cases = golden.recorded()["cases"]
    assert sorted(cases) == sorted(case.name for case in golden.CASES)
    assert all(cases.values())


def test_every_preimage_carries_the_key_version() -> None:
    """Every step's preimage holds ``"v": KEY_VERSION``, so a bump moves every key."""
    build = load_buildfile(golden.GOLDEN_BUILD)
    for case in golden.CASES:
        plan = build.plan(case.target, build_args=case.build_args, platform=case.platform)
        assert {step.node.preimage["v"] for step in plan.steps} == {keys.KEY_VERSION}


def test_update_refuses_changed_keys_under_the_same_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--update`` records changed keys only with a version bump (or --keep-version)."""
    old = golden.recorded()
    name, steps = next(iter(old["cases"].items()))
    moved = [[steps[0][0], "0" * 64], *steps[1:]]
    changed = {**old, "cases": {**old["cases"], name: moved}}
    assert golden.differences(old, changed) == [
        f"{name} step 0 {steps[0][0]}: {steps[0][1][:16]} -> {'0' * 16}"
    ]
    copy = tmp_path / "golden_keys.json"
    copy.write_text(golden.GOLDEN_KEYS.read_text())
    monkeypatch.setattr(golden, "GOLDEN_KEYS", copy)
    monkeypatch.setattr(golden, "compute", lambda: changed)
    assert golden.main([]) == 1
    assert golden.main(["--update"]) == 1
    assert golden.recorded() == old
    assert golden.main(["--update", "--keep-version"]) == 0
    assert golden.recorded() == changed
    grown = {**changed, "cases": {**changed["cases"], "new[linux/amd64]": steps}}
    monkeypatch.setattr(golden, "compute", lambda: grown)
    assert golden.main(["--update"]) == 0  # a new case alone moves no key
    assert golden.recorded() == grown
    monkeypatch.setattr(golden, "compute", lambda: {**changed, "key_version": 99})
    assert golden.main(["--update"]) == 0
    assert golden.recorded()["key_version"] == 99

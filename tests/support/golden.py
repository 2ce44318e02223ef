"""Golden keys: the keys of a fixed build file, pinned in tests/resources/golden_keys.json.

Any change to any key fails ``tests/test_golden_keys.py``: a key change makes every user's
next build cold, so it must be deliberate. After a deliberate change, bump ``KEY_VERSION`` in
``imagedsl/keys.py`` and regenerate the file from the repository's root with::

    python -m tests.support.golden --update

``python -m tests.support.golden`` (no option) only prints what differs. ``--update`` refuses
to record changed keys under an unchanged ``KEY_VERSION`` unless ``--keep-version`` is given
(for keys no release has shipped yet); a new case alone is recorded without either.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from imagedsl.keys import KEY_VERSION
from imagedsl.loader import load_buildfile

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
GOLDEN_BUILD = RESOURCES / "golden" / "build.py"
GOLDEN_KEYS = RESOURCES / "golden_keys.json"
COMMAND = "python -m tests.support.golden --update"


@attrs.frozen
class Case:
    """One plan of the golden build file."""

    target: str
    build_args: Mapping[str, str] = attrs.field(factory=dict)
    platform: str = "linux/amd64"

    @property
    def name(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in sorted(self.build_args.items()))
        return f"{self.target}[{self.platform}]" + (f"[{args}]" if args else "")


CASES = (
    Case("app"),
    Case("app", {"VERSION": "2.0"}),
    Case("deps", platform="linux/arm64"),
    Case("tool"),
    Case("quiet"),
)


def compute() -> dict[str, Any]:
    """The golden file's content for the code as it is now."""
    build = load_buildfile(GOLDEN_BUILD)
    cases: dict[str, list[list[str]]] = {}
    for case in CASES:
        plan = build.plan(case.target, build_args=case.build_args, platform=case.platform)
        cases[case.name] = [[step.instruction, step.key] for step in plan.steps]
    return {"key_version": KEY_VERSION, "regenerate": COMMAND, "cases": cases}


def recorded() -> dict[str, Any]:
    """The golden file as committed."""
    data: dict[str, Any] = json.loads(GOLDEN_KEYS.read_text())
    return data


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per step whose key differs (instructions are shown, never compared)."""
    lines = []
    if old.get("key_version") != new.get("key_version"):
        lines.append(f"key_version: {old.get('key_version')} -> {new.get('key_version')}")
    old_cases, new_cases = old.get("cases", {}), new.get("cases", {})
    for name in sorted(old_cases.keys() | new_cases.keys()):
        before = [key for _, key in old_cases.get(name, [])]
        after = new_cases.get(name, [])
        if len(before) != len(after):
            lines.append(f"{name}: {len(before)} steps -> {len(after)}")
            continue
        for i, (key, (instruction, now)) in enumerate(zip(before, after, strict=True)):
            if key != now:
                lines.append(f"{name} step {i} {instruction}: {key[:16]} -> {now[:16]}")
    return lines


def render(data: Mapping[str, Any]) -> str:
    """The golden file's text: one line per step, so a diff shows which steps moved."""
    lines = ["{", f' "key_version": {json.dumps(data["key_version"])},']
    lines.append(f' "regenerate": {json.dumps(data["regenerate"])},')
    lines.append(' "cases": {')
    cases = list(data["cases"].items())
    for i, (name, steps) in enumerate(cases):
        lines.append(f"  {json.dumps(name)}: [")
        lines.extend(
            f"   {json.dumps(step)}" + ("," if j < len(steps) - 1 else "")
            for j, step in enumerate(steps)
        )
        lines.append("  ]" + ("," if i < len(cases) - 1 else ""))
    lines.extend([" }", "}", ""])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.golden", description=__doc__)
    parser.add_argument("--update", action="store_true", help="rewrite the golden file")
    parser.add_argument(
        "--keep-version",
        action="store_true",
        help="with --update: record changed keys under the same KEY_VERSION",
    )
    options = parser.parse_args(argv)
    new = compute()
    old = recorded() if GOLDEN_KEYS.exists() else {}
    lines = differences(old, new)
    for line in lines:
        print(line)
    if not options.update:
        return 1 if lines else 0
    kept = {name: new["cases"].get(name, []) for name in old.get("cases", {})}
    moved = differences(old, {**new, "cases": kept})
    if moved and old.get("key_version") == new["key_version"] and not options.keep_version:
        print(
            f"keys changed but KEY_VERSION is still {KEY_VERSION}: bump it in imagedsl/keys.py "
            "(every user's next build is then cold, once), or pass --keep-version for keys "
            "no release has shipped",
            file=sys.stderr,
        )
        return 1
    GOLDEN_KEYS.write_text(render(new))
    print(f"wrote {GOLDEN_KEYS} ({len(lines)} differences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

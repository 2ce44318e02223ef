"""The kill rate of the last ``mutmut run`` (``nox -s mutation``), per mutated module.

Reads the ``mutants/**/*.py.meta`` files mutmut leaves, prints each module's killed,
survived and unchecked mutants and the names of the survivors (``mutmut show NAME`` shows
one), and exits 1 when a module's kill rate is under :data:`TARGET`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

TARGET = 0.90
#: mutmut's exit codes that count as a killed mutant (tests failed, pytest error, timeout,
#: crash); 0 is a survivor; None was not checked; 33/5 had no test covering it.
KILLED = {1, 3, 36, -24, 24, 152, 255, -11, -9}


def main(argv: Sequence[str] | None = None) -> int:
    root = Path(argv[0] if argv else "mutants")
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {root}/: run `nox -s mutation` first")
        return 1
    below = []
    total_killed = total = 0
    for meta in metas:
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        module = str(meta.relative_to(root)).removesuffix(".meta")
        killed = sorted(k for k, c in codes.items() if c in KILLED)
        survived = sorted(k for k, c in codes.items() if c == 0)
        untested = sorted(k for k, c in codes.items() if c in (5, 33))
        unchecked = sorted(k for k, c in codes.items() if c is None)
        counted = len(killed) + len(survived) + len(untested)
        rate = len(killed) / counted if counted else 1.0
        total_killed += len(killed)
        total += counted
        print(
            f"{module}: {len(killed)}/{counted} killed ({rate:.1%}), {len(survived)} survived, "
            f"{len(untested)} without a covering test, {len(unchecked)} not checked"
        )
        for name in [*survived, *untested]:
            print(f"    {'survived' if name in survived else 'no test '}  {name}")
        if rate < TARGET:
            below.append(module)
    overall = total_killed / total if total else 1.0
    print(f"overall: {total_killed}/{total} killed ({overall:.1%}); target {TARGET:.0%} per module")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

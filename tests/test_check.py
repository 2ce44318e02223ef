"""``imagedsl check``: each rule finds what it is for, and nothing on clean builds."""

from __future__ import annotations

import json
import re
import shutil
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import imagedsl as dsl
from imagedsl import credentials
from imagedsl.api import BuildSession, load_buildfile, plan
from imagedsl.check import RULES, CheckReport, Severity
from imagedsl.check.sarif import to_sarif
from imagedsl.planner import record_step
from imagedsl.store import Store
from tests.support.cli import imagedsl

RESOURCES = Path(__file__).parent / "resources"
ROOT = Path(__file__).parent.parent
EXAMPLES = sorted(ROOT.glob("examples/*/build.py"))
#: A made-up key in the format of one (PEM header), written at test time, never committed.
FAKE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n"


@pytest.fixture(name="project")
def fixture_project(tmp_path: Path) -> Path:
    """A private copy of the check samples, with credentials planted in their context."""
    copy = tmp_path / "check"
    shutil.copytree(RESOURCES / "check", copy)
    (copy / "ctx" / ".env").write_text("DATABASE_PASSWORD=s3cr3t-value\n")
    (copy / "ctx" / "deploy_key").write_text(FAKE_KEY + "-----END OPENSSH PRIVATE KEY-----\n")
    return copy


def check(project: Path, name: str, target: str | None = None, **options: object) -> CheckReport:
    """Check one sample build file with a private store."""
    session = BuildSession(project / name, target, store=project / "store", **options)  # type: ignore[arg-type]
    return session.check()


def located(report: CheckReport) -> set[tuple[str, str, int]]:
    """(rule, stage, step) of each active finding."""
    return {(f.rule, f.stage, f.step) for f in report.active}


@pytest.mark.parametrize(
    ("name", "target", "expected"),
    [
        pytest.param("secret_env.py", None, {("secret-env", "app", 1)}, id="secret-env"),
        pytest.param("secret_arg.py", None, {("secret-arg", "app", 1)}, id="secret-arg"),
        pytest.param(
            "secret_file.py",
            None,
            {("secret-file", "app", 1)},
            id="secret-file",
        ),
        pytest.param("cache_order.py", None, {("cache-order", "app", 2)}, id="cache-order"),
        pytest.param("deleted_later.py", None, {("deleted-later", "app", 4)}, id="deleted-later"),
        pytest.param(
            "root_user.py", "explicit", {("root-user", "explicit", 3)}, id="root-explicit"
        ),
        pytest.param(
            "root_user.py", "implicit", {("root-user", "implicit", 1)}, id="root-implicit"
        ),
        pytest.param("root_user.py", "data", set(), id="root-data-image"),
        pytest.param(
            "toolchain.py", "compiled", {("toolchain-in-final", "compiled", 0)}, id="sdk-base"
        ),
        pytest.param(
            "toolchain.py", "installed", {("toolchain-in-final", "installed", 1)}, id="build-tools"
        ),
        pytest.param("toolchain.py", "cleaned", set(), id="build-tools-removed"),
        pytest.param("package_cache.py", "apt", {("package-cache", "apt", 1)}, id="apt"),
        pytest.param("package_cache.py", "apk", {("package-cache", "apk", 1)}, id="apk"),
        pytest.param("package_cache.py", "pip", {("package-cache", "pip", 1)}, id="pip"),
        pytest.param("package_cache.py", "npm", {("package-cache", "npm", 2)}, id="npm"),
        pytest.param("package_cache.py", "clean", set(), id="caches-cleaned"),
        pytest.param("unpinned.py", None, {("unpinned-base", "app", 0)}, id="unpinned-base"),
    ],
)
def test_rule_finds_its_planted_problem(
    project: Path, name: str, target: str | None, expected: set[tuple[str, str, int]]
) -> None:
    """Each sample plants one problem; check finds it at its step, and only it."""
    assert located(check(project, name, target)) == expected


def test_secret_files_are_named_by_kind(project: Path) -> None:
    """The .env and the private key in the copied context are both reported, by path."""
    report = check(project, "secret_file.py")
    messages = [f.message for f in report.findings if f.rule == "secret-file"]
    assert len(messages) == 2
    assert any(".env (a .env file)" in m for m in messages)
    assert any("deploy_key (a private key)" in m for m in messages)


def test_build_arg_value_is_checked_and_masked(project: Path) -> None:
    """A --build-arg value in a credential's format is a secret-arg finding, never shown."""
    token = "glpat-" + "Z" * 20
    report = check(project, "secret_arg.py", build_args={"NPM_TOKEN": token})
    steps = sorted(f.step for f in report.active if f.rule == "secret-arg")
    assert steps == [1, 2]
    assert all(token not in f.message for f in report.findings)
    assert all("ghp_0123456789" not in f.message for f in report.findings)


def test_cache_order_gives_the_exact_split(project: Path) -> None:
    """The cache-order message names the manifests to copy first and the install to run."""
    (finding,) = [f for f in check(project, "cache_order.py").findings if f.rule == "cache-order"]
    assert '.copy(src.select("package.json", "package-lock.json"), "/app/")' in finding.message
    assert '.run("npm ci --omit=dev")' in finding.message


def test_deleted_later_names_files_and_bytes(project: Path) -> None:
    """A deletion of copied files says which, and how many bytes still ship; a deletion of a
    download made by an earlier RUN is found too."""
    messages = [f.message for f in check(project, "deleted_later.py").findings]
    assert any("/srv/big.txt, 2.9 KiB" in m for m in messages)
    assert any("/tmp/tool.tgz" in m for m in messages)


def test_allow_suppresses_and_lists(project: Path) -> None:
    """`.allow(rule)` marks that rule's findings at the step as suppressed: listed, but they
    no longer fail the check."""
    report = check(project, "allowed.py")
    suppressed = {(f.rule, f.step) for f in report.findings if f.suppressed}
    assert suppressed == {("package-cache", 1), ("root-user", 2)}
    assert not report.fails(Severity.INFO) or all(f.rule == "unpinned-base" for f in report.active)
    assert report.counts()["suppressed"] == 2


def test_allow_refuses_an_unknown_rule(project: Path) -> None:
    """An unknown rule in `.allow(...)` is an error at its line."""
    with pytest.raises(dsl.BuildFileError) as caught:
        load_buildfile(project / "allow_unknown.py")
    assert caught.value.location is not None
    assert caught.value.location.line == 3
    assert "no-such-rule" in str(caught.value)


def test_allow_keeps_the_key() -> None:
    """Allowing a rule changes no key: it is advice about the build, not part of it."""
    plain = dsl.image("debian:12").run("apt-get update")
    allowed = plain.allow("package-cache", "deleted-later")
    assert allowed == plain
    assert plan(allowed).steps[-1].key == plan(plain).steps[-1].key


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_examples_have_no_warnings(path: Path, tmp_path: Path) -> None:
    """The repository's own examples pass check: nothing of warning or worse, any target."""
    build = load_buildfile(path)
    for target in build.targets:
        report = BuildSession(build, target, store=tmp_path / "store").check()
        assert not report.fails(Severity.WARNING), [f.message for f in report.active]


def test_every_rule_has_a_docs_section() -> None:
    """docs/rules.md has a section for every rule ID, with its why and its fix."""
    text = (ROOT / "docs" / "rules.md").read_text()
    headings = set(re.findall(r"^### `([a-z-]+)`", text, re.MULTILINE))
    assert headings == set(RULES)


# -- the command -------------------------------------------------------------------------------


def test_check_command_exit_codes_and_json(project: Path) -> None:
    """Exit 1 when a finding reaches --fail-on (default error), else 0; --json is schema 1."""
    store = project / "store"
    failing = imagedsl("check", "secret_env.py", "--json", cwd=project, store=store)
    assert failing.returncode == 1, failing.stderr
    data = json.loads(failing.stdout)
    assert data["schema"] == 1
    (finding,) = data["findings"]
    assert set(finding) >= {"rule", "category", "severity", "message", "file", "line", "stage",
                            "step"}  # fmt: skip
    assert (finding["rule"], finding["severity"], finding["line"]) == ("secret-env", "error", 5)
    assert "wJalrXUtnFEMI/K7MDENG" not in failing.stdout
    passing = imagedsl("check", "unpinned.py", cwd=project, store=store)
    assert passing.returncode == 0, passing.stderr
    strict = imagedsl("check", "unpinned.py", "--fail-on", "info", cwd=project, store=store)
    assert strict.returncode == 1
    missing = imagedsl("check", "nothing.py", cwd=project, store=store)
    assert missing.returncode == 2


def test_check_command_writes_sarif(project: Path) -> None:
    """--sarif FILE writes a SARIF 2.1.0 log: every rule described, one result per finding."""
    result = imagedsl(
        "check", "allowed.py", "--sarif", "out.sarif", cwd=project, store=project / "store"
    )
    assert result.returncode == 0, result.stderr
    log = json.loads((project / "out.sarif").read_text())
    assert log["version"] == "2.1.0"
    run = log["runs"][0]
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == set(RULES)
    by_rule = {r["ruleId"]: r for r in run["results"]}
    assert by_rule["package-cache"]["suppressions"] == [
        {"kind": "inSource", "justification": "allow(...)"}
    ]
    location = by_rule["package-cache"]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "allowed.py"
    assert location["region"]["startLine"] == 5


def test_sarif_of_a_report_locates_relative_to_a_root(project: Path) -> None:
    """to_sarif makes file URIs relative to the root it is given."""
    report = check(project, "unpinned.py")
    log = to_sarif(report, root=project.parent)
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert uri == {"uri": "check/unpinned.py", "uriBaseId": "SRCROOT"}


# -- plan shows errors and masks secrets -----------------------------------------------------


def test_plan_shows_errors_under_their_rows_and_masks_values(project: Path) -> None:
    """The plan table has one line per check error under its step, and no secret value in
    the table, the JSON or the DOT."""
    store = project / "store"
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzzzzzzzzz"
    table = imagedsl("plan", "secret_env.py", cwd=project, store=store)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if "app[1]" in line)
    assert lines[row + 1].strip().startswith("- error secret-env: ENV AWS_SECRET_ACCESS_KEY=")
    for output in ("--json", "--dot"):
        shown = imagedsl("plan", "secret_env.py", output, cwd=project, store=store)
        assert shown.returncode == 0
        assert secret not in shown.stdout
    assert secret not in table.stdout
    assert "LOG_LEVEL=info" in table.stdout


def test_plan_masks_secrets_in_miss_reasons(tmp_path: Path) -> None:
    """A changed secret-looking ENV is explained without showing either value."""
    store = Store(tmp_path / "store")
    old = dsl.image("alpine").env(API_TOKEN="first-secret-value-123")
    for step in plan(old, store=store).steps:
        record_step(store, step)
    new = dsl.image("alpine").env(API_TOKEN="second-secret-value-456").run("true")
    text = json.dumps(plan(new, store=store).to_json())
    assert "first-secret" not in text
    assert "second-secret" not in text


# -- cache-order-history -----------------------------------------------------------------------


def test_history_names_the_step_that_keeps_invalidating(tmp_path: Path) -> None:
    """A COPY whose files changed before most recorded runs of the expensive RUN on it is
    reported with how often and how many seconds it cost (the median run, and the sum)."""
    project = tmp_path / "history"
    (project / "src").mkdir(parents=True)
    build = project / "build.py"
    build.write_text(
        "import imagedsl as dsl\n"
        'src = dsl.context("src")\n'
        'app = dsl.image("alpine@sha256:' + "a" * 64 + '").copy(src, "/src")'
        '.run("make all").user("1").cmd("app")\n'
    )
    store = Store(tmp_path / "store")
    for version in range(4):
        (project / "src" / "main.c").write_text(f"int main() {{ return {version}; }}\n")
        planned = BuildSession(build, store=store).plan()
        for step in planned.steps:
            seconds = (10.0, 40.0, 44.0, 100.0)[version] if step.kind == "run" else 0.1
            record_step(store, step, seconds=seconds)
    report = BuildSession(build, store=store).check()
    (finding,) = [f for f in report.findings if f.rule == "cache-order-history"]
    assert (finding.stage, finding.step) == ("app", 1)
    assert "4 of the last 4 recorded runs" in finding.message
    assert "42 s each, 194 s in all" in finding.message


def test_history_is_quiet_for_cheap_steps(tmp_path: Path) -> None:
    """Re-running a step that takes a second is not worth a warning."""
    project = tmp_path / "history"
    (project / "src").mkdir(parents=True)
    build = project / "build.py"
    build.write_text(
        "import imagedsl as dsl\n"
        'src = dsl.context("src")\n'
        'app = dsl.image("alpine@sha256:' + "a" * 64 + '").copy(src, "/src").run("ls")\n'
    )
    store = Store(tmp_path / "store")
    for version in range(5):
        (project / "src" / "f.txt").write_text(str(version))
        for step in BuildSession(build, store=store).plan().steps:
            record_step(store, step, seconds=0.5)
    report = BuildSession(build, store=store).check()
    assert not [f for f in report.findings if f.rule == "cache-order-history"]


# -- what looks like a credential ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        pytest.param("AWS_SECRET_ACCESS_KEY", True, id="aws-secret"),
        pytest.param("GITHUB_TOKEN", True, id="token"),
        pytest.param("PGPASSWORD", True, id="run-together"),
        pytest.param("apiKey", True, id="camel-case"),
        pytest.param("STRIPE_KEY", True, id="final-key"),
        pytest.param("GPG_KEY", False, id="public-key"),
        pytest.param("CACHE_KEY", False, id="lookup-key"),
        pytest.param("PASSWORD_FILE", False, id="path-to-secret"),
        pytest.param("AWS_ACCESS_KEY_ID", False, id="id"),
        pytest.param("TOKENIZERS_PARALLELISM", False, id="not-a-token"),
        pytest.param("NODE_ENV", False, id="plain"),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    """Names are read word by word: credential words make a secret; reference words do not."""
    assert credentials.secret_name(name) is secret


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        pytest.param("AKIA" + "Q" * 16, "aws-access-key", id="aws"),
        pytest.param("AKIAIOSFODNN7EXAMPLE", None, id="aws-documented-example"),
        pytest.param("ghp_" + "a" * 36, "github-token", id="github"),
        pytest.param("xoxb-" + "1" * 12, "slack-token", id="slack"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXh5eg", "jwt", id="jwt"),
        pytest.param("postgres://app:s3cret@db/app", "url-password", id="url"),
        pytest.param("https://example.com/path", None, id="url-without-password"),
    ],
)
def test_value_formats(value: str, kind: str | None) -> None:
    """Credential formats are known whatever the variable's name."""
    assert credentials.value_format(value) == kind


@given(value=st.text(alphabet=string.ascii_letters + string.digits + "-_/+", min_size=8))
def test_masking_never_gives_a_value_away(value: str) -> None:
    """A masked secret-looking value keeps at most its first four characters."""
    shown = credentials.mask_pair("API_TOKEN", value)
    assert value not in shown or credentials.trivial_value(value)


def test_context_files_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file's bytes are read for credentials once: an edit reads only the edited file, and
    source code is never read."""
    from imagedsl.check import _context

    reads: list[str] = []
    original = _context._content_kind

    def counting(root: str, source: str) -> str | None:
        reads.append(source)
        return original(root, source)

    monkeypatch.setattr(_context, "_content_kind", counting)
    (tmp_path / "ctx").mkdir()
    for name in ("a.json", "b.yaml", "c.conf", "main.py"):
        (tmp_path / "ctx" / name).write_text(f"{name}\n")
    build = tmp_path / "build.py"
    build.write_text(
        'import imagedsl as dsl\napp = dsl.scratch().copy(dsl.context("ctx"), "/app")\n'
    )
    BuildSession(build, store=tmp_path / "store").check()
    assert sorted(reads) == ["a.json", "b.yaml", "c.conf"]
    reads.clear()
    (tmp_path / "ctx" / "b.yaml").write_text("changed\n")
    BuildSession(build, store=tmp_path / "store").check()
    assert reads == ["b.yaml"]
    reads.clear()
    BuildSession(build, store=tmp_path / "store").check()
    assert reads == []

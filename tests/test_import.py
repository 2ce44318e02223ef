"""``imagedsl import``: Dockerfiles become build.py files that lower back to the same build.

The corpus (``tests/resources/import/*.Dockerfile``, with the context files beside them in
``context/``) covers every instruction, flag and parser feature the importer reads. Each file
is imported; the build.py must be formatted as ``ruff format`` formats it and plan; lowering
each of its targets must give the Dockerfile's own instructions (``tests.support.importing.flatten``).
A representative subset is built with BuildKit, first from the Dockerfile, then from the
lowered one: every step of the second build must be CACHED (the same BuildKit cache keys).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import imagedsl as dsl
from imagedsl import api, buildstate
from imagedsl.api import Plan, Store, import_dockerfile, load_buildfile
from imagedsl.backends.dockerfile._words import shell_form_is_exact
from imagedsl.backends.dockerfile.lowering import (
    DOCKERFILE_1_4,
    LoweringError,
    lower_to_dockerfile,
    write_build_dir,
)
from imagedsl.cli import main
from imagedsl.graph import BaseResolver
from imagedsl.importer import DockerfileImportError, translate_text
from imagedsl.importer._translate import stage_variable
from imagedsl.oci.reference import ImageReference
from imagedsl.steps import Healthcheck, InlineFile, OnBuild, UrlSource
from tests.support.docker import DockerEngine
from tests.support.importing import flatten, targets
from tests.test_lower import _builds

RESOURCES = Path(__file__).parent / "resources" / "import"
CORPUS = sorted(RESOURCES.glob("*.Dockerfile"))

#: Built by Docker 20.10's own frontend (no heredocs, --link, --parents, --exclude, --checksum).
ENGINE_SUBSET = (
    "03-multistage",
    "04-copy-file",
    pytest.param(
        "05-copy-dir",
        marks=pytest.mark.xfail(
            reason="BuildKit 0.8 keys `COPY app /d` and the lowering's `COPY <digest>/ /d` "
            "apart: the source's spelling (its trailing slash) is in BuildKit's COPY key",
            strict=True,
        ),
    ),
    "15-user",
    "42-stage-index",
    "10-env-forms",
    "12-global-args",
    "26-continuations",
    "32-mount-cache",
    "34-mount-bind",
    "43-from-stage-chain",
    "46-arg-env-order",
    "48-many-stages",
    "50-maintainer",
    "51-copy-from-several",
)


def _project(tmp_path: Path, dockerfile: Path, base: str | None = None) -> Path:
    """The context files and the Dockerfile (its base replaced by ``base``) in ``tmp_path``."""
    shutil.copytree(RESOURCES / "context", tmp_path, dirs_exist_ok=True)
    text = dockerfile.read_text()
    if base is not None:
        text = re.sub(r"\bbusybox\b", base, text)
    (tmp_path / "Dockerfile").write_text(text)
    return tmp_path / "Dockerfile"


def _import(tmp_path: Path, dockerfile: Path, base: str | None = None) -> Path:
    source = _project(tmp_path, dockerfile, base)
    build_py = tmp_path / "build.py"
    build_py.write_text(import_dockerfile(source, build_py))
    return build_py


def test_corpus_is_large_enough() -> None:
    """The round trip is proven on at least 40 Dockerfiles."""
    assert len(CORPUS) >= 40


def test_every_import_is_formatted_as_ruff_formats(tmp_path: Path) -> None:
    """``ruff format --check`` (100 columns, as this project's) passes on every build.py."""
    for dockerfile in CORPUS:
        project = tmp_path / dockerfile.stem
        project.mkdir()
        _import(project, dockerfile)
    files = sorted(str(p) for p in tmp_path.glob("*/build.py"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "format",
            "--check",
            "--diff",
            "--no-cache",
            "--line-length=100",
            *files,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", [pytest.param(p, id=p.stem) for p in CORPUS])
def test_lowering_the_import_gives_the_dockerfile_back(tmp_path: Path, dockerfile: Path) -> None:
    """Every target of the import lowers to the Dockerfile's instructions, normalised."""
    build_py = _import(tmp_path, dockerfile)
    text = dockerfile.read_text()
    buildfile = load_buildfile(build_py)
    assert list(buildfile.targets) == targets(text)
    for target in buildfile.targets:
        lowered = lower_to_dockerfile(buildfile.plan(target), features=DOCKERFILE_1_4)
        assert flatten(lowered.text) == flatten(text, target), target


def _all_cached(output: str) -> list[str]:
    """The step vertices (``[stage k/n] ...``, FROM excluded) that BuildKit did not cache."""
    names: dict[str, str] = {}
    cached: set[str] = set()
    for line in output.splitlines():
        match = re.match(r"#(\d+) (.*)", line)
        if match is None:
            continue
        number, rest = match.groups()
        if number not in names:
            names[number] = rest
        elif rest.strip() == "CACHED":
            cached.add(number)
    steps = {
        n: name
        for n, name in names.items()
        if re.match(r"\[[^\]]*\d+/\d+\] ", name) and "] FROM " not in name
    }
    return [name for n, name in steps.items() if n not in cached]


@pytest.fixture(name="fresh_base", scope="module")
def fixture_fresh_base(docker_engine: DockerEngine, busybox_image: str) -> Iterator[str]:
    """A base no earlier run has built on, so that every step's cache starts empty."""
    tag = f"imagedsl-test/import-base:{uuid.uuid4().hex[:12]}"
    dockerfile = f"FROM {busybox_image}\nRUN echo {tag} > /nonce\n"
    docker_engine.run("build", "-q", "-t", tag, "-", input=dockerfile)
    yield tag
    docker_engine.run("rmi", "--no-prune", tag, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ENGINE_SUBSET)
def test_lowered_import_builds_from_the_dockerfiles_cache(
    tmp_path: Path, docker_engine: DockerEngine, fresh_base: str, name: str
) -> None:
    """After building the Dockerfile, building its lowered import is CACHED at every step."""
    build_py = _import(tmp_path / "project", RESOURCES / f"{name}.Dockerfile", fresh_base)
    project = build_py.parent
    buildfile = load_buildfile(build_py)
    for target in buildfile.targets:
        stage = target_stage(project, target)
        chosen = ["--target", stage] if stage else []
        docker_engine.run("build", "--progress=plain", *chosen, str(project))
        lowered = tmp_path / f"lowered-{target}"
        write_build_dir(buildfile.plan(target), lowered)
        second = docker_engine.run("build", "--progress=plain", str(lowered))
        output = second.stdout + second.stderr
        assert _all_cached(output) == [], output


def target_stage(project: Path, target: str) -> str | None:
    """The Dockerfile's own name of the stage imported as ``target`` (None: the last one)."""
    text = (project / "Dockerfile").read_text()
    names: list[str] = re.findall(r"^FROM .* AS (\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    for stage in names:
        if stage_variable(stage.lower()) == target:
            return stage
    return None


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param("FROM busybox\nMAINTAINER\n", 2, "MAINTAINER needs a name", id="maintainer"),
        pytest.param("FROM busybox\nADD https://x.invalid/f /f\n", 2, "checksum", id="add-url"),
        pytest.param("FROM busybox\nRUN --mount=type=ssh true\n", 2, "ssh", id="ssh-mount"),
        pytest.param("FROM busybox\nRUN --security=insecure true\n", 2, "security", id="security"),
        pytest.param(
            "FROM busybox\nCOPY --from=later /a /a\nFROM busybox AS later\n",
            2,
            "later",
            id="later-stage",
        ),
        # A variable in a COPY source imports now (the planner expands it); in a bind
        # mount's source it is still refused.
        pytest.param(
            "FROM busybox\nRUN --mount=source=$X,target=/x true\n",
            2,
            "variable",
            id="bind-variable",
        ),
        pytest.param("RUN true\nFROM busybox\n", 1, "before the first FROM", id="before-from"),
        pytest.param(
            "FROM busybox\nCOPY <<EOF /f\n$HOME\nEOF\n",
            2,
            "expands $HOME",
            id="copy-heredoc-expands",
        ),
        pytest.param(
            "FROM busybox\nRUN <<EOF\n#!/bin/sh\necho\nEOF\n", 2, "#!", id="run-heredoc-shebang"
        ),
        pytest.param("FROM busybox\nADD --keep-git-dir=true a /a\n", 2, "keep-git-dir", id="git"),
        pytest.param(
            "FROM busybox\nENV A=x\\\\$HOME\n", 2, "backslash before an expression", id="bs-var"
        ),
    ],
)
def test_what_a_build_py_cannot_say_is_refused(text: str, line: int, words: str) -> None:
    """A Dockerfile line that cannot be expressed exactly is refused, naming the line."""
    with pytest.raises(DockerfileImportError) as caught:
        translate_text(text)
    assert caught.value.line == line
    assert words in caught.value.problem
    assert str(caught.value).startswith(f"Dockerfile:{line}: ")


@pytest.mark.parametrize(
    ("line", "call"),
    [
        # The word of ${A:-word} is lexed by BuildKit too: \\\\ is one backslash, \\$ a dollar.
        ("ENV A=${A:-\\\\}", '.env(A="${A:-\\\\}")'),
        ("ENV A=${A:-\\$}", '.env(A="${A:-$}")'),
        ("ENV A=${A:-\\$B}", '.env(A="${A:-\\\\$B}")'),
        # JSON-form paths go through the word lexer after the JSON is decoded.
        ('COPY ["a", "\\\\\'q"]', '.copy(src.select("a"), "\'q")'),
        ('COPY ["a", "x\\\\$y"]', '.copy(src.select("a"), "x\\\\$y")'),
        ('VOLUME ["/d\\\\\'q"]', '.volume("/d\'q")'),
    ],
)
def test_words_are_read_as_buildkit_reads_them(line: str, call: str) -> None:
    """Escapes inside an expression's word and in JSON-form paths mean what BuildKit's word
    lexer makes of them, spelled as imagedsl reads its strings."""
    translated = translate_text(f"FROM scratch\n{line}\n")
    assert f"dsl.scratch(){call}" in translated, translated


def test_a_redundant_escape_keys_as_the_plain_dollar() -> None:
    """``\\$`` before what cannot start an expression is a plain ``$``: the same key, so a
    build file and the Dockerfile lowered from it agree however either spelled it."""
    for plain, escaped in [
        (dsl.scratch().env(A="$"), dsl.scratch().env(A="\\$")),
        (dsl.scratch().arg("A", "${A:-$}"), dsl.scratch().arg("A", "${A:-\\$}")),
        (dsl.image("busybox").arg("A", "${A:-$}"), dsl.image("busybox").arg("A", "${A:-\\$}")),
    ]:
        keys = [
            [step.key for step in api.plan({"s": stage}, "s", resolve_base=_by_name).steps]
            for stage in (plain, escaped)
        ]
        assert keys[0] == keys[1]
    assert (
        api.plan({"s": dsl.scratch().env(A="\\$A")}, "s").steps[-1].key
        != api.plan({"s": dsl.scratch().env(A="$A")}, "s").steps[-1].key
    )


def test_cli_refusal_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``imagedsl import`` prints ``Dockerfile:LINE: message`` and exits 2."""
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN --mount=type=ssh true\n")
    os.chdir(tmp_path)
    assert main(["import"]) == 2
    assert "Dockerfile:2: --mount=type=ssh" in capsys.readouterr().err


def test_cli_writes_the_build_py(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``imagedsl import DOCKERFILE`` prints the build.py; ``-o FILE`` writes it."""
    source = _project(tmp_path, RESOURCES / "04-copy-file.Dockerfile")
    assert main(["import", str(source)]) == 0
    printed = capsys.readouterr().out
    assert main(["import", str(source), "-o", str(tmp_path / "build.py")]) == 0
    assert (tmp_path / "build.py").read_text() == printed
    assert 'src.file("a.txt")' in printed


def test_idiomatic_names_targets_and_header(tmp_path: Path) -> None:
    """Stages are named after the Dockerfile's (``-``/``.`` as ``_``), targets are the named
    stages and the last one, global ARGs are ``dsl.arg`` values, the header names the source."""
    text = import_dockerfile(_project(tmp_path, RESOURCES / "47-dockerignore-names.Dockerfile"))
    assert text.startswith("# Imported by imagedsl from ")
    assert "builder_stage_1 = " in text
    assert 'dsl.targets("final_image", "builder_stage_1")' in text
    text = import_dockerfile(_project(tmp_path, RESOURCES / "45-global-in-from.Dockerfile"))
    assert 'TAG = dsl.arg("TAG", "latest")' in text
    assert 'dsl.image(f"busybox:{TAG}")' in text


def test_dockerignore_becomes_the_ignore_list(tmp_path: Path) -> None:
    """A ``.dockerignore`` beside the Dockerfile is the context's ignore list (and the
    build.py written beside it is left out: it is no file of the Dockerfile's build)."""
    source = _project(tmp_path, RESOURCES / "07-copy-all.Dockerfile")
    (tmp_path / ".dockerignore").write_text("# comment\n*.md\n!README.md\n\napp/util.py\n")
    text = import_dockerfile(source)
    ignore = '["*.md", "!README.md", "app/util.py", "build.py"]'
    assert f'src = dsl.context(".", ignore={ignore})' in text
    assert load_buildfile(tmp_path / "build.py" if False else _write(tmp_path, text)).targets


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "build.py").write_text(text)
    return tmp_path / "build.py"


def test_comments_and_directives_are_carried_over(tmp_path: Path) -> None:
    """Comments become Python comments where they stood; parser directives are noted."""
    text = import_dockerfile(_project(tmp_path, RESOURCES / "27-comments.Dockerfile"))
    for comment in ("# about the base", "    # before a run", "    # about the env", "# trailing"):
        assert comment in text
    text = import_dockerfile(_project(tmp_path, RESOURCES / "28-directives.Dockerfile"))
    assert "syntax=docker/dockerfile:1" in text


# -- import(lower(X)) plans as X -----------------------------------------------------------------

BUILD_FILES = sorted(
    [
        *(Path(__file__).parent.parent / "examples").glob("*/build.py"),
        Path(__file__).parent / "resources" / "project" / "build.py",
        Path(__file__).parent / "resources" / "project" / "build_sleep.py",
    ]
)


def _by_name(reference: ImageReference, platform: str) -> None:
    """A base resolver that knows no base: every base is keyed by its name as written."""
    del reference, platform


def _reimported_keys(
    plan: Plan,
    target: str,
    directory: Path,
    store: Store,
    *,
    resolve_base: BaseResolver | None = None,
) -> list[str]:
    """The keys of ``target``'s plan after lowering ``plan`` and importing the Dockerfile
    (bases resolved by ``resolve_base``, by default as a build file's are)."""
    write_build_dir(plan, directory)
    build_py = directory / "build.py"
    build_py.write_text(import_dockerfile(directory / "Dockerfile", build_py))
    imported = load_buildfile(build_py).plan(
        stage_variable(target), store=store, resolve_base=resolve_base
    )
    return [step.key for step in imported.steps]


@pytest.mark.parametrize(
    "build_file", [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in BUILD_FILES]
)
def test_import_of_the_lowering_plans_with_the_same_keys(tmp_path: Path, build_file: Path) -> None:
    """For every example and test build.py, ``import(lower(X))`` plans every target with X's
    keys."""
    buildfile = load_buildfile(build_file)
    store = Store(tmp_path / "store")
    for target in buildfile.targets:
        plan = buildfile.plan(target, store=store)
        keys = _reimported_keys(plan, target, tmp_path / target, store)
        assert keys == [step.key for step in plan.steps], target


@pytest.fixture(name="generated_src", scope="module")
def fixture_generated_src(tmp_path_factory: pytest.TempPathFactory) -> dsl.Context:
    """A context for generated builds (the files ``test_lower``'s generator selects)."""
    root = tmp_path_factory.mktemp("import-src")
    (root / "app").mkdir()
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "requirements.txt").write_text("flask\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    return dsl.context(root)


def _emulated(step: object) -> bool:
    """A step the lowering writes in an equivalent form for Docker 20.10's frontend."""
    source = getattr(step, "source", None)
    if isinstance(source, UrlSource | InlineFile):
        return True
    if isinstance(step, OnBuild):
        return True
    return bool(getattr(step, "link", False) or getattr(step, "parents", False))


@settings(
    max_examples=40,
    derandomize=True,  # the same 40 examples on every run: CI never meets a new one by chance
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_generated_builds_survive_lower_then_import(
    generated_src: dsl.Context, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Random build graphs (the lowering property test's generator): lowering then importing
    plans with the same keys, or the importer refuses with a Dockerfile line."""
    named = data.draw(_builds(generated_src))
    target = list(named)[-1]
    store = Store(tmp_path_factory.mktemp("store"))
    try:
        # Bases by name on both sides: which bases the engine knows is not the property.
        plan = api.plan(named, target, store=store, resolve_base=_by_name)
        lower_to_dockerfile(plan)
    except (buildstate.ExpansionError, LoweringError):
        assume(False)
        raise
    # Docker 20.10's frontend has no ADD --checksum, COPY --link, --parents or COPY <<EOF:
    # the lowering writes equivalent forms (a fetched URL, an inline file or a --parents
    # selection become staged context files, --link a stage of its own) that a Dockerfile
    # reader cannot tell from the plain forms, so those steps come back as plain copies. And
    # it writes ONBUILD in the target's stage only (triggers are the image's): the corpus and
    # the build files check ONBUILD.
    assume(not any(_emulated(step.node.step) for step in plan.steps))
    # The lowering may spell an expression another way (``$A¹`` as ``${A}¹``): the same value,
    # but a config step's key holds the text as written, so such builds cannot key alike.
    # Likewise a literal ``$`` the lowering escapes (``${A:-$}`` as ``${A:-\$}``).
    steps_text = "".join(repr(step.node.step) for step in plan.steps)
    lowered_text = lower_to_dockerfile(plan).text
    written = set(re.findall(r"\$\{?\w+", steps_text))
    spelled = set(re.findall(r"\$\{?\w+", lowered_text))
    assume(spelled <= written | {"$BUILDPLATFORM", "${TARGETPLATFORM"})
    assume(lowered_text.count("\\$") <= steps_text.count("\\\\$"))
    # An ENTRYPOINT keeps a CMD set in an earlier Dockerfile stage under build.py's rules, and
    # BuildKit drops it: the lowering writes that CMD again, a step the import then holds.
    cmd_lines = sum(line.startswith("CMD ") for line in lowered_text.splitlines())
    assume(cmd_lines <= sum(step.kind == "cmd" for step in plan.steps))
    # A shell-form HEALTHCHECK whose text no shell form spells is lowered as the shell's argv
    # in JSON, which BuildKit, and so the import, read as the exec form (CMD, not CMD-SHELL).
    assume(not any(_unspelled_healthcheck(step.node.step) for step in plan.steps))
    directory = tmp_path_factory.mktemp("lowered")
    try:
        keys = _reimported_keys(plan, target, directory, store, resolve_base=_by_name)
    except DockerfileImportError as refused:
        event(f"refused: {refused.problem.split(':')[0]}")
        line = refused.line
    else:
        assert keys == [step.key for step in plan.steps], (directory / "build.py").read_text()
        return
    assert line > 0


def _unspelled_healthcheck(step: object) -> bool:
    """A shell-form HEALTHCHECK whose text no shell form spells."""
    if not isinstance(step, Healthcheck) or not step.shell_form or not step.test:
        return False
    return not shell_form_is_exact(step.test[0])

"""``imagedsl import`` on forms met in real Dockerfiles of public projects (the fourth sweep).

Sixty-two Dockerfiles of public projects (BuildKit's and buildx's own, Traefik, Prometheus,
Vault, docker-library images, distroless, AWS tooling, small Go, Python, Node, Rust, .NET and
C projects) were imported and planned. Where the import gave a meaning other than BuildKit's,
each case below reduces the line that showed it; the expected values are BuildKit's (its own
integration test of COPY heredocs, or the engine here, which builds the same Dockerfile).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from imagedsl.backends.oci.image_config import apply_config_step
from imagedsl.errors import StepArgumentError
from imagedsl.importer import translate_text
from imagedsl.loader import load_buildfile
from imagedsl.planner import Plan
from imagedsl.steps import Copy, InlineFile, StopSignal
from imagedsl.store import Store
from tests.support.docker import DockerEngine
from tests.support.fidelity import docker_config
from tests.test_import_sweep import _by_name, _env, _load, _refused, _steps

#: BuildKit's testCopyHeredocSpecialSymbols, and the forms seen in real files: an unquoted
#: body is read by BuildKit's lexer (quotes plain), a quoted one is kept as written.
HEREDOCS = [
    pytest.param("EOF", '"quotes in file"\n', '"quotes in file"\n', id="quotes"),
    pytest.param("EOF", "\\\n", "\n", id="slash-newline"),
    pytest.param("EOF", "\\\\\n", "\\\n", id="two-slashes"),
    pytest.param("EOF", "\\$\n", "$\n", id="slash-dollar"),
    pytest.param('"EOF"', "\\\n", "\\\n", id="raw-slash-newline"),
    pytest.param('"EOF"', "\\\\\n", "\\\\\n", id="raw-two-slashes"),
    pytest.param('"EOF"', "\\$\n", "\\$\n", id="raw-slash-dollar"),
    pytest.param("EOF", 'exec "\\$@"\n', 'exec "$@"\n', id="escaped-args"),
    pytest.param("EOF", "echo $(date +%T) ${1}\n", "echo $(date +%T) \n", id="command-sub"),
    pytest.param("EOF", 'exec "$@"\n', 'exec ""\n', id="args-expand-to-nothing"),
    pytest.param("'EOF'", 'exec "$@" \\$x\n', 'exec "$@" \\$x\n', id="quoted-args"),
    pytest.param("-EOF", "\tprintf 'a\\\\n'\n", "printf 'a\\n'\n", id="dash-tabs"),
]


@pytest.mark.parametrize(("delimiter", "body", "expected"), HEREDOCS)
def test_a_copy_heredoc_holds_what_buildkit_writes(
    tmp_path: Path, delimiter: str, body: str, expected: str
) -> None:
    """Before, an unquoted body was copied byte for byte (``\\\\`` stayed two backslashes)
    and any ``$`` in it was refused, ``\\$@`` and ``$(date)`` included, with advice to quote
    the delimiter that would have changed the file."""
    _, plan = _load(tmp_path, f"FROM scratch\nCOPY <<{delimiter} /f\n{body}EOF\n")
    assert _inline_file(plan).content == expected.encode()


def _inline_file(plan: Plan) -> InlineFile:
    """The inline file the plan's last step copies."""
    step = plan.steps[-1].node.step
    assert isinstance(step, Copy)
    assert isinstance(step.source, InlineFile)
    return step.source


def test_a_heredoc_ignores_the_escape_directive(tmp_path: Path) -> None:
    """BuildKit reads a heredoc's body with a backslash escape whatever ``# escape=``
    says."""
    _, plan = _load(tmp_path, "# escape=`\nFROM scratch\nCOPY <<EOF /f\na\\$b `c\nEOF\n")
    assert _inline_file(plan).content == b"a$b `c\n"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        pytest.param("Hello ${name}!\n", "${name}", id="braced"),
        pytest.param("PORT=$PORT\n", "$PORT", id="plain"),
        pytest.param("d=${DLV:-5000}\n", "${DLV:-5000}", id="default"),
    ],
)
def test_a_heredoc_that_names_a_variable_is_refused_naming_it(body: str, named: str) -> None:
    """An inline file's text is not expanded: the line is refused, naming what expands."""
    error = _refused(f"FROM scratch\nARG name=x\nCOPY <<EOF /f\n{body}EOF\n")
    assert error.line == 3
    assert f"expands {named}" in error.problem
    assert "<<'EOF'" in error.problem


def test_add_heredoc_writes_the_file_copy_heredoc_writes(tmp_path: Path) -> None:
    """``ADD <<EOF /x``: BuildKit writes the file and unpacks nothing; before, refused."""
    text, plan = _load(tmp_path, "FROM scratch\nADD --chmod=755 <<EOF /x\nhi \\$\nEOF\n")
    assert '.copy(dsl.inline("hi $\\n", mode=0o755), "/x")' in text
    copied = _inline_file(plan)
    assert (copied.content, copied.mode) == (b"hi $\n", 0o755)
    error = _refused("FROM scratch\nADD --checksum=sha256:00 <<EOF /x\nhi\nEOF\n")
    assert "--checksum" in error.problem


def test_quotes_inside_an_operator_word_are_removed_as_buildkit_removes_them(
    tmp_path: Path, docker_engine: DockerEngine
) -> None:
    """``ARG GOGCFLAGS=${BUILDKIT_DEBUG:+"all=-N -l"}`` (BuildKit's own Dockerfile): the
    word inside ``${...}`` is lexed, quotes included; before, the quotes stayed in the value.
    The engine here builds the same file; the plan's environment is the image's."""
    dockerfile = (
        'FROM scratch\nARG D=1\nARG G=${D:+"all=-N -l"}\nENV E=$G\n'
        "ENV K=${U:-\"a b\"} L=${U:-a\\ b} M=${U:-'x y'} N=\"${U:-'q'}\"\n"
    )
    _, plan = _load(tmp_path, dockerfile)
    tag = f"imagedsl-test/operator-quotes:{uuid.uuid4().hex[:12]}"
    docker_engine.run("build", "-q", "-t", tag, "-", input=dockerfile)
    try:
        env = docker_config(docker_engine, tag).get("Env") or []
    finally:
        docker_engine.run("rmi", "--no-prune", tag, check=False)
    theirs = dict(item.split("=", 1) for item in env if not item.startswith("PATH="))
    assert theirs == {"E": "all=-N -l", "K": "a b", "L": "a b", "M": "x y", "N": "q"}
    ours = _env(plan)  # the ARGs D and G are in it too, while the build runs
    assert {name: ours.get(name) for name in theirs} == theirs


def test_a_from_with_an_operator_naming_a_stage_continues_that_stage(tmp_path: Path) -> None:
    """``FROM ${S:-builder}`` and BuildKit's ``FROM buildkit-$TARGETOS${DEBUG:+-debug}``:
    BuildKit expands the name, then looks it up among the stages; before, the import took
    both for registry images."""
    text, plan = _load(
        tmp_path,
        "ARG S\nARG DEBUG\nFROM scratch AS builder\nENV WHO=builder\n"
        "FROM scratch AS buildkit-linux\nENV WHO=plain\n"
        "FROM scratch AS buildkit-linux-debug\nENV WHO=debug\n"
        "FROM buildkit-$TARGETOS${DEBUG:+-debug} AS picked\nENV THEN=1\n"
        "FROM ${S:-builder}\nENV LAST=1\n",
    )
    assert 'dsl.from_stage("${S:-builder}")' in text
    assert 'dsl.from_stage("buildkit_${TARGETOS}${DEBUG:+-debug}")' in text
    assert _env(plan) == {"WHO": "builder", "LAST": "1"}
    buildfile = load_buildfile(tmp_path / "build.py")
    for debug, who in (("", "plain"), ("1", "debug")):
        picked = buildfile.plan(
            "picked",
            store=Store(tmp_path / "store"),
            resolve_base=_by_name,
            build_args={"DEBUG": debug},
        )
        assert _env(picked) == {"WHO": who, "THEN": "1"}


def test_a_stage_chosen_by_an_arg_holding_a_dash_is_found(tmp_path: Path) -> None:
    """``ARG V=a-b`` then ``FROM x-${V}`` names the stage ``x-a-b``, which the build.py
    calls ``x_a_b``; before, the plan looked for ``x_a-b`` and failed."""
    text, plan = _load(
        tmp_path, "ARG V=a-b\nFROM scratch AS x-a-b\nENV FROM=x\nFROM x-${V}\nENV NEXT=1\n"
    )
    assert 'dsl.from_stage("x_${V}")' in text
    assert _env(plan) == {"FROM": "x", "NEXT": "1"}


def test_a_global_arg_line_with_any_names_imports(tmp_path: Path) -> None:
    """``ARG BASE_IMAGE # https://gallery.ecr.aws/...`` (AWS's build tooling) declares the
    ARGs ``BASE_IMAGE``, ``#`` and the URL: BuildKit checks no ARG name; before, refused."""
    text, plan = _load(
        tmp_path, "ARG BASE_IMAGE # https://gallery.ecr.aws/x\nARG my-var=1\nFROM scratch\n"
    )
    assert 'dsl.arg("#")' in text
    assert 'dsl.arg("https://gallery.ecr.aws/x")' in text
    assert 'dsl.arg("my-var", "1")' in text
    assert _steps(plan) == ["FROM scratch"]


def test_stopsignal_expands_its_variable(tmp_path: Path) -> None:
    """``STOPSIGNAL $SIG``: BuildKit expands it, then checks the signal; before, the import
    refused the line and the DSL the value."""
    text, plan = _load(tmp_path, "FROM scratch\nARG SIG=quit\nSTOPSIGNAL $SIG\n")
    assert '.stopsignal("$SIG")' in text
    node = plan.steps[-1].node
    assert isinstance(node.step, StopSignal)
    config: dict[str, object] = {}
    apply_config_step(config, node.step, node.state, cmd_set=False)
    assert config["StopSignal"] == "quit"  # as written, as the engine keeps it
    with pytest.raises(StepArgumentError) as caught:
        apply_config_step({}, StopSignal(signal="${NOPE:-sig term}"), node.state, cmd_set=False)
    assert caught.value.problem.startswith("must be a signal name or number")


def test_a_literal_dollar_shows_in_the_plan_as_a_dockerfile_writes_it(tmp_path: Path) -> None:
    """``ENV A=x\\$y``: the plan's line reads ``ENV A="x\\$y"``; before it read
    ``"x\\\\$y"``, which in a Dockerfile is a backslash and the value of ``$y``."""
    _, plan = _load(tmp_path, 'FROM scratch\nENV A=x\\$y B="say \\"hi\\""\n')
    assert _steps(plan)[-1] == 'ENV A="x\\$y" B="say \\"hi\\""'
    assert _env(plan) == {"A": "x$y", "B": 'say "hi"'}


def test_a_dockerfile_that_is_not_utf8_is_refused_naming_its_line(tmp_path: Path) -> None:
    """A Latin-1 byte (``# Müller`` saved by an old editor): a clear error with the line, not
    a traceback; a build.py is UTF-8 text."""
    from imagedsl.importer import DockerfileImportError, import_dockerfile

    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_bytes(b"FROM scratch\n# M\xfcller\nENV A=1\n")
    with pytest.raises(DockerfileImportError) as caught:
        import_dockerfile(dockerfile)
    assert caught.value.line == 2
    assert "0xfc is not UTF-8" in caught.value.problem


def test_several_context_sources_to_a_name_without_a_slash_are_refused() -> None:
    """``COPY a b /dest``: BuildKit copies each onto ``/dest`` in turn (a file holding
    ``b`` when it did not exist), which a build.py's copy into a directory is not; before,
    the import made ``/dest`` a directory. With a slash (or ``.``) it imports."""
    error = _refused("FROM scratch\nCOPY a b /dest\n")
    assert error.line == 2
    assert "end it with /" in error.problem
    for dest in ("/dest/", ".", "./"):
        assert "src.select" in translate_text(f"FROM scratch\nCOPY a b {dest}\n")


def test_expose_reads_ports_as_buildkit_does(tmp_path: Path) -> None:
    """``EXPOSE 8080:80`` and ``127.0.0.1:53:53/udp`` expose the container's port (BuildKit
    accepts a publishing spec); ``EXPOSE $PORTS`` holding two ports exposes both."""
    text, plan = _load(
        tmp_path,
        'FROM scratch\nEXPOSE 8080:80 127.0.0.1:53:53/UDP\nENV PORTS="81 444"\nEXPOSE $PORTS\n',
    )
    assert '.expose(80, "53/udp")' in text
    config: dict[str, object] = {}
    for step in plan.steps[1:]:
        apply_config_step(config, step.node.step, step.node.state, cmd_set=False)
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "81/tcp": {}, "444/tcp": {}}


def test_a_stage_copying_from_itself_is_refused() -> None:
    """``COPY --from=build`` inside stage ``build``: BuildKit reports a circular dependency;
    before, the import read ``build`` as a registry image."""
    error = _refused("FROM scratch AS build\nCOPY --from=build /bin/sh /x\n")
    assert error.line == 2
    assert "copies from itself" in error.problem


def test_an_exec_form_healthcheck_stays_exec_form(tmp_path: Path) -> None:
    """``HEALTHCHECK CMD ["/bin/sh", "-c", "exit 0 "]`` is ``CMD`` with that argv in the
    config (BuildKit gives CMD-SHELL to the shell form only, which the image's SHELL runs);
    before, the import wrote it in shell form."""
    text, plan = _load(tmp_path, 'FROM scratch\nHEALTHCHECK CMD ["/bin/sh", "-c", "exit 0 "]\n')
    assert '.healthcheck(["/bin/sh", "-c", "exit 0 "])' in text
    config: dict[str, object] = {}
    apply_config_step(config, plan.steps[-1].node.step, plan.steps[-1].node.state, cmd_set=False)
    assert config["Healthcheck"] == {"Test": ["CMD", "/bin/sh", "-c", "exit 0 "]}


def test_directives_are_read_as_buildkit_reads_them(tmp_path: Path) -> None:
    """``# syntax=`` with no value is a comment, which ends the directives (the ``#
    escape=`` after it is a comment too: ``a`$b`` is ``a`` then ``$b``); ``# escape=``
    after ``# check=`` is a directive, for the words and for joining lines alike."""
    _, plan = _load(tmp_path, "# syntax=\n# escape=`\nFROM scratch\nENV P=a`$b\n")
    assert _env(plan) == {"P": "a`"}
    _, plan = _load(
        tmp_path, "# check=skip=all\n# escape=`\nFROM scratch\nENV Q=x`$y\nRUN echo a `\n  b\n"
    )
    run = plan.steps[-1].node.step
    assert _env(plan) == {"Q": "x$y"}
    assert getattr(run, "command", None) == ("echo a   b",)


def test_a_source_climbing_out_of_the_context_is_read_from_its_root(tmp_path: Path) -> None:
    """``COPY ../a.txt /up/``: BuildKit reads sources from the context's root, which ``..``
    cannot leave (``a.txt``); before, the build.py named ``../a.txt`` and failed to load."""
    text, plan = _load(tmp_path, "FROM scratch\nCOPY ../a.txt /up/\n", ("a.txt",))
    assert 'src.file("a.txt")' in text
    step = plan.steps[-1].node.step
    assert isinstance(step, Copy)
    assert [e.placed for e in plan.steps[-1].node.trees[0].entries] == ["a.txt"]

"""``imagedsl import`` on forms that real Dockerfiles use and the corpus did not cover.

Each case is a reduced Dockerfile of our own: what the importer once refused although BuildKit
builds it, or turned into a build.py that did not load. Each must now import to a build.py that
loads and plans with the meaning BuildKit gives it, or be refused with its line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagedsl.api import Plan, Store, load_buildfile
from imagedsl.importer import DockerfileImportError, translate_text
from imagedsl.oci.reference import ImageReference
from imagedsl.steps import Copy, InlineFile, Run


def _load(tmp_path: Path, dockerfile: str, files: tuple[str, ...] = ()) -> tuple[str, Plan]:
    """Import ``dockerfile`` (context: ``files``, made empty), load the build.py and plan its
    default target."""
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    text = translate_text(dockerfile, context_dir=tmp_path)
    build = tmp_path / "build.py"
    build.write_text(text)
    buildfile = load_buildfile(build)
    plan = buildfile.plan(
        buildfile.targets[0], store=Store(tmp_path / "store"), resolve_base=_by_name
    )
    return text, plan


def _refused(dockerfile: str) -> DockerfileImportError:
    """The error importing ``dockerfile`` raises (its line and problem are what tests read)."""
    with pytest.raises(DockerfileImportError) as caught:
        translate_text(dockerfile)
    return caught.value


def _by_name(reference: ImageReference, platform: str) -> None:
    """A base resolver that knows no base: every base is keyed by its name as written."""
    del reference, platform


def _env(plan: Plan) -> dict[str, str]:
    """The environment after the plan's last step (the build's PATH default aside)."""
    return {k: v for k, v in plan.steps[-1].node.state.env if k != "PATH"}


def _steps(plan: Plan) -> list[str]:
    return [step.instruction for step in plan.steps]


def test_a_local_dot_git_directory_is_copied_not_cloned(tmp_path: Path) -> None:
    """``COPY .git .git`` copies a directory of the context: only a scheme makes a git source
    (BuildKit: ``git@``, ``git://``, ``ssh://``, or an http(s) URL ending in ``.git``)."""
    (tmp_path / ".git").mkdir()
    text, _ = _load(tmp_path, "FROM scratch\nCOPY .git .git\nCOPY v.git /v.git\n", ("v.git",))
    assert '.copy(src.dir(".git"), ".git")' in text
    assert '.copy(src.file("v.git"), "/v.git")' in text


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("COPY https://example.invalid/f /f", "BuildKit refuses it too"),
        ("ADD git@example.invalid:o/r.git /r", "git repository"),
        ("ADD https://example.invalid/o/r.git /r", "git repository"),
    ],
)
def test_urls_and_git_sources_are_still_refused(line: str, words: str) -> None:
    error = _refused(f"FROM scratch\n{line}\n")
    assert error.line == 2
    assert words in error.problem


def test_a_bind_mount_without_a_target_mounts_at_the_workdir(tmp_path: Path) -> None:
    """BuildKit mounts ``--mount=from=stage`` (no target) at the RUN's working directory and
    reads a relative target against it (checked with Docker 20.10's BuildKit)."""
    text, plan = _load(
        tmp_path,
        "FROM busybox AS files\nRUN echo x > /f\n"
        "FROM busybox\nWORKDIR /work\nRUN --mount=from=files ls\n"
        "WORKDIR sub\nRUN --mount=target=. --mount=type=cache,target=c ls\n",
    )
    assert 'dsl.bind(files.path("/"), "/work")' in text
    assert 'mounts=[dsl.bind(src, "/work/sub"), dsl.cache("/work/sub/c")]' in text
    assert _steps(plan)[-1].startswith("RUN --mount=type=bind,")


def test_a_relative_target_under_a_base_images_workdir_is_refused() -> None:
    """The base image's WORKDIR is not in the Dockerfile: the importer cannot write the
    absolute target, and says so with the line."""
    for text, line in [
        ("FROM busybox\nRUN --mount=target=. ls\n", 2),
        ("FROM scratch\nWORKDIR $D\nRUN --mount=target=x ls\n", 3),
    ]:
        error = _refused(text)
        assert error.line == line
        assert "write an absolute target" in error.problem


def test_a_stage_continued_from_a_known_workdir_keeps_it(tmp_path: Path) -> None:
    text, _ = _load(
        tmp_path,
        "FROM scratch AS a\nWORKDIR /src\nFROM a\nRUN --mount=target=. ls\n",
    )
    assert 'dsl.bind(src, "/src")' in text


def test_a_variable_in_a_mount_option_is_refused_not_a_broken_build_py() -> None:
    """BuildKit expands ``${VAR}`` in mount options; a build.py's are plain values: refused
    with the line (before, the build.py failed to load, or the importer crashed on uid=$X)."""
    for option in ("type=cache,target=${HOME}/c", "type=cache,target=/c,uid=${UID}"):
        error = _refused(f"FROM busybox\nARG UID=1\nRUN --mount={option} true\n")
        assert error.line == 3
        assert "a variable in a mount option" in error.problem


def test_copy_from_an_image_copies_from_that_image(tmp_path: Path) -> None:
    """``COPY --from=<image>`` (a name that is no stage's) reads the image: it becomes an image
    value written before the stage, reused by every copy from the same image."""
    text, plan = _load(
        tmp_path,
        "FROM busybox AS build\nRUN true\n"
        "FROM scratch\nCOPY --from=example.invalid/tools:1.0 /bin/tool /tool\n"
        "COPY --from=example.invalid/tools:1.0 / /all/\n"
        "RUN --mount=from=example.invalid/tools:1.0,source=/lib,target=/l true\n"
        "COPY --from=build /f /f\n",
    )
    assert 'tools_image = dsl.image("example.invalid/tools:1.0")' in text
    assert '.copy(tools_image.path("/bin/tool"), "/tool")' in text
    assert '.copy(tools_image, "/all/")' in text
    assert 'dsl.bind(tools_image.path("/lib"), "/l")' in text
    assert text.count("dsl.image(") == 2
    assert text.index("tools_image =") < text.index("image = ")
    assert "COPY --from=" in " ".join(_steps(plan))


def test_copy_from_a_later_stage_or_a_variable_is_still_refused() -> None:
    for line in ("COPY --from=later /a /a", "COPY --from=$IMG /a /a", "COPY --from=3 /a /a"):
        error = _refused(f"FROM busybox\n{line}\nFROM busybox AS later\n")
        assert error.line == 2


def test_a_relative_path_from_a_stage_is_read_from_its_root(tmp_path: Path) -> None:
    """BuildKit reads ``COPY --from=stage rel/path`` from the stage's root."""
    text, _ = _load(
        tmp_path,
        "FROM busybox AS b\nRUN true\nFROM scratch\nCOPY --from=b app/bin /bin\n"
        "COPY --from=b ./etc/x /x\n",
    )
    assert '.copy(b.path("/app/bin"), "/bin")' in text
    assert '.copy(b.path("/etc/x"), "/x")' in text


def test_from_platform_of_a_stage_already_on_that_platform(tmp_path: Path) -> None:
    """``FROM --platform=P stage`` where the stage's own FROM says ``--platform=P``: the flag
    changes nothing, so the stage is continued; another platform is still refused."""
    text, _ = _load(
        tmp_path,
        "FROM --platform=linux/amd64 busybox AS base\nRUN true\n"
        "FROM --platform=linux/amd64 base AS next\nRUN echo\n",
    )
    assert 'next = base.run("echo")' in text
    error = _refused(
        "FROM --platform=linux/amd64 busybox AS base\nFROM --platform=linux/arm64 base AS next\n"
    )
    assert error.line == 2


def test_a_volume_named_by_a_variable(tmp_path: Path) -> None:
    """``VOLUME $HOME_DIR`` expands as BuildKit expands it (before, the build.py did not
    load: a volume had to be absolute as written)."""
    text, plan = _load(tmp_path, "FROM scratch\nENV D=/data\nVOLUME $D\n")
    assert '.volume("$D")' in text
    assert plan.steps[-1].instruction == 'VOLUME ["$D"]'
    error = _refused('FROM scratch\nVOLUME "C:\\\\data"\n')
    assert error.line == 2


def test_a_windows_path_from_an_image_is_refused() -> None:
    error = _refused('FROM scratch\nCOPY --from=img ["C:\\\\\\\\Go", "C:\\\\\\\\Go"]\n')
    assert error.line == 2
    assert "Windows path" in error.problem


def test_comments_keep_their_place_and_indentation() -> None:
    """A comment between continuation lines stays with its instruction (before, it moved to
    the next stage); a comment's own indentation after ``#`` is kept."""
    text = translate_text(
        "FROM busybox AS a\n#   indented\nRUN echo a \\\n #&& commented out\n && echo b\n"
        "FROM busybox AS b\nRUN true\n"
    )
    first, second = text.split("\nb = ", 1)
    assert "#   indented" in first
    assert "# && commented out" in first
    assert "commented out" not in second


def test_a_from_named_by_a_global_arg_is_an_image_unless_its_value_names_a_stage(
    tmp_path: Path,
) -> None:
    """``FROM $GO_IMAGE`` with ``ARG GO_IMAGE=golang:${GO_VERSION}``: BuildKit expands the
    global ARGs, then looks the value up among the stages. Before, any FROM made only of a
    variable was taken for a stage (and refused with --platform)."""
    text, plan = _load(
        tmp_path,
        "ARG V=1.0\nARG IMG=example.invalid/go:${V}\nARG WHICH=b\n"
        "FROM busybox AS b\nRUN true\n"
        "FROM --platform=$BUILDPLATFORM $IMG AS go\nRUN go\n"
        "FROM ${WHICH}\nRUN echo\n",
    )
    assert 'go = dsl.image(f"{IMG}", platform="$BUILDPLATFORM").run("go")' in text
    assert 'dsl.from_stage("${WHICH}")' in text
    assert _steps(plan)[-1] == "RUN echo"


def test_variables_in_copy_sources_expand_with_the_stage_scope(tmp_path: Path) -> None:
    """``COPY dist/$TARGETARCH/app``, ``COPY --from=build /out/${NAME}`` (BuildKit expands
    every COPY argument): the paths stay as written in the build.py and the plan reads the
    expanded ones (before, the import refused them)."""
    (tmp_path / "dist" / "amd64").mkdir(parents=True)
    (tmp_path / "dist" / "amd64" / "app").write_text("amd64\n")
    text, plan = _load(
        tmp_path,
        "ARG NAME=tool\nFROM busybox AS build\nRUN true\n"
        "FROM scratch\nARG TARGETARCH\nARG NAME\n"
        "COPY dist/$TARGETARCH/app /bin/\nCOPY --from=build /out/${NAME} /x/\n"
        "COPY --from=build out/$NAME /x/\n",
    )
    assert '.copy(src.select("dist/$TARGETARCH/app"), "/bin/")' in text
    assert '.copy(build.path("/out/${NAME}"), "/x/")' in text
    assert '.copy(build.path("/out/$NAME"), "/x/")' in text
    steps = _steps(plan)
    assert "COPY dist/amd64/app /bin/" in steps
    assert steps.count("COPY --from=build /out/tool /x/") == 2


def test_a_literal_dollar_in_a_copy_source_stays_literal(tmp_path: Path) -> None:
    """``COPY a\\$b`` copies the file named ``a$b``: the build.py spells it ``a\\$b``."""
    text, plan = _load(tmp_path, "FROM scratch\nCOPY a\\$b /f\n", ("a$b",))
    assert '.copy(src.file("a\\\\$b"), "/f")' in text
    assert _steps(plan)[-1] == "COPY a$b /f"


def test_nested_defaults_import(tmp_path: Path) -> None:
    """``${A:-${B}}`` and ``${A:+x${B}}`` (BuildKit nests them; the import said "missing
    '}'"); an escaped ``}`` inside one is refused, as imagedsl cannot hold it."""
    text, plan = _load(
        tmp_path, "FROM scratch\nARG B=bee\nENV X=${A:-${B}} Y=${B:+x${B}y}\nWORKDIR /$X\n"
    )
    assert '.env(X="${A:-${B}}", Y="${B:+x${B}y}")' in text
    assert dict(plan.steps[-1].node.state.env)["Y"] == "xbeey"
    assert plan.steps[-1].node.state.workdir == "/bee"
    error = _refused("FROM scratch\nENV X=${A:-a\\}b}\n")
    assert error.line == 2


#: The same Dockerfile in forms BuildKit reads alike (each built on Docker 20.10's BuildKit to
#: the same image config: Env A=1 B=2, the file /f).
PLAIN = "FROM scratch\nENV A=1 B=2\nCOPY f /f\n"


@pytest.mark.parametrize(
    "form",
    [
        pytest.param("FROM scratch\r\nENV A=1 \\\r\n    B=2\r\nCOPY f /f\r\n", id="crlf"),
        pytest.param("\ufeffFROM scratch\nENV A=1 B=2\nCOPY f /f\n", id="bom"),
        pytest.param("from scratch\nenv A=1 B=2\nCopy f /f\n", id="lowercase"),
        pytest.param("FROM\tscratch\nENV\tA=1\tB=2\nCOPY\tf\t/f\n", id="tabs"),
        pytest.param(
            "FROM scratch\nENV A=1 \\\n\n    B=2\nCOPY f \\\n\n  /f\n", id="empty-continuation"
        ),
        pytest.param("# escape=`\nFROM scratch\nENV A=1 `\n  B=2\nCOPY f /f\n", id="escape"),
        pytest.param(
            "\ufeff# syntax=docker/dockerfile:1\n# escape=`\n# check=skip=all\n"
            "FROM scratch\nENV A=1 `\n  B=2\nCOPY f /f\n",
            id="directives-after-a-bom",
        ),
    ],
)
def test_input_forms_import_as_the_plain_file(tmp_path: Path, form: str) -> None:
    """CRLF line ends, a byte order mark, lowercase instructions, tabs, empty continuation
    lines and parser directives change nothing (before, a lowercase ``from`` was "before the
    first FROM", and a directive after a BOM was not read)."""
    (tmp_path / "f").write_text("f\n")
    plain = translate_text(PLAIN, context_dir=tmp_path)
    text = translate_text(form, context_dir=tmp_path)
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == [line for line in plain.splitlines() if not line.startswith("#")]
    if "escape" in form:
        assert "# Dockerfile parser directive (read): escape=`" in text


def test_expose_ranges_and_an_escape_directive_keep_windows_free_paths(tmp_path: Path) -> None:
    """``EXPOSE 8000-8010/udp``; with ``# escape=``` `` a backslash is a plain character
    (Docker 20.10's BuildKit: Env ``P=C:\\dir\\sub``, ``R=$P`` literal, the file at
    ``/dir\\sub/f``)."""
    text, plan = _load(
        tmp_path,
        '# escape=`\nFROM scratch\nENV P=C:\\dir\\sub A=x`\n  B=y Q="a`"b" R=`$P\n'
        "COPY f /dir\\sub/\nEXPOSE 8000-8010/udp 53\n",
        ("f",),
    )
    assert '.env(P="C:\\\\dir\\\\sub", A="x", B="y", Q=\'a"b\', R="\\\\$P")' in text
    assert '.copy(src.file("f"), "/dir\\\\sub/")' in text
    assert '.expose("8000-8010/udp", 53)' in text
    assert dict(plan.steps[-1].node.state.env)["R"] == "$P"


@pytest.mark.parametrize(
    "default",
    ["${BUILDPLATFORM:-amd64}", "${BUILDPLATFORM-x}", "$BUILDPLATFORM", '"${BUILDPLATFORM}"'],
)
def test_a_global_platform_arg_defaulting_to_itself_changes_nothing(
    tmp_path: Path, default: str
) -> None:
    """``ARG BUILDPLATFORM=${BUILDPLATFORM:-amd64}`` before FROM: BuildKit expands the default
    with the build's own (never empty) platform, so the ARG keeps it (Docker 20.10 prints
    ``linux/amd64`` for it on an amd64 host); the import drops the declaration."""
    text, plan = _load(
        tmp_path,
        f"ARG BUILDPLATFORM={default}\nFROM --platform=${{BUILDPLATFORM}} busybox\n"
        "ARG BUILDPLATFORM\nRUN echo $BUILDPLATFORM\n",
    )
    assert 'platform="${BUILDPLATFORM}"' in text
    assert "amd64" not in text
    assert _steps(plan)[-1] == "RUN echo $BUILDPLATFORM"


@pytest.mark.parametrize("default", ["linux/arm64", "${BUILDPLATFORM:+x}", "'${BUILDPLATFORM}'"])
def test_a_global_platform_arg_with_another_default_is_still_refused(default: str) -> None:
    """Any other default replaces the platform's value in BuildKit (``ARG BUILDPLATFORM=foo``
    then ``ARG BUILDPLATFORM`` in a stage prints ``foo`` on Docker 20.10)."""
    error = _refused(f"ARG BUILDPLATFORM={default}\nFROM busybox\n")
    assert error.line == 1
    assert "set by the build from its platform" in error.problem


def test_a_literal_backslash_before_a_lone_dollar_is_kept(tmp_path: Path) -> None:
    """A ``$`` that starts no expression right after a literal backslash (a shell prompt:
    ``'\\w\\$ '``) keeps the backslash: imagedsl would read ``\\$`` as an escaped ``$``, so
    the import escapes that ``$`` too. Docker 20.10's BuildKit gives these values."""
    dockerfile = "FROM scratch\nENV A='\\w\\$ ' B=\"x\\\\$ y\" C='\\$HOME' D=a\\\\$\n"
    _, plan = _load(tmp_path, dockerfile)
    env = _env(plan)
    assert env["A"] == "\\w\\$ "
    assert env["B"] == "x\\$ y"
    assert env["C"] == "\\$HOME"
    assert env["D"] == "a\\$"


def test_a_literal_backslash_before_an_expression_is_still_refused() -> None:
    """imagedsl has no spelling for a literal backslash followed by an expanded variable."""
    error = _refused('FROM scratch\nENV A="x\\\\$HOME"\n')
    assert "a literal backslash before an expression" in error.problem


def test_copy_from_several_sources_is_one_copy_of_several_paths(tmp_path: Path) -> None:
    """``COPY --from=build a b dest/`` imports as ``build.paths(...)``: a relative path is read
    from the stage's root and a ``$VAR`` is expanded by the planner, as BuildKit does."""
    text, plan = _load(
        tmp_path,
        "FROM scratch AS build\nFROM scratch\nARG N=x.yaml\n"
        "COPY --from=build /app/bin app/$N /lib/*.so /srv/\n",
    )
    assert '.copy(build.paths("/app/bin", "/app/$N", "/lib/*.so"), "/srv/")' in text
    assert _steps(plan)[-1] == "COPY --from=build /app/bin /app/x.yaml /lib/*.so /srv/"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("ADD --from=build /a /b/", "BuildKit refuses it too"),
        ("COPY --from=build /a /b /dest", "end the destination with /"),
        ("COPY --from=build /lib/*.so /dest", "a wildcard source"),
    ],
)
def test_copy_from_forms_buildkit_would_build_otherwise_are_refused(line: str, words: str) -> None:
    """ADD has no --from in BuildKit; several sources (or a wildcard) into a destination
    without ``/`` would be copied onto it one by one, which no build.py says."""
    error = _refused(f"FROM scratch AS build\nFROM scratch\n{line}\n")
    assert error.line == 3
    assert words in error.problem


def test_a_heredoc_with_a_dash_loses_its_leading_tabs(tmp_path: Path) -> None:
    """``RUN <<-EOT`` and ``COPY <<-EOF`` strip each line's leading tabs (BuildKit's
    ``ChompHeredocContent``); before, the file kept them."""
    text, plan = _load(
        tmp_path,
        "FROM scratch\nRUN <<-'EOT'\n\tset -eux\n\t\techo $A\n\tEOT\n"
        "COPY <<-EOF /etc/motd\n\thello\n  \tspaces first\n\tEOF\n",
    )
    assert 'dsl.script("set -eux\\necho $A\\n")' in text
    copy = plan.steps[-1].node.step
    assert isinstance(copy, Copy)
    assert isinstance(copy.source, InlineFile)
    assert copy.source.content == b"hello\n  \tspaces first\n"


def test_a_heredoc_inside_a_command_is_read_by_the_shell(tmp_path: Path) -> None:
    """``RUN cat <<EOF > file`` (and several heredocs on one line): BuildKit runs the line,
    then each heredoc's text and delimiter, through the shell. Before, the import refused it."""
    _, plan = _load(
        tmp_path,
        "FROM scratch\nRUN cat <<EOF > /etc/x\nhello $HOME\nEOF\n"
        "RUN --mount=type=tmpfs,target=/t <<ONE sh && <<-'TWO' sh\necho 1\nONE\n\techo 2\n\tTWO\n",
    )
    first, second = (step.node.step for step in plan.steps[-2:])
    assert isinstance(first, Run)
    assert isinstance(second, Run)
    assert first.command == ("cat <<EOF > /etc/x\nhello $HOME\nEOF",)
    assert first.shell_form
    assert not first.heredoc
    assert second.command == ("<<ONE sh && <<-'TWO' sh\necho 1\nONE\n\techo 2\nTWO",)
    assert second.mounts


def test_values_buildkit_reads_in_any_case_or_as_the_default(tmp_path: Path) -> None:
    """``EXPOSE 8080/TCP`` is port 8080/tcp, ``STOPSIGNAL sigrtmin+3`` is kept as written
    (BuildKit checks a signal in any case and keeps its spelling), and a zero or empty
    HEALTHCHECK duration is the default; before, the build.py did not load."""
    _, plan = _load(
        tmp_path,
        "FROM scratch\nEXPOSE 8080/TCP 53/Udp\nSTOPSIGNAL sigrtmin+3\n"
        "HEALTHCHECK --interval=0 --timeout= --retries=+2 CMD true\n",
    )
    assert _steps(plan)[1:] == [
        "EXPOSE 8080/tcp 53/udp",
        "STOPSIGNAL sigrtmin+3",
        "HEALTHCHECK --retries=2 CMD true",
    ]


def test_names_buildkit_takes_beyond_shell_names(tmp_path: Path) -> None:
    """ENV and ARG names with dots or dashes (Spring's ``spring.profiles.active``) import as
    BuildKit takes them: in the environment of later steps and of the image."""
    text, plan = _load(
        tmp_path,
        "FROM scratch\nENV spring.profiles.active=prod\nENV A-B 1\nARG my-var=2\n"
        "ENV LATER=$my-var\n",
    )
    assert '"spring.profiles.active": "prod"' in text
    assert _steps(plan)[1:] == [
        "ENV spring.profiles.active=prod",
        "ENV A-B=1",
        "ARG my-var=2",
        'ENV LATER="$my-var"',
    ]
    env = _env(plan)
    # ``$my-var`` is ``$my`` (unset: empty) then ``-var``, as in BuildKit's shell lexer.
    assert env == {"spring.profiles.active": "prod", "A-B": "1", "my-var": "2", "LATER": "-var"}


@pytest.mark.parametrize(
    ("line", "words"),
    [
        pytest.param('LABEL ""=v', "'label key'", id="label-key-empty"),
        pytest.param("USER :1000", "'user' or 'user:group'", id="user"),
        pytest.param("HEALTHCHECK --retries=x CMD true", "--retries=x", id="retries"),
        pytest.param("HEALTHCHECK curl -f x", "not CMD or NONE", id="healthcheck-type"),
        pytest.param("HEALTHCHECK --interval=5 CMD true", "'interval'", id="duration"),
        pytest.param("ONBUILD FROM busybox", "must start with one of", id="onbuild-from"),
        pytest.param(
            "RUN --mount=type=cache,target=/c,sharing=all true", "'sharing'", id="sharing"
        ),
        pytest.param(
            "ADD --checksum=sha256:abc https://example.invalid/f /f", "'checksum'", id="checksum"
        ),
        pytest.param(
            "ADD --checksum=sha256:" + "0" * 64 + " $URL /f", "writes its URL out", id="url-var"
        ),
    ],
)
def test_values_a_build_py_cannot_hold_are_refused_with_their_line(line: str, words: str) -> None:
    """What the DSL refuses is refused at import, naming the line (before, the build.py failed
    to load, or the importer crashed on ``--retries=x``)."""
    error = _refused(f"FROM scratch\nARG SIG=9\n{line}\n")
    assert error.line == 3
    assert words in error.problem


@pytest.mark.parametrize(
    ("dockerfile", "line"),
    [
        pytest.param("FROM scratch\nWORKDIR\n", 2, id="workdir"),
        pytest.param("FROM scratch\nUSER\n", 2, id="user"),
        pytest.param("FROM scratch\nRUN\n", 2, id="run"),
        pytest.param("FROM scratch\nCMD\n", 2, id="cmd"),
        pytest.param("FROM scratch\nSTOPSIGNAL\n", 2, id="stopsignal"),
        pytest.param("ARG\nFROM scratch\n", 1, id="global-arg"),
        pytest.param("FROM scratch\nHEALTHCHECK --interval=1s\n", 2, id="healthcheck"),
        pytest.param("FROM scratch\nEXPOSE\n", 2, id="expose"),
    ],
)
def test_instructions_without_arguments_are_refused(dockerfile: str, line: int) -> None:
    """BuildKit refuses these; before, the importer crashed (IndexError) or wrote a build.py
    that did not load."""
    error = _refused(dockerfile)
    assert error.line == line
    assert "without arguments" in error.problem


@pytest.mark.parametrize(
    ("dockerfile", "line"),
    [
        pytest.param("FROM scratch\nRUN true\nENV A\n", 3, id="env-one-word"),
        pytest.param("FROM scratch\nLABEL a\nRUN true\n", 2, id="label-one-word"),
        pytest.param(
            "FROM scratch\nRUN <<EOF\nx\nEOF\nCOPY <<EOF /f\ny\n", 5, id="unterminated-heredoc"
        ),
    ],
)
def test_parse_errors_name_their_line(dockerfile: str, line: int) -> None:
    """The parser's message names no line for these: the import finds it (before, line 0)."""
    error = _refused(dockerfile)
    assert error.line == line


@pytest.mark.parametrize(
    ("dockerfile", "words"),
    [
        pytest.param("FROM scratch AS x\nFROM scratch AS X\n", "a second stage", id="twice"),
        pytest.param("FROM scratch\nFROM scratch AS 2nd\n", "stage name '2nd'", id="digit"),
        pytest.param(
            "FROM scratch AS ctx\nARG BASE=busybox\nFROM ${BASE}\n", "global ARGs only", id="arg"
        ),
    ],
)
def test_stages_buildkit_refuses_are_refused(dockerfile: str, words: str) -> None:
    """Two stages of one name, a name starting with a digit, and a FROM naming an ARG of an
    earlier stage (BuildKit expands FROM with global ARGs only: the name is empty). Before,
    the first two imported, and the third became ``dsl.from_stage`` of an empty name."""
    error = _refused(dockerfile)
    assert error.line == dockerfile.count("\n")
    assert words in error.problem


def test_an_undeclared_variable_in_from_expands_to_nothing(tmp_path: Path) -> None:
    """``FROM ${REGISTRY}busybox`` with no global ARG REGISTRY is the image ``busybox``."""
    text, plan = _load(tmp_path, "FROM ${REGISTRY}busybox\nRUN true\n")
    assert 'dsl.image("${REGISTRY}busybox")' in text
    assert _steps(plan)[0] == "FROM busybox:latest"


def test_a_read_only_bind_mount_says_what_it_already_is(tmp_path: Path) -> None:
    """``--mount=type=bind,...,readonly`` (or ``ro``): BuildKit's bind mounts are read-only
    unless ``rw``, so the option changes nothing; ``readonly=false`` is ``rw``. Before, the
    import refused the option."""
    text, plan = _load(
        tmp_path,
        "FROM scratch\nWORKDIR /w\nRUN --mount=type=bind,source=.,target=.,readonly\\\n"
        "    --mount=type=bind,target=/src,ro make\n"
        "RUN --mount=type=bind,target=/src,readonly=false touch /src/x\n",
    )
    assert 'mounts=[dsl.bind(src, "/w"), dsl.bind(src, "/src")]' in text
    assert 'mounts=[dsl.bind(src, "/src", readwrite=True)]' in text
    make, touch = (step.node.step for step in plan.steps[-2:])
    assert isinstance(make, Run)
    assert isinstance(touch, Run)
    assert [getattr(m, "readwrite", None) for m in (*make.mounts, *touch.mounts)] == [
        False,
        False,
        True,
    ]

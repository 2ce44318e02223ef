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


def _by_name(reference: ImageReference, platform: str) -> None:
    """A base resolver that knows no base: every base is keyed by its name as written."""
    del reference, platform


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
    with pytest.raises(DockerfileImportError) as caught:
        translate_text(f"FROM scratch\n{line}\n")
    assert caught.value.line == 2
    assert words in caught.value.problem


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
        with pytest.raises(DockerfileImportError) as caught:
            translate_text(text)
        assert caught.value.line == line
        assert "write an absolute target" in caught.value.problem


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
        with pytest.raises(DockerfileImportError) as caught:
            translate_text(f"FROM busybox\nARG UID=1\nRUN --mount={option} true\n")
        assert caught.value.line == 3
        assert "a variable in a mount option" in caught.value.problem


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
        with pytest.raises(DockerfileImportError) as caught:
            translate_text(f"FROM busybox\n{line}\nFROM busybox AS later\n")
        assert caught.value.line == 2


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
    with pytest.raises(DockerfileImportError) as caught:
        translate_text(
            "FROM --platform=linux/amd64 busybox AS base\n"
            "FROM --platform=linux/arm64 base AS next\n"
        )
    assert caught.value.line == 2


def test_a_volume_named_by_a_variable(tmp_path: Path) -> None:
    """``VOLUME $HOME_DIR`` expands as BuildKit expands it (before, the build.py did not
    load: a volume had to be absolute as written)."""
    text, plan = _load(tmp_path, "FROM scratch\nENV D=/data\nVOLUME $D\n")
    assert '.volume("$D")' in text
    assert plan.steps[-1].instruction == 'VOLUME ["$D"]'
    with pytest.raises(DockerfileImportError) as caught:
        translate_text('FROM scratch\nVOLUME "C:\\\\data"\n')
    assert caught.value.line == 2


def test_a_windows_path_from_an_image_is_refused() -> None:
    with pytest.raises(DockerfileImportError) as caught:
        translate_text('FROM scratch\nCOPY --from=img ["C:\\\\\\\\Go", "C:\\\\\\\\Go"]\n')
    assert caught.value.line == 2
    assert "Windows path" in caught.value.problem


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
    with pytest.raises(DockerfileImportError) as caught:
        translate_text("FROM scratch\nENV X=${A:-a\\}b}\n")
    assert caught.value.line == 2


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
    with pytest.raises(DockerfileImportError) as caught:
        translate_text(f"ARG BUILDPLATFORM={default}\nFROM busybox\n")
    assert caught.value.line == 1
    assert "set by the build from its platform" in caught.value.problem


def test_a_literal_backslash_before_a_lone_dollar_is_kept(tmp_path: Path) -> None:
    """A ``$`` that starts no expression right after a literal backslash (a shell prompt:
    ``'\\w\\$ '``) keeps the backslash: imagedsl would read ``\\$`` as an escaped ``$``, so
    the import escapes that ``$`` too. Docker 20.10's BuildKit gives these values."""
    dockerfile = "FROM scratch\nENV A='\\w\\$ ' B=\"x\\\\$ y\" C='\\$HOME' D=a\\\\$\n"
    _, plan = _load(tmp_path, dockerfile)
    env = dict(plan.steps[-1].node.state.env)
    assert env["A"] == "\\w\\$ "
    assert env["B"] == "x\\$ y"
    assert env["C"] == "\\$HOME"
    assert env["D"] == "a\\$"


def test_a_literal_backslash_before_an_expression_is_still_refused() -> None:
    """imagedsl has no spelling for a literal backslash followed by an expanded variable."""
    with pytest.raises(DockerfileImportError) as caught:
        translate_text('FROM scratch\nENV A="x\\\\$HOME"\n')
    assert "a literal backslash before an expression" in caught.value.problem


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
    with pytest.raises(DockerfileImportError) as caught:
        translate_text(f"FROM scratch AS build\nFROM scratch\n{line}\n")
    assert caught.value.line == 3
    assert words in caught.value.problem

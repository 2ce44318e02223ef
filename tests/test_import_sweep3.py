"""``imagedsl import`` on the Dockerfiles people copy most (the third sweep).

Each case is a reduced Dockerfile of our own, after the forms of Docker's official images
(python, postgres, golang, php, mysql, rust, eclipse-temurin) and of popular application
templates (``docker init`` for Node, Go and Java; Rails; uv; poetry; distroless). Where the
importer gave a meaning other than BuildKit's, it now gives BuildKit's or refuses the line;
the rest is pinned as it already was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagedsl.steps import Copy, Run
from tests.test_import_sweep import _env, _load, _refused, _steps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("pa$$word", "paword", id="pid"),
        pytest.param("x$1y", "xy", id="positional"),
        pytest.param("x$12y", "xy", id="positional-digits"),
        pytest.param("p$@q", "pq", id="at"),
        pytest.param("m$#n", "mn", id="hash"),
        pytest.param("$*", "", id="star"),
        pytest.param('"u$0v"', "uv", id="zero-in-quotes"),
        pytest.param("a${1}b", "ab", id="braced"),
        pytest.param("a$?b$-c$!d", "abcd", id="others"),
    ],
)
def test_a_special_or_positional_parameter_expands_to_nothing(
    tmp_path: Path, value: str, expected: str
) -> None:
    """BuildKit's lexer reads ``$$``, ``$1``, ``$@``... as parameters no ENV or ARG can set,
    so they expand to nothing (``ENV PASSWORD=pa$$word`` is ``paword``); before, the import
    kept them as literal text, a value BuildKit never gives."""
    text, plan = _load(tmp_path, f"FROM busybox\nENV V={value}\nLABEL l={value}\n")
    assert _env(plan) == {"V": expected}
    assert f".label(l={expected!r})".replace("'", '"') in text


def test_special_parameters_in_workdir_and_copy_are_dropped_but_run_keeps_them(
    tmp_path: Path,
) -> None:
    """Only the words BuildKit expands lose them; a RUN line goes to the shell as written."""
    text, plan = _load(
        tmp_path, "FROM busybox\nWORKDIR /w$1\nCOPY a$$ /d$@/\nRUN echo $1 $@ $$\n", ("a",)
    )
    assert plan.steps[-1].node.state.workdir == "/w"
    assert '.copy(src.file("a"), "/d/")' in text
    run = plan.steps[-1].node.step
    assert isinstance(run, Run)
    assert run.command == ("echo $1 $@ $$",)


def test_an_escaped_special_parameter_stays_literal(tmp_path: Path) -> None:
    """``\\$@`` (a password in a URL) is the two characters, as in BuildKit."""
    _, plan = _load(tmp_path, "FROM busybox\nENV URL=\"postgresql://u:p_\\$@/db\" Q='$1'\n")
    assert _env(plan) == {"URL": "postgresql://u:p_$@/db", "Q": "$1"}


@pytest.mark.parametrize(
    ("line", "words"),
    [
        pytest.param("ENV B=${A%%.*}", "pattern expansion", id="suffix"),
        pytest.param("ENV B=${A#*.}", "pattern expansion", id="prefix"),
        pytest.param("WORKDIR /src/${A/./-}", "pattern expansion", id="replace"),
        pytest.param("ENV B=x${C:-${A%.*}}", "pattern expansion", id="nested"),
        pytest.param("LABEL b=${A:1:2}", "BuildKit refuses too", id="substring"),
        pytest.param("ENV B=${1:-d}", "special or positional parameter", id="positional-default"),
    ],
)
def test_expansions_a_build_py_cannot_hold_are_refused_with_their_line(
    line: str, words: str
) -> None:
    """Dockerfile 1.7 computes ``${A%%.*}``, ``${A#*.}`` and ``${A/./-}``; imagedsl has no
    such expansion and kept them as literal text (another value); now they are refused."""
    error = _refused(f"FROM busybox\nENV A=1.2.3\n{line}\n")
    assert error.line == 3
    assert words in error.problem


def test_pattern_expansions_in_run_are_left_to_the_shell(tmp_path: Path) -> None:
    """The python image's ``${PYTHON_VERSION%%[a-z]*}``, ``${arch##*-}`` and ``\\$\\$ORIGIN``
    are the shell's: the RUN keeps them byte for byte."""
    command = (
        'set -eux; arch="${arch##*-}"; '
        'wget "https://x.invalid/${PYTHON_VERSION%%[a-z]*}/P-$PYTHON_VERSION.tar.xz"; '
        "make \"LDFLAGS=${LDFLAGS:--Wl},-rpath='\\$\\$ORIGIN/../lib'\""
    )
    _, plan = _load(tmp_path, f"FROM debian\nENV PYTHON_VERSION 3.12.1\nRUN {command}\n")
    run = plan.steps[-1].node.step
    assert isinstance(run, Run)
    assert run.command == (command,)
    assert run.shell_form


def test_official_image_env_and_continuation_forms(tmp_path: Path) -> None:
    """The legacy ``ENV NAME value`` form over ``\\`` continuations (php's PHPIZE_DEPS keeps
    the inner tabs), ``ENV PATH $PATH:...`` on an earlier ENV, and a comment line inside a RUN
    continuation (dropped from the command, kept as a Python comment)."""
    text, plan = _load(
        tmp_path,
        "FROM debian:bookworm-slim\n"
        "ENV PHPIZE_DEPS \\\n\t\tautoconf \\\n\t\tmake\n"
        "ENV PG_MAJOR 15\n"
        "ENV PATH $PATH:/usr/lib/postgresql/$PG_MAJOR/bin\n"
        "RUN set -eux; \\\n# why this is here\n\tgroupadd -r postgres; \\\n\tmkdir /x\n",
    )
    assert "# why this is here" in text
    env = dict(plan.steps[-1].node.state.env)
    assert env["PHPIZE_DEPS"] == "autoconf \t\tmake"
    assert env["PATH"] == "$PATH:/usr/lib/postgresql/15/bin"  # the base's PATH, unknown here
    run = plan.steps[-1].node.step
    assert isinstance(run, Run)
    assert run.command == ("set -eux; \tgroupadd -r postgres; \tmkdir /x",)


def test_env_and_arg_values_are_taken_in_buildkits_order(tmp_path: Path) -> None:
    """One ENV expands every value with the values from before it (rust's ``PATH=...:$PATH``
    next to CARGO_HOME); an ARG after an ENV of the same name sets what later words read."""
    _, plan = _load(
        tmp_path,
        "FROM busybox\nENV A=1 B=$A\nENV A=2 B=$A C=${A}x\n"
        "ARG V=argv\nENV V=envv\nENV W=$V\nARG V=argv2\nENV X=$V\nWORKDIR /w/$V\n",
    )
    assert _env(plan) == {
        "A": "2",
        "B": "1",
        "C": "1x",
        "V": "argv2",
        "W": "envv",
        "X": "argv2",
    }
    assert plan.steps[-1].node.state.workdir == "/w/argv2"


def test_golang_image_forms(tmp_path: Path) -> None:
    """``COPY --from=build --link /target/ /`` and ``WORKDIR $GOPATH`` from an ENV."""
    text, plan = _load(
        tmp_path,
        "FROM buildpack-deps:bookworm-scm AS build\nRUN mkdir -p /target/usr/local/go\n"
        "FROM buildpack-deps:bookworm-scm\nENV GOPATH /go\n"
        "ENV PATH $GOPATH/bin:/usr/local/go/bin:$PATH\n"
        "COPY --from=build --link /target/ /\n"
        'RUN mkdir -p "$GOPATH/src" && chmod -R 1777 "$GOPATH"\nWORKDIR $GOPATH\n',
    )
    assert '.copy(build.path("/target/"), "/", link=True)' in text
    assert plan.steps[-1].node.state.workdir == "/go"
    assert dict(plan.steps[-1].node.state.env)["PATH"] == "/go/bin:/usr/local/go/bin:$PATH"


def test_docker_init_node_template(tmp_path: Path) -> None:
    """Bind mounts of the lock files at relative targets under the file's own WORKDIR, a
    cache mount, ``USER node`` and ``COPY --chown``."""
    text, plan = _load(
        tmp_path,
        "ARG NODE_VERSION=20.11.0\nFROM node:${NODE_VERSION}-alpine\nENV NODE_ENV production\n"
        "WORKDIR /usr/src/app\n"
        "RUN --mount=type=bind,source=package.json,target=package.json \\\n"
        "    --mount=type=cache,target=/root/.npm \\\n    npm ci --omit=dev\n"
        "USER node\nCOPY --chown=node:node . .\nCMD node src/index.js\n",
        ("package.json",),
    )
    assert 'dsl.bind(src.file("package.json"), "/usr/src/app/package.json")' in text
    assert '.copy(src, ".", chown="node:node")' in text
    assert _steps(plan)[0] == "FROM node:20.11.0-alpine"
    assert plan.steps[-1].node.state.user == "node"


def test_docker_init_go_template_and_distroless(tmp_path: Path) -> None:
    """``FROM --platform=$BUILDPLATFORM``, ``ARG TARGETARCH`` in the RUN's environment, a
    bind of the whole context at the WORKDIR, and a distroless final stage."""
    text, _ = _load(
        tmp_path,
        "FROM --platform=$BUILDPLATFORM golang:1.22 AS build\nWORKDIR /src\nARG TARGETARCH\n"
        "RUN --mount=type=cache,target=/go/pkg/mod/ --mount=type=bind,target=. \\\n"
        "    CGO_ENABLED=0 GOARCH=$TARGETARCH go build -o /bin/server .\n"
        "FROM gcr.io/distroless/static-debian12:nonroot\n"
        "COPY --from=build /bin/server /server\nUSER nonroot:nonroot\n"
        'ENTRYPOINT ["/server"]\n',
    )
    assert 'dsl.image("golang:1.22", platform="$BUILDPLATFORM")' in text
    assert 'mounts=[dsl.cache("/go/pkg/mod/"), dsl.bind(src, "/src")]' in text
    assert '.user("nonroot", "nonroot")' in text


def test_rails_copy_from_a_stage_expands_with_the_copying_stage(tmp_path: Path) -> None:
    """``COPY --from=build "${BUNDLE_PATH}" "${BUNDLE_PATH}"``: BuildKit expands both with
    the stage that copies, not the stage copied from."""
    _, plan = _load(
        tmp_path,
        "FROM ruby:3.3-slim AS build\nENV BUNDLE_PATH=/elsewhere\nRUN mkdir -p /usr/local/bundle\n"
        'FROM ruby:3.3-slim\nENV BUNDLE_PATH="/usr/local/bundle"\n'
        'COPY --from=build "${BUNDLE_PATH}" "${BUNDLE_PATH}"\nUSER 1000:1000\n',
    )
    assert "COPY --from=build /usr/local/bundle ${BUNDLE_PATH}" in _steps(plan)
    assert plan.steps[-1].node.state.user == "1000:1000"


def test_uv_and_java_template_forms(tmp_path: Path) -> None:
    """uv's ``COPY --from=<image> /uv /uvx /bin/`` and ``ENTRYPOINT []``; the Java
    template's relative ``COPY --from`` (read from the stage's root), ``$(...)`` and
    backticks in RUN, and a ``SHELL`` with pipefail."""
    text, plan = _load(
        tmp_path,
        "FROM eclipse-temurin:21-jdk AS extract\nWORKDIR /build\n"
        "RUN mv target/$(./mvnw -q help:evaluate)-`date +%s`.jar target/app.jar\n"
        "FROM python:3.12-slim AS uvapp\n"
        "COPY --from=ghcr.io/astral-sh/uv:0.5.11 /uv /uvx /bin/\n"
        "COPY --from=extract build/target/extracted/ ./\nENTRYPOINT []\n"
        'SHELL ["/bin/bash", "-o", "pipefail", "-c"]\nRUN echo `date` | tee /tmp/d\n'
        'CMD ["fastapi", "run", "src/app"]\n',
    )
    assert 'uv_image = dsl.image("ghcr.io/astral-sh/uv:0.5.11")' in text
    assert '.copy(uv_image.paths("/uv", "/uvx"), "/bin/")' in text
    assert '.copy(extract.path("/build/target/extracted/"), "./")' in text
    assert ".entrypoint()" in text
    assert "$(./mvnw -q help:evaluate)-`date +%s`.jar" in text
    run = next(s.node.step for s in plan.steps if s.instruction.startswith("RUN echo"))
    assert isinstance(run, Run)
    assert plan.steps[-1].node.state.shell == ("/bin/bash", "-o", "pipefail", "-c")
    copies = [s.node.step for s in plan.steps if isinstance(s.node.step, Copy)]
    assert len(copies) == 2


def test_flags_after_a_continuation_and_a_backslash_before_trailing_blanks(
    tmp_path: Path,
) -> None:
    """``RUN \\`` with its ``--mount`` on the next line, and ``curl \\`` followed by blanks (a
    continuation still, for BuildKit's parser); ``ONBUILD RUN`` over several lines."""
    text, plan = _load(
        tmp_path,
        "FROM rust:1.69.0-bullseye\nRUN \\\n    --mount=type=cache,target=/var/cache/apt \\\n"
        "    apt-get install -y \\\n    curl \\      \n    cmake\n"
        "ONBUILD RUN composer self-update \\\n        && composer update\n",
    )
    assert 'mounts=[dsl.cache("/var/cache/apt")]' in text
    run = plan.steps[-2].node.step
    assert isinstance(run, Run)
    assert run.command == ("apt-get install -y     curl     cmake",)
    assert _steps(plan)[-1] == "ONBUILD RUN composer self-update         && composer update"


def test_exec_forms_and_what_is_not_json(tmp_path: Path) -> None:
    """nginx's ``CMD ["nginx", "-g", "daemon off;"]`` is exec form; ``CMD ['node', 'app.js']``
    is no JSON, so BuildKit runs it through the shell, and so does the import; ``$PORT`` in
    an exec form is not expanded."""
    text, plan = _load(
        tmp_path,
        'FROM nginx\nENV PORT=80\nCMD ["nginx", "-g", "daemon off;"]\n'
        'ENTRYPOINT ["sh", "-c", "exec app --port $PORT"]\n'
        "FROM node\nCMD ['node', 'app.js']\n",
    )
    assert '.cmd("nginx", "-g", "daemon off;")' in text
    assert '.entrypoint("sh", "-c", "exec app --port $PORT")' in text
    assert ".cmd(\"['node', 'app.js']\")" in text
    assert _steps(plan)[-1] == "CMD ['node', 'app.js']"


def test_global_args_in_from_with_a_default_and_stage_args_in_chown(tmp_path: Path) -> None:
    """``FROM ${BASE}:${TAG:-20}-alpine`` expands with the global ARGs; ``--chown=$USER``
    and ``USER $UID`` with the stage's ARGs (several in one ARG line)."""
    _, plan = _load(
        tmp_path,
        "ARG BASE=node\nARG TAG\nFROM ${BASE}:${TAG:-20}-alpine\nARG USER=app UID=1001\n"
        "COPY --chown=$USER:$USER a /a\nUSER $UID\n",
        ("a",),
    )
    assert _steps(plan)[0] == "FROM node:20-alpine"
    assert dict(plan.steps[-2].node.state.env) == {"USER": "app", "UID": "1001"}
    assert plan.steps[-1].node.state.user == "1001"

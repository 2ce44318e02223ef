"""The DSL: immutable stages, every instruction, and arguments refused where they are written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

import imagedsl as dsl
from imagedsl import api
from imagedsl.buildstate import DEFAULT_PATH, ArgScope, BuildState, ExpansionError, expand
from imagedsl.errors import StepArgumentError
from imagedsl.oci.reference import parse_reference
from imagedsl.steps import (
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Healthcheck,
    InlineFile,
    OnBuild,
    Run,
    User,
    describe,
)

BASE = dsl.image("alpine:3.20")


def test_stages_are_immutable_and_share_prefixes() -> None:
    """Each method returns a new stage; the old one is unchanged and is the new one's prefix."""
    one = BASE.env(A="1")
    two = one.run("true")
    three = one.run("false")
    assert len(one) == 2
    assert two.parent is one
    assert three.parent is one
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        one.step = Env(items=(("B", "2"),))  # type: ignore[misc]


def test_equal_descriptions_are_equal_values() -> None:
    """Stages described the same way compare and hash equal, whatever line made them."""
    assert BASE.env(A="1").run("x") == dsl.image("docker.io/library/alpine:3.20").env(
        {"A": "1"}
    ).run("x")
    assert hash(BASE.run("x")) == hash(dsl.image("alpine:3.20").run("x"))


def test_every_instruction_has_a_step(tmp_path: Path) -> None:
    """Each Dockerfile instruction is a method (or constructor) and describes itself."""
    (tmp_path / "a.tar").write_bytes(b"")
    src = dsl.context(tmp_path)
    builder = dsl.image("golang:1.22", platform="linux/arm64").run(["go", "build", "-o", "/out/x"])
    stage = (
        dsl.scratch()
        .arg("VERSION", default="1.0")
        .env(PATH="/bin")
        .workdir("/app")
        .user("app:app")
        .label({"org.opencontainers.image.source": "https://example.com"})
        .expose(8080, "53/udp")
        .volume("/data")
        .copy(builder.path("/out/x"), "/x", chown="1:1", chmod=0o755, link=True)
        .add(src.file("a.tar"), "/opt/")
        .add(dsl.url("https://example.com/f", checksum="sha256:" + "0" * 64), "/f")
        .shell("/bin/bash", "-c")
        .run(
            "make",
            mounts=[
                dsl.cache("/root/.cache", sharing="locked"),
                dsl.secret("token", env="TOKEN"),
                dsl.bind(src, "/src"),
                dsl.tmpfs("/tmp", size=1 << 20),
            ],
            network="none",
        )
        .healthcheck("curl", "-f", "http://localhost/", interval=30, retries=3)
        .stopsignal("TERM")
        .author("Jane <jane@example.com>")
        .entrypoint(["/x"])
        .cmd("--help", "-v")
    )
    described = [describe(step) for step in stage]
    assert described[0] == "FROM scratch"
    assert "ARG VERSION=1.0" in described
    assert "EXPOSE 8080/tcp 53/udp" in described
    assert "STOPSIGNAL TERM" in described
    assert "MAINTAINER Jane <jane@example.com>" in described
    assert 'ENTRYPOINT ["/x"]' in described
    assert described[-1] == 'CMD ["--help", "-v"]'
    assert any(d.startswith("COPY --from=") for d in described)
    kinds = {step.kind for step in stage}
    assert kinds >= {
        "scratch", "arg", "env", "workdir", "user", "label", "expose", "volume", "copy",
        "add", "shell", "run", "healthcheck", "stopsignal", "entrypoint", "cmd", "author",
    }  # fmt: skip


def test_run_forms() -> None:
    """A string is shell form; a list is exec form."""
    shell = BASE.run("echo $HOME").step
    exec_form = BASE.run(["echo", "$HOME"]).step
    assert isinstance(shell, Run)
    assert isinstance(exec_form, Run)
    assert shell.shell_form
    assert not exec_form.shell_form


@pytest.mark.parametrize(
    ("make", "argv", "shell_form"),
    [
        pytest.param(lambda s: s.cmd("node server.js"), ("node server.js",), True, id="one-string"),
        pytest.param(lambda s: s.cmd("node", "server.js"), ("node", "server.js"), False, id="several"),
        pytest.param(lambda s: s.cmd(["node"]), ("node",), False, id="list"),
        pytest.param(lambda s: s.cmd("node", shell=False), ("node",), False, id="shell-false"),
        pytest.param(lambda s: s.cmd(), (), False, id="reset"),
        pytest.param(lambda s: s.cmd([]), (), False, id="reset-list"),
        pytest.param(lambda s: s.entrypoint("exec app"), ("exec app",), True, id="entrypoint-shell"),
        pytest.param(lambda s: s.entrypoint(), (), False, id="entrypoint-reset"),
        pytest.param(lambda s: s.healthcheck("curl -f x"), ("curl -f x",), True, id="health-shell"),
        pytest.param(lambda s: s.healthcheck(["curl", "x"]), ("curl", "x"), False, id="health-list"),
    ],
)  # fmt: skip
def test_command_forms(
    make: Callable[[dsl.Stage], dsl.Stage], argv: tuple[str, ...], shell_form: bool
) -> None:
    """One string is shell form (as a Dockerfile's non-JSON form), several strings or a list
    exec form, nothing a reset (``CMD []``)."""
    step = make(BASE).step
    assert isinstance(step, Cmd | Entrypoint | Healthcheck)
    command = step.test if isinstance(step, Healthcheck) else step.command
    assert (command, step.shell_form) == (argv, shell_form)
    if not argv:
        assert describe(step).endswith(" []")


@pytest.mark.parametrize(
    ("user", "group", "expected"),
    [
        pytest.param(1000, None, "1000", id="uid"),
        pytest.param(1000, 1000, "1000:1000", id="uid-gid"),
        pytest.param("app", "app", "app:app", id="names"),
        pytest.param("app", 50, "app:50", id="name-gid"),
        pytest.param("app:staff", None, "app:staff", id="one-string"),
        pytest.param("${UID}", "${GID}", "${UID}:${GID}", id="variables"),
        # BuildKit splits at ':' once expanded: the one in ':-' is no separator.
        pytest.param(
            "${APP_USER:-app}:${APP_GROUP:-1}",
            None,
            "${APP_USER:-app}:${APP_GROUP:-1}",
            id="defaults",
        ),
        pytest.param(
            "${APP_UID:-1000}",
            "${APP_GID:-1000}",
            "${APP_UID:-1000}:${APP_GID:-1000}",
            id="default-pair",
        ),
    ],
)
def test_user_forms(user: str | int, group: str | int | None, expected: str) -> None:
    """``user(1000)``, ``user(1000, 1000)``, ``user("app", "app")`` spell USER's value."""
    step = BASE.user(user, group).step
    assert isinstance(step, User)
    assert step.user == expected
    assert describe(step) == f"USER {expected}"


def test_script_is_dedented_and_ends_with_a_line_break() -> None:
    """dsl.script reads like a heredoc written in place; it runs as a shell-form RUN does."""
    step = BASE.run(
        dsl.script(
            """
            apt-get update
            apt-get install -y curl
            """
        )
    ).step
    assert isinstance(step, Run)
    assert step.command == ("apt-get update\napt-get install -y curl\n",)
    assert step.shell_form
    assert step.heredoc
    assert describe(step) == "RUN <<EOF apt-get update …"
    assert dsl.script("echo one").text == "echo one\n"


def test_inline_files_and_onbuild_describe_themselves() -> None:
    """COPY <<EOF and ONBUILD read as their Dockerfile instructions in a plan."""
    stage = BASE.copy(dsl.inline("a = 1\n", mode=0o600), "/etc/a.conf", chown="1:1")
    step = stage.step
    assert isinstance(step, Copy)
    assert isinstance(step.source, InlineFile)
    assert (step.source.content, step.source.mode) == (b"a = 1\n", 0o600)
    assert describe(step) == "COPY --chown=1:1 <<EOF /etc/a.conf"
    trigger = stage.onbuild("  RUN make  ").step
    assert isinstance(trigger, OnBuild)
    assert describe(trigger) == "ONBUILD RUN make"


def test_plan_rows_show_every_flag(tmp_path: Path) -> None:
    """The instruction column holds every flag: mounts, network, chown, chmod, link,
    parents, exclude, checksum, from, platform."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    src = dsl.context(tmp_path)
    tools = dsl.image("busybox", platform="linux/arm64").run("true")
    stage = (
        dsl.image("busybox")
        .run(
            "make",
            mounts=[dsl.cache("/c", id="c1"), dsl.bind(tools.path("/bin"), "/t")],
            network="none",
        )
        .copy(
            src.dir("a"), "/a/", chown="1:2", chmod=0o750, link=True, parents=True, exclude=["*.md"]
        )
        .copy(tools.path("/bin"), "/tools", link=True)
        .add(dsl.url("https://example.com/x.tgz", checksum="sha256:" + "0" * 64), "/x")
    )
    rows = [row.instruction for row in api.plan({"tools": tools, "s": stage}, "s").steps]
    assert rows[1] == "FROM --platform=linux/arm64 busybox:latest"
    assert rows[-4] == (
        "RUN --mount=type=cache,target=/c,id=c1 --mount=type=bind,from=tools,source=/bin,"
        "target=/t --network=none make"
    )
    assert rows[-3] == "COPY --chown=1:2 --chmod=0750 --link --parents --exclude=*.md a /a/"
    assert rows[-2] == "COPY --from=tools --link /bin /tools"
    assert rows[-1] == "ADD --checksum=sha256:" + "0" * 64 + " https://example.com/x.tgz /x"


def test_url_file_names_follow_buildkit() -> None:
    """ADD URL DIR/ names the file after the last element of the URL's path."""
    names = {
        "https://e.com/a/b.tgz?x=1": "b.tgz",
        "https://e.com/a%20b": "a b",
        "https://e.com/dir/": "dir",
        "https://e.com": "__unnamed__",
        "https://e.com/": "__unnamed__",
    }
    for url, name in names.items():
        assert dsl.url(url, checksum="sha256:" + "0" * 64).file_name == name


def test_healthcheck_none() -> None:
    """healthcheck(None) disables an inherited check."""
    step = BASE.healthcheck(None).step
    assert isinstance(step, Healthcheck)
    assert step.test is None
    assert describe(step) == "HEALTHCHECK NONE"


BAD_ARGUMENTS: list[object] = [
    pytest.param(lambda: BASE.run(42), "command", id="run-not-str"),  # type: ignore[arg-type]
    pytest.param(lambda: BASE.run([]), "command", id="run-empty-list"),
    pytest.param(lambda: BASE.run("x", network="bridge"), "network", id="run-network"),
    pytest.param(lambda: BASE.run("x", mounts=["/cache"]), "mounts[0]", id="run-mount-type"),  # type: ignore[list-item]
    pytest.param(
        lambda: BASE.run("x", mounts=[dsl.tmpfs("/t"), dsl.tmpfs("/t")]),
        "mounts[1]",
        id="run-mount-twice",
    ),
    pytest.param(lambda: BASE.env(), "values", id="env-empty"),
    pytest.param(lambda: BASE.env({"A B": "x"}), "name", id="env-name"),
    pytest.param(lambda: BASE.env({"$A": "x"}), "name", id="env-name-expanding"),
    pytest.param(lambda: BASE.env(A=1), "A", id="env-value-type"),  # type: ignore[arg-type]
    pytest.param(lambda: BASE.expose("http"), "ports", id="expose-name"),
    pytest.param(lambda: BASE.expose(70000), "ports", id="expose-range"),
    pytest.param(lambda: BASE.volume("data"), "paths", id="volume-relative"),
    pytest.param(lambda: BASE.user("a b"), "user", id="user-space"),
    pytest.param(lambda: BASE.copy("file.txt", "/x"), "source", id="copy-str-source"),  # type: ignore[arg-type]
    pytest.param(lambda: BASE.copy(BASE.path("/x"), "/y", chmod="u+x"), "chmod", id="copy-chmod"),
    pytest.param(lambda: BASE.copy(BASE, "/y", link="yes"), "link", id="copy-link-type"),  # type: ignore[arg-type]
    pytest.param(
        lambda: BASE.copy(BASE.path("/x"), "/y", layers="auto"), "layers", id="copy-layers-stage"
    ),
    pytest.param(lambda: BASE.stopsignal("sig term"), "signal", id="stopsignal"),
    pytest.param(lambda: BASE.author(""), "name", id="author-empty"),
    pytest.param(lambda: BASE.paths(), "paths", id="paths-none"),
    pytest.param(lambda: BASE.paths("/a", "rel"), "paths[1]", id="paths-relative"),
    pytest.param(lambda: BASE.paths("/a", "/b[c"), "paths[1]", id="paths-bad-glob"),
    pytest.param(lambda: BASE.copy(BASE.paths("/a", "/b"), "/d"), "dest", id="paths-dest-file"),
    pytest.param(lambda: BASE.copy(BASE.path("/a/*.so"), "/lib"), "dest", id="glob-dest-file"),
    pytest.param(
        lambda: BASE.run("x", mounts=[dsl.bind(BASE.paths("/a", "/b"), "/m")]),
        "source",
        id="bind-several-paths",
    ),
    pytest.param(lambda: BASE.author("a\nb"), "name", id="author-two-lines"),
    pytest.param(lambda: BASE.author(" a"), "name", id="author-blank-around"),
    pytest.param(lambda: BASE.author("a\\"), "name", id="author-continues"),
    pytest.param(lambda: BASE.healthcheck("x", interval="soon"), "interval", id="health-interval"),
    pytest.param(lambda: BASE.cmd("a", "b", shell=True), "command", id="cmd-shell-two"),
    pytest.param(lambda: BASE.cmd(["a"], shell=True), "command", id="cmd-list-shell"),
    pytest.param(lambda: BASE.cmd(shell=True), "command", id="cmd-reset-shell"),
    pytest.param(lambda: BASE.healthcheck(), "command", id="health-empty"),
    pytest.param(lambda: BASE.healthcheck("x", None), "test", id="health-none-and-more"),
    pytest.param(lambda: BASE.user(-1), "user", id="user-negative"),
    pytest.param(lambda: BASE.user("a:b", "c"), "user", id="user-two-groups"),
    pytest.param(lambda: BASE.user(1000, True), "group", id="user-group-bool"),
    pytest.param(lambda: BASE.onbuild("FROM alpine"), "instruction", id="onbuild-from"),
    pytest.param(lambda: BASE.onbuild("ONBUILD RUN x"), "instruction", id="onbuild-onbuild"),
    pytest.param(lambda: BASE.onbuild("RUN a\nRUN b"), "instruction", id="onbuild-two-lines"),
    pytest.param(lambda: BASE.onbuild("RUN"), "instruction", id="onbuild-no-arguments"),
    pytest.param(lambda: dsl.script("  \n"), "text", id="script-empty"),
    pytest.param(
        lambda: dsl.script("#!/usr/bin/env python3\nprint(1)\n"), "text", id="script-shebang"
    ),
    pytest.param(lambda: dsl.inline(42), "content", id="inline-type"),  # type: ignore[arg-type]
    pytest.param(lambda: dsl.inline("x", mode=0o1777), "mode", id="inline-mode"),
    pytest.param(lambda: BASE.copy(dsl.inline("x"), "/etc/"), "dest", id="inline-dest-dir"),
    pytest.param(
        lambda: BASE.copy(dsl.inline("x"), "/f", exclude=["*"]), "exclude", id="inline-exclude"
    ),
    pytest.param(
        lambda: BASE.copy(BASE.path("/x"), "/y", parents=True), "parents", id="parents-stage"
    ),
    pytest.param(
        lambda: BASE.copy(dsl.inline("x"), "/y", parents=True), "parents", id="parents-inline"
    ),
    pytest.param(
        lambda: dsl.url("https://x/a b", checksum="sha256:" + "0" * 64), "url", id="url-blank"
    ),
    pytest.param(lambda: dsl.image("Bad Name"), "ref", id="image-ref"),
    pytest.param(lambda: dsl.image("alpine@sha256:12"), "ref", id="image-digest"),
    pytest.param(lambda: dsl.image("alpine", platform="amd64"), "platform", id="image-platform"),
    pytest.param(lambda: dsl.cache("relative"), "target", id="cache-target"),
    pytest.param(lambda: dsl.cache("/c", sharing="public"), "sharing", id="cache-sharing"),
    pytest.param(lambda: dsl.cache("/c", uid=-1), "uid", id="cache-uid"),
    pytest.param(lambda: dsl.secret("s", env="X=1"), "env", id="secret-env"),
    pytest.param(lambda: dsl.url("ftp://x/y", checksum="sha256:" + "0" * 64), "url", id="url"),
    pytest.param(lambda: dsl.url("https://x/y", checksum="md5:0"), "checksum", id="checksum"),
    pytest.param(lambda: dsl.context(".", ignore=["[a"]), None, id="context-bad-pattern"),
    pytest.param(lambda: dsl.stage("no spaces"), "name", id="stage-name"),
    pytest.param(lambda: dsl.targets(), "stages", id="targets-empty"),
]


@pytest.mark.parametrize(("make", "argument"), BAD_ARGUMENTS)
def test_bad_arguments_are_refused_with_the_argument_named(
    make: Callable[[], object], argument: str | None
) -> None:
    """Wrong types and impossible values fail when the step is made, naming the argument."""
    with pytest.raises((dsl.StepArgumentError, ValueError)) as caught:
        make()
    if argument is not None:
        assert isinstance(caught.value, dsl.StepArgumentError)
        assert caught.value.argument == argument
        assert caught.value.location is not None
        assert caught.value.location.file == __file__


def test_references_normalise_like_docker() -> None:
    """Short names expand to docker.io/library and get :latest; registries keep their host."""
    assert str(parse_reference("alpine")) == "docker.io/library/alpine:latest"
    assert str(parse_reference("localhost:5000/team/app:1")) == "localhost:5000/team/app:1"
    assert parse_reference("ghcr.io/o/r@sha256:" + "a" * 64).tag is None
    local = parse_reference("oci:/tmp/layout:v1")
    assert (local.transport, local.name, local.tag) == ("oci", "/tmp/layout", "v1")
    assert parse_reference("docker-daemon:busybox").tag == "latest"


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        pytest.param("$A/x", "1/x", id="bare"),
        pytest.param("${A}y", "1y", id="braced"),
        pytest.param("${MISSING:-d}", "d", id="default"),
        pytest.param("${A:+alt}", "alt", id="alternative"),
        pytest.param("${MISSING:+alt}", "", id="alternative-unset"),
        pytest.param("\\$A", "$A", id="escaped"),
        pytest.param("${EMPTY:-d}", "d", id="empty-default"),
        pytest.param("${EMPTY-d}", "", id="empty-set"),
    ],
)
def test_variable_expansion(word: str, expected: str) -> None:
    """$VAR forms expand as the Dockerfile frontend expands them."""
    assert expand(word, {"A": "1", "EMPTY": ""}) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        pytest.param("${A:-${B}}", "bee", id="default-of-a-variable"),
        pytest.param("${A:+x${B}}", "", id="alternative-unset"),
        pytest.param("${B:+x${B}y}", "xbeey", id="alternative-set"),
        pytest.param("${B:-${A:-z}}", "bee", id="set-wins"),
        pytest.param("${E:-${B:+n${B}}}", "nbee", id="three-deep"),
        pytest.param("${A:-a}${B:-b}}", "abee}", id="a-brace-after"),
        pytest.param("${A:-${B}-${B}}", "bee-bee", id="two-inside"),
        pytest.param("${A:-\\${B}}", "${B}", id="escaped-inside"),
    ],
)
def test_nested_expansion(word: str, expected: str) -> None:
    """Nested defaults expand as BuildKit expands them (each result read from Docker 20.10's
    BuildKit: ``ENV R=<word>`` with ``ARG B=bee`` and ``ARG E=``, A unset)."""
    assert expand(word, {"B": "bee", "E": ""}) == expected


def test_required_variable_error() -> None:
    """${VAR:?message} on an unset variable is an error carrying the message."""
    with pytest.raises(ExpansionError) as caught:
        expand("${NOPE:?must be set}", {})
    assert caught.value.problem == "must be set"


def test_state_follows_dockerfile_scoping() -> None:
    """A later ENV beats an ARG of one name; --build-arg overrides a default; WORKDIR resolves
    relatively; the environment keeps BuildKit's order (each write moves its name last)."""
    stage = BASE.arg("V", default="1").env(V="env", P="${V}").workdir("/a").workdir("b").arg("W")
    state = BuildState()
    for step in stage.steps()[1:]:
        state = state.apply(step, ArgScope(build_args={"V": "override"}))
    assert state.variables["V"] == "env"
    assert dict(state.env)["P"] == "override"
    assert state.env == (("V", "env"), ("P", "override"))
    assert state.config_env == (("V", "env"), ("P", "override"))
    assert state.workdir == "/a/b"
    assert "W" not in state.variables  # declared, no default, not given


def test_a_copy_source_reading_a_variable_without_a_value_names_the_ways_to_give_one(
    tmp_path: Path,
) -> None:
    """On a base image, a COPY source reading an ARG declared without a value (or never
    declared) is refused: the base may set it, and the plan reads no image config. The
    message says how to give it a value, whether or not the stage declares it."""
    from imagedsl.graph import expand_sources

    stage = BASE.arg("N").copy(dsl.context(tmp_path).file("dist/$N"), "/x")
    copy = stage.steps()[-1]
    assert isinstance(copy, Copy)
    state = BuildState(inherits=True)
    for step in stage.steps()[1:-1]:
        state = state.apply(step, ArgScope())
    with pytest.raises(StepArgumentError) as caught:
        expand_sources(copy, state)
    assert "reads $N, which has no value the plan knows" in caught.value.problem
    assert "--build-arg N=" in caught.value.problem
    given = BuildState(inherits=True)
    for step in stage.steps()[1:-1]:
        given = given.apply(step, ArgScope(build_args={"N": "v1"}))
    assert "dist/v1" in repr(expand_sources(copy, given).source)


def test_copy_records_where_it_was_written(tmp_path: Path) -> None:
    """Every step carries the build-file line that made it (not part of its identity)."""
    (tmp_path / "f").write_text("x")
    step = BASE.copy(dsl.context(tmp_path).file("f"), "/f").step
    assert isinstance(step, Copy)
    assert step.location is not None
    assert step.location.file == __file__


def test_base_variables_stay_unexpanded_until_the_base_is_read() -> None:
    """FROM an image, unknown $VARs and relative paths wait for the base's config; FROM
    scratch the base is Docker's empty image (PATH set, as BuildKit's), and paths resolve from /."""
    on_image = api.plan(dsl.image("alpine:3.20").env(PATH="/x:$PATH").workdir("w")).steps[-1]
    on_scratch = api.plan(dsl.scratch().env(PATH="/x:$PATH").workdir("w")).steps[-1]
    assert dict(on_image.node.state.env)["PATH"] == "/x:$PATH"
    assert on_image.node.state.workdir == "w"
    assert on_image.node.state.absolute_workdir("/base") == "/base/w"
    assert dict(on_scratch.node.state.env)["PATH"] == "/x:" + DEFAULT_PATH
    assert on_scratch.node.state.workdir == "/w"


def test_deep_chains_compare_and_hash_without_recursion() -> None:
    """Stages 10,000 steps deep hash and compare (equal, and unequal at the root) in a loop."""

    def chain(first: str) -> dsl.Stage:
        stage = dsl.scratch().env(FIRST=first)
        for i in range(10_000):
            stage = stage.env(V=str(i))
        return stage

    one, same, other = chain("a"), chain("a"), chain("b")
    assert one == same
    assert hash(one) == hash(same)
    assert one != other
    assert len({one, same, other}) == 2


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        pytest.param("linux/x86_64", "linux/amd64", id="x86_64"),
        pytest.param("linux/amd64/v1", "linux/amd64", id="amd64-v1"),
        pytest.param("linux/aarch64", "linux/arm64", id="aarch64"),
        pytest.param("linux/arm64/v8", "linux/arm64", id="arm64-v8"),
        pytest.param("linux/arm", "linux/arm/v7", id="arm"),
        pytest.param("Linux/AMD64", "linux/amd64", id="case"),
        pytest.param("linux/amd64/v3", "linux/amd64/v3", id="other-variant-kept"),
    ],
)
def test_platform_aliases_name_one_platform(written: str, canonical: str) -> None:
    """BuildKit's platform aliases read as the platform they name, in steps and in keys."""
    assert (
        dsl.image("alpine", platform=written).step == dsl.image("alpine", platform=canonical).step
    )
    stage = dsl.image("alpine").run("true")
    assert [s.key for s in api.plan(stage, "s", platform=written).steps] == [
        s.key for s in api.plan(stage, "s", platform=canonical).steps
    ]


def test_several_paths_of_a_stage_are_one_copy() -> None:
    """``stage.paths(a, b)`` is one COPY of every path in order; one path is ``path``; a
    ``$VAR`` expands in each (and a path that becomes a wildcard needs a ``/`` too)."""
    builder = BASE.run("make")
    stage = BASE.arg("N", "b.txt").copy(builder.paths("/out/a", "/out/$N", "/lib/*.so"), "/d/")
    assert describe(stage.step) == "COPY --from=<stage> /out/a /out/$N /lib/*.so /d/"
    assert builder.paths("/a") == builder.path("/a")
    assert dsl.stage("b").paths("/x/../y", "/z") == dsl.stage("b").path("/y").__class__(
        dsl.stage("b"), "/y", ("/z",)
    )
    planned = api.plan({"builder": builder, "app": stage}, "app")
    assert planned.steps[-1].instruction == "COPY --from=builder /out/a /out/b.txt /lib/*.so /d/"
    wild = BASE.arg("N", "*.txt").copy(builder.paths("/out/$N"), "/d")
    with pytest.raises(dsl.StepArgumentError) as refused:
        api.plan({"builder": builder, "app": wild}, "app")
    assert refused.value.argument == "dest"

"""Lowering plans to Dockerfiles: structure, spelling, context trees, and the Go parser's view."""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dockerfile
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import imagedsl as dsl
from imagedsl import api, buildstate, cli, steps
from imagedsl._validate import clean_container_path
from imagedsl.backends.dockerfile import _words as words
from imagedsl.backends.dockerfile._staging import DownloadError, content_mtime_ns
from imagedsl.backends.dockerfile.lowering import (
    DOCKERFILE_1_4,
    HEADER,
    BuildDirError,
    LoweredDockerfile,
    LoweringError,
    lower_to_dockerfile,
    write_build_dir,
)
from imagedsl.buildstate import expand
from imagedsl.reporting import Reporter
from imagedsl.treehash import ContextHasher
from tests.support.buildkit_words import read_word

BUSYBOX = "imagedsl-test/busybox:latest"


@pytest.fixture(name="src_dir")
def fixture_src_dir(tmp_path: Path) -> Path:
    """A small source tree with a file that the ignore rules leave out."""
    root = tmp_path / "src"
    (root / "app" / "static").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "app" / "static" / "site.css").write_text("body {}\n")
    (root / "app" / "debug.log").write_text("noise\n")
    (root / "requirements.txt").write_text("flask\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o700)
    return root


def parse(lowered: LoweredDockerfile) -> list[Any]:
    """The Go parser's instructions of a lowered Dockerfile."""
    return list(dockerfile.parse_string(lowered.text))


def instructions(lowered: LoweredDockerfile) -> list[str]:
    """The instruction lines (no comments, no blank lines)."""
    return [line for line in lowered.text.splitlines() if line and not line.startswith("#")]


# -- structure -----------------------------------------------------------------------------------


def test_stages_follow_build_file_names_and_unused_stages_are_dropped(src_dir: Path) -> None:
    """Named stages become Dockerfile stages named after them; what the target skips is gone."""
    src = dsl.context(src_dir, ignore=["*.log"])
    base = dsl.image(BUSYBOX).env(A="1").workdir("/app")
    deps = base.copy(src.file("requirements.txt"), "/app/").run("cat requirements.txt")
    builder = dsl.image(BUSYBOX).run("mkdir -p /out && echo tool > /out/tool")
    app = deps.copy(src.dir("app"), "/app/app").copy(builder.path("/out/tool"), "/bin/tool")
    test = deps.run("echo test")
    unused = dsl.image("alpine:3.19").run("echo never")
    plan = api.plan(
        {
            "base": base,
            "deps": deps,
            "builder": builder,
            "app": app,
            "test": test,
            "unused": unused,
        },
        "app",
    )
    lowered = lower_to_dockerfile(plan)
    assert [stage.name for stage in lowered.stages] == ["base", "deps", "builder", "app"]
    assert lowered.target == "app"
    lines = instructions(lowered)
    assert lines[0] == f"FROM {BUSYBOX} AS base"
    assert "FROM base AS deps" in lines
    assert "COPY --from=builder /out/tool /bin/tool" in lines
    assert "alpine" not in lowered.text
    assert "echo test" not in lowered.text
    assert lowered.text.startswith(HEADER)


def test_prefix_shared_inside_a_target_becomes_a_stage(src_dir: Path) -> None:
    """A prefix two stages of one target continue from is one stage, built once."""
    src = dsl.context(src_dir)
    base = dsl.image(BUSYBOX).run("echo shared")
    left = base.run("echo left > /left")
    both = base.run("echo right").copy(left.path("/left"), "/left")
    lowered = lower_to_dockerfile(api.plan({"base": base, "left": left, "both": both}, "both"))
    assert [stage.name for stage in lowered.stages] == ["base", "left", "both"]
    assert lowered.text.count("RUN echo shared") == 1
    del src


def test_anonymous_prefix_shared_by_two_named_stages_gets_a_derived_name() -> None:
    """A branch point in the middle of a named stage is named after that stage and position."""
    base = dsl.image(BUSYBOX)
    first = base.run("echo 1").run("echo 2").run("echo a")
    second = base.run("echo 1").run("echo 2").run("echo b").copy(first.path("/"), "/first")
    lowered = lower_to_dockerfile(api.plan({"first": first, "second": second}, "second"))
    names = [stage.name for stage in lowered.stages]
    assert names[-1] == "second"
    assert "first" in names
    assert len(set(names)) == len(names)
    assert lowered.text.count("RUN echo 2") == 1


def test_stage_names_are_valid_dockerfile_names() -> None:
    """Upper case, reserved and odd names are turned into valid, distinct stage names."""
    base = dsl.image(BUSYBOX).run("echo base")
    scratch = base.run("echo s")
    target = base.run("echo t").copy(scratch.path("/"), "/s")
    named = {"Base": base, "scratch": scratch, "MyApp": target}
    lowered = lower_to_dockerfile(api.plan(named, "MyApp"))
    names = [stage.name for stage in lowered.stages]
    assert names == ["base", "scratch-stage", "myapp"]


def test_continuing_stage_inherits_args_without_declaring_them() -> None:
    """BuildKit carries a stage's environment (ARG values too) into a stage FROM it: the
    lowering declares nothing again, which would re-apply --build-arg values and reorder it."""
    base = dsl.image(BUSYBOX).arg("VERSION", "1.0").arg("EMPTY").run("echo $VERSION")
    app = base.run("echo app $VERSION")
    lowered = lower_to_dockerfile(api.plan({"base": base, "app": app}, "app", build_args={}))
    lines = instructions(lowered)
    assert lines[lines.index("FROM base AS app") + 1] == "RUN echo app $VERSION"
    assert lines.count("ARG VERSION=1.0") == 1
    assert lines.count("ARG EMPTY") == 1
    overridden = api.plan({"base": base, "app": app}, "app", build_args={"VERSION": "2 0"})
    assert instructions(lower_to_dockerfile(overridden)) == lines  # --build-arg goes to docker


def test_an_env_is_not_overridden_by_a_redeclared_arg() -> None:
    """ARG X=1 then ENV X=e, continued in another stage: no ARG X=1 comes back to override
    the ENV (BuildKit would then run with X=1 while the plan says e)."""
    base = dsl.image(BUSYBOX).arg("X", "1").env(X="e")
    app = base.run("echo $X > /x")
    plan = api.plan({"base": base, "app": app}, "app")
    lines = instructions(lower_to_dockerfile(plan))
    assert lines[lines.index("FROM base AS app") + 1] == "RUN echo $X > /x"
    assert dict(plan.steps[-1].node.state.env)["X"] == "e"


def test_global_args_are_declared_before_the_first_from() -> None:
    """Global ARGs keep their ${VAR}s in FROM lines, so the Dockerfile still takes --build-arg."""
    version = dsl.arg("TAG", "latest")
    image = dsl.image(f"imagedsl-test/busybox:{version}", platform="$BUILDPLATFORM")
    stage = image.arg(version).run("echo $TAG")
    plan = api.plan(stage, "s", global_args=[version])
    lines = instructions(lower_to_dockerfile(plan))
    assert lines[0] == "ARG TAG=latest"
    assert lines[1].startswith("FROM --platform=$BUILDPLATFORM imagedsl-test/busybox:${TAG} AS ")
    assert (
        plan.steps[0].instruction == "FROM --platform=$BUILDPLATFORM imagedsl-test/busybox:latest"
    )
    other = api.plan(stage, "s", global_args=[version], build_args={"TAG": "1.36"})
    assert other.steps[0].instruction.endswith(" imagedsl-test/busybox:1.36")
    assert dict(other.steps[-1].node.state.env)["TAG"] == "1.36"


def test_vertex_labels_count_only_instructions_that_make_a_vertex() -> None:
    """FROM an image, RUN, COPY, ADD and WORKDIR are numbered; config steps and FROM a stage
    are not (as BuildKit's progress numbers them)."""
    base = dsl.image(BUSYBOX).env(A="1").workdir("/w").run("echo 1")
    app = base.label(x="y").run("echo 2").cmd("sh")
    plan = api.plan({"base": base, "app": app}, "app")
    lowered = lower_to_dockerfile(plan)
    labels = {plan.steps[i].instruction: label for i, label in lowered.vertices.items()}
    assert labels == {
        f"FROM {BUSYBOX}": "[base 1/3]",
        "WORKDIR /w": "[base 2/3]",
        "RUN echo 1": "[base 3/3]",
        "RUN echo 2": "[app 1/1]",
    }


def test_scratch_makes_no_vertex() -> None:
    """FROM scratch is not a vertex: numbering starts at the first filesystem step; a
    Dockerfile with one stage has no stage name in its labels."""
    stage = dsl.scratch().workdir("/x").workdir("/y")
    lowered = lower_to_dockerfile(api.plan(stage, "out"))
    assert sorted(lowered.vertices.values()) == ["[1/2]", "[2/2]"]  # one stage: no name


# -- instructions ------------------------------------------------------------------------------


def test_shell_form_kept_when_exact_and_exec_form_otherwise() -> None:
    """A command the parser would change (line break, trailing backslash, JSON look, heredoc)
    is written in exec form with the stage's SHELL."""
    stage = (
        dsl.image(BUSYBOX)
        .run("echo plain && ls -l | wc -l")
        .run("echo 'two\nlines'")
        .run("echo trailing \\")
        .run('["not", "exec"]')
        .run("cat <<EOF")
        .run("  padded  ")
        .shell("/bin/bash", "-eu", "-c")
        .run("echo with bash\n")
    )
    lines = instructions(lower_to_dockerfile(api.plan(stage, "s")))
    assert lines[1:] == [
        "RUN echo plain && ls -l | wc -l",
        'RUN ["/bin/sh", "-c", "echo \'two\\nlines\'"]',
        'RUN ["/bin/sh", "-c", "echo trailing \\\\"]',
        'RUN ["/bin/sh", "-c", "[\\"not\\", \\"exec\\"]"]',
        'RUN ["/bin/sh", "-c", "cat <<EOF"]',
        'RUN ["/bin/sh", "-c", "  padded  "]',
        'SHELL ["/bin/bash", "-eu", "-c"]',
        'RUN ["/bin/bash", "-eu", "-c", "echo with bash\\n"]',
    ]


def test_mounts_are_spelled_with_only_non_default_options(src_dir: Path) -> None:
    """Cache, secret, bind (context and stage) and tmpfs mounts, defaults left out."""
    src = dsl.context(src_dir, ignore=["*.log"])
    tools = dsl.image(BUSYBOX).run("mkdir /tools")
    stage = dsl.image(BUSYBOX).run(
        "make",
        mounts=[
            dsl.cache("/root/.cache"),
            dsl.cache("/var/cache/apt", id="apt", sharing="locked", mode=0o700, uid=1, gid=2),
            dsl.secret("token"),
            dsl.secret("npmrc", target="/root/.npmrc", required=True, mode=0o444),
            dsl.bind(src.dir("app"), "/src"),
            dsl.bind(src.file("requirements.txt"), "/req.txt", readwrite=True),
            dsl.bind(tools.path("/tools"), "/tools"),
            dsl.tmpfs("/scratch"),
        ],
    )
    plan = api.plan({"tools": tools, "out": stage}, "out")
    lowered = lower_to_dockerfile(plan)
    run = next(line for line in instructions(lowered) if line.endswith(" make"))
    trees = {tree.name: tree for tree in lowered.trees}
    app_tree = next(n for n, t in trees.items() if any(e.placed == "main.py" for e in t.entries))
    req_tree = next(n for n, t in trees.items() if t.entries[0].placed == "requirements.txt")
    assert run == " ".join(
        [
            "RUN",
            "--mount=type=cache,target=/root/.cache",
            "--mount=type=cache,target=/var/cache/apt,id=apt,sharing=locked,mode=0700,uid=1,gid=2",
            "--mount=type=secret,id=token",
            "--mount=type=secret,id=npmrc,target=/root/.npmrc,required=true,mode=0444",
            f"--mount=type=bind,source={app_tree},target=/src",
            f"--mount=type=bind,source={req_tree}/requirements.txt,target=/req.txt,rw",
            "--mount=type=bind,from=tools,source=/tools,target=/tools",
            "--mount=type=tmpfs,target=/scratch",
            "make",
        ]
    )
    assert lowered.requirements == ()


@pytest.mark.parametrize(
    ("make", "feature"),  # each takes (stage, context)
    [
        pytest.param(lambda s, _: s.run("true", network="none"), "RUN --network", id="network"),
        pytest.param(
            lambda s, _: s.run("true", mounts=[dsl.secret("t", env="TOKEN")]),
            "RUN --mount=type=secret,env=...",
            id="secret-env",
        ),
        pytest.param(
            lambda s, _: s.run("true", mounts=[dsl.tmpfs("/t", size=1 << 20)]),
            "RUN --mount=type=tmpfs,size=...",
            id="tmpfs-size",
        ),
    ],
)  # fmt: skip
def test_newer_features_are_written_and_noted(src_dir: Path, make: Any, feature: str) -> None:
    """Options Docker 20.10's frontend lacks are still lowered faithfully, and noted."""
    src = dsl.context(src_dir)
    plan = api.plan(make(dsl.image(BUSYBOX), src), "s")
    lowered = lower_to_dockerfile(plan)
    assert [r.feature for r in lowered.requirements] == [feature]
    assert lowered.requirements[0].step == len(plan.steps) - 1
    parse(lowered)


def test_exclude_from_the_context_needs_no_flag(src_dir: Path) -> None:
    """COPY ... exclude= from the context is exact without --exclude: the tree leaves it out."""
    src = dsl.context(src_dir)
    plan = api.plan(dsl.image(BUSYBOX).copy(src.dir("app"), "/app", exclude=["*.log"]), "s")
    lowered = lower_to_dockerfile(plan)
    assert lowered.requirements == ()
    (tree,) = lowered.trees
    assert sorted(e.placed for e in tree.entries) == ["main.py", "static", "static/site.css"]
    assert "# app (excluding *.log)" in lowered.text


def test_values_with_line_breaks_are_refused_with_the_step_location() -> None:
    """An ENV value with a newline cannot be written in any Dockerfile: say where it came from."""
    stage = dsl.image(BUSYBOX).env(GREETING="a\nb")
    plan = api.plan(stage, "s")
    with pytest.raises(LoweringError) as caught:
        lower_to_dockerfile(plan)
    assert caught.value.location is not None
    assert caught.value.location.file == __file__
    assert caught.value.instruction.startswith("ENV GREETING=")


def test_an_add_of_several_sources_naming_an_archive_writes_each_source(tmp_path: Path) -> None:
    """``ADD a bundle.tar /d/``: BuildKit unpacks the archive and copies ``a``; the lowering
    writes each file by its staged path (one staged directory would unpack nothing). With a
    directory's contents among the sources, which no one path places, it refuses, naming the
    archive. An archive inside an added directory is copied as it is by BuildKit too."""
    (tmp_path / "pack").mkdir()
    (tmp_path / "a").write_text("a\n")
    with tarfile.open(tmp_path / "bundle.tar", "w") as archive:
        archive.add(tmp_path / "a", arcname="inner")
    (tmp_path / "pack" / "bundle.tar").write_bytes((tmp_path / "bundle.tar").read_bytes())
    src = dsl.context(tmp_path)
    several = api.plan(dsl.image(BUSYBOX).add(src.select("a", "bundle.tar"), "/d"), "s")
    line = next(x for x in lower_to_dockerfile(several).text.splitlines() if x.startswith("ADD"))
    words = line.split()
    assert [w.rsplit("/", 1)[1] for w in words[1:-1]] == ["a", "bundle.tar"]
    assert words[-1] == "/d/"
    (tmp_path / "sub" / "inner").mkdir(parents=True)
    (tmp_path / "sub" / "inner" / "x").write_text("x\n")
    mixed = api.plan(dsl.image(BUSYBOX).add(src.select("sub", "bundle.tar"), "/d/"), "s")
    with pytest.raises(LoweringError) as caught:
        lower_to_dockerfile(mixed)
    assert "ADD bundle.tar" in str(caught.value)
    assert "directories" in str(caught.value)
    whole = api.plan(dsl.image(BUSYBOX).add(src.dir("pack"), "/p/"), "s")
    assert "ADD " in lower_to_dockerfile(whole).text


def test_copy_sources_name_content_digests(src_dir: Path) -> None:
    """A COPY's source is a directory named by the tree digest; a renamed directory with the
    same files gives the same COPY line (BuildKit's key then follows content, like ours)."""
    src = dsl.context(src_dir, ignore=["*.log"])
    first = lower_to_dockerfile(api.plan(dsl.image(BUSYBOX).copy(src.dir("app"), "/app"), "s"))
    (src_dir / "app").rename(src_dir / "application")
    second = lower_to_dockerfile(
        api.plan(dsl.image(BUSYBOX).copy(src.dir("application"), "/app"), "s")
    )
    assert instructions(first)[1:] == instructions(second)[1:]
    assert instructions(first)[1] == f"COPY {first.trees[0].name}/ /app"


def test_single_file_copies_keep_their_name(src_dir: Path) -> None:
    """Copied to a directory or to '.', a file keeps its name, as Docker gives it."""
    src = dsl.context(src_dir)
    stage = (
        dsl.image(BUSYBOX)
        .workdir("/app")
        .copy(src.file("requirements.txt"), "/app/")
        .copy(src.file("run.sh"), ".")
        .copy(src.file("run.sh"), "/usr/local/bin/run")
        .add(src.file("requirements.txt"), "/opt/r")
    )
    lowered = lower_to_dockerfile(api.plan(stage, "s"))
    copies = [line for line in instructions(lowered) if line.startswith(("COPY", "ADD"))]
    assert [line.split()[1].split("/", 1)[1] for line in copies] == [
        "requirements.txt",
        "run.sh",
        "run.sh",
        "requirements.txt",
    ]


def test_config_instructions(src_dir: Path) -> None:
    """Each config step becomes its instruction, quoted only where needed."""
    stage = (
        dsl.image(BUSYBOX, platform="linux/amd64")
        .env(PATH="/opt/bin:$PATH", GREETING="hello world", COST="$5 \\$6")
        .label({"org.opencontainers.image.title": 'it\'s "x"', "plain": "v1"})
        .user("app:app")
        .expose(8080, "53/udp")
        .volume("/data", "/with space")
        .healthcheck("curl -f http://localhost/", shell=True, interval="30s", retries=3)
        .stopsignal("TERM")
        .author("Jane <jane@example.com> $HOME")
        .entrypoint("python", "-m", "app")
        .cmd("serve --port 80", shell=True)
    )
    lines = instructions(lower_to_dockerfile(api.plan(stage, "s")))
    assert lines == [
        f"FROM --platform=linux/amd64 {BUSYBOX} AS s",
        'ENV PATH=/opt/bin:$PATH GREETING="hello world" COST="\\$5 \\$6"',
        'LABEL org.opencontainers.image.title="it\'s \\"x\\"" plain=v1',
        "USER app:app",
        "EXPOSE 8080/tcp 53/udp",
        'VOLUME ["/data", "/with space"]',
        "HEALTHCHECK --interval=30s --retries=3 CMD curl -f http://localhost/",
        "STOPSIGNAL TERM",
        "MAINTAINER Jane <jane@example.com> $HOME",
        'ENTRYPOINT ["python", "-m", "app"]',
        "CMD serve --port 80",
    ]
    del src_dir


# -- spelling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["$A/x", "${A}y", "${A:-${B}}", "${A:+x${B:-y}z}", "\\$A", "${A", "$1"]
)
def test_expansion_pattern_matches_the_dsl(value: str) -> None:
    """The lowering reads ``$VAR`` exactly as the DSL expands it (it splits words with the
    DSL's own tokenizer, ``buildstate.split_expressions``, nested expressions included)."""
    env = {"B": "bee"}
    assert read_word(words.expanding_word(value), env) == buildstate.expand(value, env)


_NASTY = ["$", "\\", '"', "'", " ", "\t", "}", "{", "$1", "é", "日本", "#", "=", "\\$", "${", "-"]
_TEXT = st.lists(
    st.one_of(
        st.sampled_from(_NASTY),
        st.text(
            st.characters(exclude_categories=["Cs"], exclude_characters="\n\r\x00"),
            max_size=4,
        ),
    ),
    max_size=8,
).map("".join)
_NAMES = st.sampled_from(["A", "B", "HOME", "X_1"])
_SIMPLE_EXPRESSIONS = st.one_of(
    _NAMES.map(lambda n: f"${n}"),
    _NAMES.map(lambda n: "${" + n + "}"),
    st.tuples(_NAMES, st.sampled_from([":-", "-", ":+", "+"]), _TEXT).map(
        lambda t: "${" + t[0] + t[1] + t[2].replace("}", "") + "}"
    ),
)
_EXPRESSIONS = st.one_of(
    _SIMPLE_EXPRESSIONS,
    # Nested, as BuildKit reads them: ${A:-${B}}, ${A:+x${B:-y}z}.
    st.tuples(
        _NAMES, st.sampled_from([":-", "-", ":+", "+"]), _TEXT, _SIMPLE_EXPRESSIONS, _TEXT
    ).map(
        lambda t: "${" + t[0] + t[1] + t[2].replace("}", "") + t[3] + t[4].replace("}", "") + "}"
    ),
)
_EXPANDING = st.lists(st.one_of(_TEXT, _EXPRESSIONS), max_size=5).map("".join)
_ENV = st.dictionaries(_NAMES, _TEXT, max_size=3)


@given(value=_TEXT)
def test_literal_words_read_back(value: str) -> None:
    """Whatever the text, BuildKit reads the literal word back as that text."""
    assert read_word(words.literal_word(value)) == value
    assert read_word(words.json_word(value, expanding=False)) == value


@given(value=_EXPANDING, env=_ENV)
def test_expanding_words_expand_like_the_dsl(value: str, env: Mapping[str, str]) -> None:
    """BuildKit expands the spelled word to what imagedsl expanded the value to."""
    expected = expand(value, env)
    assert read_word(words.expanding_word(value), env) == expected
    assert read_word(words.json_word(value, expanding=True), env) == expected


@given(command=st.text(st.characters(exclude_categories=["Cs"]), max_size=30))
def test_shell_form_only_when_the_parser_keeps_it(command: str) -> None:
    """When shell form is chosen, the Go parser hands back the command unchanged."""
    assume(command and "\x00" not in command)
    if words.shell_form_is_exact(command):
        (parsed,) = dockerfile.parse_string(f"FROM x\nRUN {command}\n")[1:]
        assert parsed.value == (command,)
        assert not parsed.json
    (parsed,) = dockerfile.parse_string(f"FROM x\nRUN {words.json_array(['sh', command])}\n")[1:]
    assert parsed.value == ("sh", command)


def test_unspellable_values() -> None:
    """Line breaks, lone surrogates and unsafe mount values are refused with a reason."""
    with pytest.raises(words.Unspellable, match="line break"):
        words.expanding_word("a\nb")
    with pytest.raises(words.Unspellable, match="surrogate"):
        words.literal_word("a\udc80")
    with pytest.raises(words.Unspellable, match="mount"):
        words.flag_value("a,b", what="a --mount option")


# -- the build directory -------------------------------------------------------------------------


def tree_digests(lowered: LoweredDockerfile, root: Path) -> dict[str, str]:
    """Tree name -> digest of what was written, hashed the way the planner hashes contexts."""
    hasher = ContextHasher(None, Reporter())
    out = {}
    for tree in lowered.trees:
        written = dsl.context(root)
        if tree.is_file:
            source = written.file(f"{tree.name}/{tree.file_name}")
            out[tree.name] = hasher.tree(source, dest_is_dir=False).digest
        else:
            out[tree.name] = hasher.tree(written.dir(tree.name)).digest
    return out


def test_build_dir_holds_exactly_the_planned_trees(src_dir: Path, tmp_path: Path) -> None:
    """Every tree written has the planned digest; ignored and unselected files are absent."""
    (src_dir / "unselected.txt").write_text("not copied\n")
    src = dsl.context(src_dir, ignore=["**/*.log"])
    stage = (
        dsl.image(BUSYBOX)
        .copy(src.file("requirements.txt"), "/app/")
        .copy(src.dir("app"), "/app/app", exclude=["static"])
        .copy(src.select("run.sh", "app"), "/all/")
        .copy(src.file("run.sh"), "/bin/run")
        .copy(src.glob("*.sh"), "/sh/", layers="auto")
        .run("true", mounts=[dsl.bind(src.dir("app"), "/mnt")])
    )
    plan = api.plan(stage, "s")
    out = tmp_path / "out"
    lowered = write_build_dir(plan, out)
    planned = {tree.name: tree.digest for tree in lowered.trees}
    assert tree_digests(lowered, out) == planned
    assert sorted(p.name for p in out.iterdir()) == sorted(["Dockerfile", *planned])
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not any(name.endswith(("debug.log", "unselected.txt")) for name in written)
    mode = (out / next(t.name for t in lowered.trees if t.is_file) / "run.sh").stat()
    assert mode.st_mode & 0o777 == 0o755  # normalised from 0o700
    assert (out / "Dockerfile").read_text() == lowered.text


def test_build_dir_files_have_content_mtimes(src_dir: Path, tmp_path: Path) -> None:
    """A rewrite that keeps size and mtime still changes the staged file's mtime."""
    src = dsl.context(src_dir)
    source = src_dir / "requirements.txt"
    stage = dsl.image(BUSYBOX).copy(src.file("requirements.txt"), "/app/")
    first = write_build_dir(api.plan(stage, "s"), tmp_path / "a")
    stat = source.stat()
    source.write_text("django\n")  # same size
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = write_build_dir(api.plan(stage, "s"), tmp_path / "b")
    (a,) = first.trees
    (b,) = second.trees
    a_mtime = (tmp_path / "a" / a.name / "requirements.txt").stat().st_mtime_ns
    b_mtime = (tmp_path / "b" / b.name / "requirements.txt").stat().st_mtime_ns
    assert a.name != b.name
    assert a_mtime == content_mtime_ns(a.entries[0].digest) != b_mtime


def test_build_dir_rewrite_and_refusal(src_dir: Path, tmp_path: Path) -> None:
    """A directory written before is updated (stale trees go); someone else's is refused."""
    src = dsl.context(src_dir)
    out = tmp_path / "out"
    write_build_dir(api.plan(dsl.image(BUSYBOX).copy(src.dir("app"), "/app"), "s"), out)
    lowered = write_build_dir(api.plan(dsl.image(BUSYBOX).copy(src.file("run.sh"), "/"), "s"), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["Dockerfile", lowered.trees[0].name])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BuildDirError, match="not written by"):
        write_build_dir(api.plan(dsl.image(BUSYBOX), "s"), foreign)


def test_cli_lower_prints_and_writes(src_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """``imagedsl lower`` prints the Dockerfile; with -o it writes it and its context."""
    (src_dir / "build.py").write_text(
        "import imagedsl as dsl\n"
        "src = dsl.context('.', ignore=['build.py', '*.log'])\n"
        f"base = dsl.image({BUSYBOX!r}).workdir('/app')\n"
        "app = base.copy(src.dir('app'), 'app').cmd('python', '-m', 'app')\n"
        "other = base.run('echo other')\n"
    )
    store = str(tmp_path / "store")
    assert cli.main(["lower", f"{src_dir}/build.py:app", "--store", store]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(HEADER)
    assert "echo other" not in printed
    out = tmp_path / "out"
    assert cli.main(["lower", f"{src_dir}/build.py:app", "--store", store, "-o", str(out)]) == 0
    assert (out / "Dockerfile").read_text() == printed


# -- the Go parser reads what we meant -----------------------------------------------------------

_WORD = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=12,
)
_LINE_WORD = _WORD.filter(lambda s: "\n" not in s and "\r" not in s)
_SAFE_PATH = st.lists(st.sampled_from(["a", "b", "opt", "x y", "é", "$A", "sub"]), min_size=1).map(
    lambda parts: "/" + "/".join(parts)
)
_OWNER = st.sampled_from(["1000", "1000:1000", "app", "app:staff"])


@st.composite
def _steps(
    draw: st.DrawFn, stage: dsl.Stage, src: dsl.Context, others: list[dsl.Stage]
) -> dsl.Stage:
    """Add one to four random steps to ``stage``."""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                [
                    "run", "exec", "env", "arg", "workdir", "user", "label", "expose",
                    "volume", "cmd", "entrypoint", "healthcheck", "shell", "stopsignal",
                    "copy", "copy_from", "add", "script", "inline", "parents", "link", "url",
                    "onbuild", "reset", "user_ids", "author",
                ]
            )
        )  # fmt: skip
        if kind == "run":
            mounts: list[steps.Mount] = draw(
                st.lists(
                    st.sampled_from(
                        [
                            dsl.cache("/cache"),
                            dsl.secret("s"),
                            dsl.tmpfs("/tmp/t"),
                            dsl.bind(src.dir("app"), "/src"),
                        ]
                    ),
                    max_size=2,
                    unique=True,
                )
            )
            stage = stage.run(draw(_WORD), mounts=mounts)
        elif kind == "exec":
            stage = stage.run(draw(st.lists(_WORD, min_size=1, max_size=3)))
        elif kind == "env":
            stage = stage.env(draw(st.dictionaries(_NAMES, _EXPANDING, min_size=1, max_size=2)))
        elif kind == "arg":
            stage = stage.arg(draw(_NAMES), draw(st.none() | _EXPANDING))
        elif kind == "workdir":
            stage = stage.workdir(draw(_SAFE_PATH | _LINE_WORD))
        elif kind == "user":
            stage = stage.user(draw(_OWNER))
        elif kind == "label":
            stage = stage.label({draw(st.sampled_from(["a", "org.x.y", "k-1"])): draw(_WORD)})
        elif kind == "expose":
            stage = stage.expose(draw(st.integers(1, 65535)))
        elif kind == "volume":
            stage = stage.volume(draw(_SAFE_PATH))
        elif kind in ("cmd", "entrypoint"):
            shell = draw(st.booleans())
            command = [draw(_WORD)] if shell else draw(st.lists(_WORD, min_size=1, max_size=3))
            method = stage.cmd if kind == "cmd" else stage.entrypoint
            stage = method(*command, shell=shell)
        elif kind == "healthcheck":
            stage = stage.healthcheck(draw(_WORD), shell=True, interval="5s")
        elif kind == "shell":
            stage = stage.shell("/bin/sh", "-ec")
        elif kind == "stopsignal":
            signal = draw(st.sampled_from(["TERM", "SIGKILL", "9"]))
            stage = stage.stopsignal(signal)
        elif kind == "copy":
            choices: list[dsl.ContextSource | dsl.Context] = [
                src.file("requirements.txt"),
                src.dir("app"),
                src.select("run.sh", "app"),
                src,
            ]
            source = draw(st.sampled_from(choices))
            stage = stage.copy(
                source,
                draw(_SAFE_PATH | _LINE_WORD),
                chown=draw(st.none() | _OWNER),
                chmod=draw(st.none() | st.sampled_from(["755", "0644"])),
            )
        elif kind == "copy_from" and others:
            other = draw(st.sampled_from(others))
            chosen_paths = draw(
                st.lists(st.sampled_from(["/", "/bin", "/etc/x y", "/lib/*.so"]), min_size=1)
            )
            stage = stage.copy(other.paths(*chosen_paths), "/from/")
        elif kind == "add":
            stage = stage.add(src.file("run.sh"), draw(_SAFE_PATH))
        elif kind == "script":
            lines = draw(st.lists(_LINE_WORD.filter(lambda w: w.strip()), min_size=1, max_size=3))
            stage = stage.run(dsl.script("\n".join(lines)))
        elif kind == "inline":
            content = draw(st.binary(max_size=20) | _WORD.map(str.encode))
            mode = draw(st.sampled_from([0o644, 0o600, 0o755]))
            stage = stage.copy(dsl.inline(content, mode=mode), draw(_SAFE_PATH))
        elif kind == "parents":
            selections: list[dsl.ContextSource | dsl.Context] = [
                src.file("app/main.py"),
                src.dir("app"),
                src,
            ]
            stage = stage.copy(
                draw(st.sampled_from(selections)), draw(_SAFE_PATH) + "/", parents=True
            )
        elif kind == "link":
            dest = draw(_SAFE_PATH | st.sampled_from(["rel/", "rel/x", "."]))
            chown = draw(st.none() | st.sampled_from(["1000", "5:6", "app"]))
            chosen = draw(st.sampled_from([src.file("run.sh"), src.dir("app")]))
            if draw(st.booleans()):
                stage = stage.copy(chosen, dest, link=True, chown=chown)
            else:
                stage = stage.add(src.file("run.sh"), dest, link=True, chown=chown)
        elif kind == "url":
            name = draw(st.sampled_from(["f.tgz", "", "a%20b", "x/"]))
            url = dsl.url(f"https://example.com/d/{name}", checksum="sha256:" + "ab" * 32)
            stage = stage.add(
                url, draw(_SAFE_PATH | st.just("/dl/")), chmod=draw(st.none() | st.just(0o640))
            )
        elif kind == "onbuild":
            stage = stage.onbuild(draw(st.sampled_from(["RUN make", "ENV A=1", "COPY . /app"])))
        elif kind == "reset":
            stage = stage.cmd() if draw(st.booleans()) else stage.entrypoint()
        elif kind == "user_ids":
            stage = stage.user(draw(st.integers(0, 65535)), draw(st.none() | st.integers(0, 9)))
        elif kind == "author":
            stage = stage.author(draw(st.sampled_from(["me", 'Jane "J" <j@x> $HOME', "a\\b c"])))
    return stage


@st.composite
def _builds(draw: st.DrawFn, src: dsl.Context) -> dict[str, dsl.Stage]:
    """Two to four named stages: fresh ones, and ones that continue or copy from earlier ones."""
    named: dict[str, dsl.Stage] = {}
    for number in range(draw(st.integers(2, 4))):
        earlier = list(named.values())
        start = draw(st.sampled_from(["image", "scratch", *(["continue"] if earlier else [])]))
        if start == "image":
            stage = dsl.image(draw(st.sampled_from([BUSYBOX, "python:3.12-slim", "gcc:13"])))
        elif start == "scratch":
            stage = dsl.scratch()
        else:
            stage = draw(st.sampled_from(earlier))
        stage = draw(_steps(stage, src, earlier))
        reads_earlier = draw(st.booleans())
        if earlier and reads_earlier:  # read an earlier stage, so that it is kept
            reader = draw(st.sampled_from(["copy", "bind"]))
            source = draw(st.sampled_from(earlier))
            if reader == "copy":
                stage = stage.copy(source.path("/"), "/from-earlier/")
            else:
                stage = stage.run("ls /m", mounts=[dsl.bind(source.path("/"), "/m")])
        named[f"stage{number}"] = stage
    return named


@pytest.fixture(name="parse_src", scope="module")
def fixture_parse_src(tmp_path_factory: pytest.TempPathFactory) -> dsl.Context:
    """A context for generated builds."""
    root = tmp_path_factory.mktemp("parse-src")
    (root / "app").mkdir()
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "requirements.txt").write_text("flask\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    return dsl.context(root)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_generated_builds_parse_into_the_instructions_meant(
    parse_src: dsl.Context, data: st.DataObject
) -> None:
    """Random graphs lower to Dockerfiles that the official Go parser reads, instruction by
    instruction, as the steps we planned (values read back through BuildKit's word rules)."""
    named = data.draw(_builds(parse_src))
    target = list(named)[-1]
    try:
        plan = api.plan(named, target)
    except buildstate.ExpansionError:
        assume(False)
        raise
    # Only values no Dockerfile can hold may be refused: a line break in a word.
    try:
        lowered = lower_to_dockerfile(plan)
    except LoweringError as error:
        refused = error
    else:
        event(f"lowered to {len(lowered.stages)} stage(s)")
        check_lowered(plan, lowered)
        return
    event("refused: a line break in a word")
    step = next(s for s in plan.steps if s.instruction == refused.instruction)
    assert step.kind in ("env", "arg", "workdir", "label", "copy", "volume", "user")
    assert "line break" in refused.problem


def concrete_states(plan: api.Plan) -> list[buildstate.BuildState]:
    """The state after each step on a base image whose config is empty: what BuildKit computes
    (the plan keeps base-image variables unexpanded, as it cannot read the base)."""
    states: list[buildstate.BuildState] = []
    for step in plan.steps:
        node = step.node
        if node.kind == "from":
            states.append(buildstate.BuildState.from_image_config({}, node.state.platform))
        elif node.parent is None:
            states.append(node.state)
        else:
            states.append(states[node.parent].apply(node.step, plan.graph.scope))
    return states


def check_lowered(plan: api.Plan, lowered: LoweredDockerfile) -> None:
    """Parse ``lowered`` with the Go parser and compare every instruction with its step."""
    parsed = {command.start_line: command for command in dockerfile.parse_string(lowered.text)}
    states = concrete_states(plan)
    used: set[int] = set()
    covered: set[int] = set()
    target = lowered.stages[-1]
    for stage in lowered.stages:
        command = parsed[stage.line]
        assert command.cmd == "FROM"
        assert command.value[-2:] == ("AS", stage.name)
        used.add(stage.line)
        if not stage.steps:  # a link=True COPY's own stage, checked with its step
            assert command.value[0] == "scratch"
            continue
        first = plan.steps[stage.steps[0]]
        covered.update(stage.steps)
        for index in stage.steps:
            if index == stage.steps[0] and first.kind in ("from", "scratch"):
                continue
            if plan.steps[index].kind == "onbuild":
                continue  # written in the target's stage only: checked below
            line = lowered.lines[index]
            check_step(plan, lowered, states, index, parsed[line])
            used.add(line)
            used.update(check_companions(plan, lowered, states, index, parsed, stage))
    chain = target_chain(plan)
    for index, step in enumerate(plan.steps):
        if step.kind != "onbuild":
            continue
        if index not in chain:  # a stage's triggers matter only in the target's config
            assert index not in lowered.lines
            continue
        line = lowered.lines[index]
        assert stage_of_line(lowered, line) == target
        check_step(plan, lowered, states, index, parsed[line])
        used.add(line)
    for name, default in plan.graph.scope.declared:  # global ARGs, before the first FROM
        line = min(
            n for n, c in parsed.items() if c.cmd == "ARG" and c.value[0].split("=")[0] == name
        )
        assert line < min(stage.line for stage in lowered.stages)
        assert (parsed[line].value[0].partition("=")[2] or None) == (
            None if default is None else parsed[line].value[0].partition("=")[2]
        )
        used.add(line)
    assert covered == set(range(len(plan.steps)))
    assert used == set(parsed), "instructions that belong to no step"


def target_chain(plan: api.Plan) -> set[int]:
    """The steps from the target's FROM to its last step."""
    chain: set[int] = set()
    at: int | None = len(plan.steps) - 1
    while at is not None:
        chain.add(at)
        at = plan.steps[at].node.parent
    return chain


def check_companions(
    plan: api.Plan,
    lowered: LoweredDockerfile,
    states: list[buildstate.BuildState],
    index: int,
    parsed: dict[int, Any],
    stage: Any,
) -> set[int]:
    """Lines written for a step besides its own: the ``COPY --from=LINK / /`` of a link=True
    step lowered without --link, and the CMD an ENTRYPOINT keeps from an earlier stage."""
    node = plan.steps[index].node
    line = lowered.lines[index]
    extra: set[int] = set()
    link_stage = stage_of_line(lowered, line)
    if not link_stage.steps:
        merges = [
            n for n, c in parsed.items()
            if c.cmd == "COPY" and c.flags == (f"--from={link_stage.name}",) and c.value == ("/", "/")
        ]  # fmt: skip
        assert len(merges) == 1
        assert stage_of_line(lowered, merges[0]) == stage
        extra.add(merges[0])
    if isinstance(node.step, steps.Entrypoint):
        following = parsed.get(line + 1)
        if (
            following is not None
            and following.cmd == "CMD"
            and line + 1 not in lowered.lines.values()
        ):
            at = node.parent
            while not isinstance(plan.steps[at].node.step, steps.Cmd):  # type: ignore[index]
                at = plan.steps[at].node.parent  # type: ignore[index]
            assert at is not None
            cmd = plan.steps[at].node.step
            assert isinstance(cmd, steps.Cmd)
            assert at not in stage.steps  # a CMD of this stage BuildKit keeps by itself
            before = states[plan.steps[at].node.parent]  # type: ignore[index]
            if following.json:
                assert following.value == tuple(before.argv(cmd.command, cmd.shell_form))
            else:
                assert cmd.shell_form
                assert following.value == cmd.command
            extra.add(line + 1)
    return extra


def stage_of_line(lowered: LoweredDockerfile, line: int) -> Any:
    """The Dockerfile stage a line is in."""
    return max((s for s in lowered.stages if s.line <= line), key=lambda s: s.line)


def check_step(
    plan: api.Plan,
    lowered: LoweredDockerfile,
    states: list[buildstate.BuildState],
    index: int,
    command: Any,
) -> None:
    """One instruction means what its step means."""
    step = plan.steps[index]
    node = step.node
    before = states[node.parent] if node.parent is not None else states[index]
    after = states[index]
    variables = before.variables
    value = command.value
    match node.step:
        case steps.Run() as run:
            assert command.cmd == "RUN"
            if command.heredocs:
                (heredoc,) = command.heredocs
                argv = [*before.shell, heredoc.content]
            else:
                argv = list(value) if command.json else [*before.shell, value[0]]
            assert argv == list(before.argv(run.command, run.shell_form))
            mounts = [flag for flag in command.flags if flag.startswith("--mount=")]
            assert len(mounts) == len(run.mounts)
            for flag, mount in zip(mounts, run.mounts, strict=True):
                options = dict(
                    o.partition("=")[::2] for o in flag.removeprefix("--mount=").split(",")
                )
                assert options["type"] == mount.type
        case steps.Env() as env:
            assert command.cmd == "ENV"
            pairs = dict(zip(value[::2], value[1::2], strict=True))
            assert {k: read_word(v, variables) for k, v in pairs.items()} == {
                k: dict(after.env)[k] for k, _ in env.items
            }
        case steps.Arg() as arg:
            assert command.cmd == "ARG"
            key, eq, word = value[0].partition("=")
            assert key == arg.name
            if arg.default is None:
                assert not eq
            elif arg.name not in plan.graph.scope.build_args:
                assert read_word(word, variables) == dict(after.env)[arg.name]
        case steps.Workdir():
            assert command.cmd == "WORKDIR"
            word = read_word(value[0], variables)
            # BuildKit keeps an absolute WORKDIR as written and cleans a relative one.
            resolved = (
                word
                if word.startswith("/")
                else clean_container_path(posixpath.join(before.workdir, word))
            )
            assert resolved == after.workdir
        case steps.User():
            assert (command.cmd, read_word(value[0], variables)) == ("USER", after.user)
        case steps.Label() as label:
            assert command.cmd == "LABEL"
            assert [read_word(v, variables) for v in value] == [
                expand(x, variables) for pair in label.items for x in pair
            ]
        case steps.Expose() as expose:
            assert (command.cmd, value) == ("EXPOSE", expose.ports)
        case steps.Volume() as volume:
            assert command.cmd == "VOLUME"
            assert tuple(read_word(v, variables) for v in value) == tuple(
                expand(p, variables) for p in volume.paths
            )
        case steps.Cmd() | steps.Entrypoint() as config:
            assert command.cmd == ("CMD" if isinstance(config, steps.Cmd) else "ENTRYPOINT")
            if command.json:
                expected = before.argv(config.command, config.shell_form)
                assert value == tuple(expected)
            else:
                assert config.shell_form
                assert value == config.command
        case steps.Healthcheck() as check:
            assert command.cmd == "HEALTHCHECK"
            if check.test is None:
                assert value == ("NONE",)
            elif command.json:
                assert value[0] == "CMD"
                assert value[1:] == ("/bin/sh", "-c", check.test[0])
            else:
                assert value == ("CMD", *check.test)
        case steps.Shell() as shell:
            assert (command.cmd, value) == ("SHELL", shell.command)
        case steps.StopSignal() as signal:
            assert (command.cmd, value) == ("STOPSIGNAL", (signal.signal,))
        case steps.Author() as author:
            assert (command.cmd, value) == ("MAINTAINER", (author.name,))
        case steps.OnBuild() as trigger:
            assert command.cmd == "ONBUILD"
            assert command.original == f"ONBUILD {trigger.instruction}"
        case steps.Copy() | steps.Add() as copy:
            local_add = isinstance(copy, steps.Add) and not isinstance(copy.source, steps.UrlSource)
            assert command.cmd == ("ADD" if local_add else "COPY")
            flags = dict(f.removeprefix("--").partition("=")[::2] for f in command.flags)
            assert flags.get("chown") == copy.chown
            assert flags.get("chmod") == copy.chmod
            assert "link" not in flags  # Docker 20.10: a stage of its own instead
            in_link_stage = not stage_of_line(lowered, command.start_line).steps
            *sources, dest = (read_word(v, variables) for v in value)
            wanted = expand(copy.dest, variables)
            if in_link_stage:
                wanted = posixpath.join(before.workdir or "/", wanted)
                assert (dest.rstrip("/") or "/") == clean_container_path(wanted)
            else:
                assert dest == wanted
            if isinstance(copy.source, steps.UrlSource):
                (staged,) = (t for t in lowered.trees if t.url == copy.source.url)
                assert sources == [f"{staged.name}/{copy.source.file_name}"]
                assert staged.digest == copy.source.checksum
            elif isinstance(copy.source, steps.StagePath):
                source_stage = next(s for s in lowered.stages if node.sources[0] in s.steps)
                assert flags["from"] == source_stage.name
                assert sources == list(copy.source.paths)
            else:
                (tree,) = node.trees
                names = {t.name for t in lowered.trees if t.digest == tree.digest}
                assert sources[0].split("/")[0] in names
        case _:
            raise AssertionError(f"unexpected step {node.step!r}")


def test_fixed_build_parses(src_dir: Path) -> None:
    """A hand-written build with every instruction passes the same check."""
    src = dsl.context(src_dir, ignore=["*.log"])
    tools = dsl.image("gcc:13").workdir("/src").copy(src.dir("app"), ".").run("make")
    app = (
        dsl.image(BUSYBOX)
        .arg("V", "1")
        .env(V2="${V:-x} $V")
        .workdir("app dir")
        .user("1000:1000")
        .copy(src.file("requirements.txt"), "./", chown="1000", chmod="0640")
        .copy(tools.path("/src"), "/tools/")
        .run(["sh", "-c", "echo $V"], mounts=[dsl.bind(tools.path("/src"), "/t")])
        .label(a="\\$HOME")
        .volume("/data")
        .healthcheck(None)
        .cmd("sh")
    )
    plan = api.plan({"tools": tools, "app": app}, "app")
    check_lowered(plan, lower_to_dockerfile(plan))


def test_from_a_stage_chosen_by_a_platform_arg() -> None:
    """``FROM build_${TARGETOS}`` continues the stage the target platform names."""
    named = {
        "build_linux": dsl.image(BUSYBOX).run("echo linux"),
        "build_windows": dsl.image(BUSYBOX).run("echo windows"),
    }
    final = dsl.from_stage("build_${TARGETOS}").run("echo final")
    plan = api.plan({**named, "final": final}, "final")
    assert [s.instruction for s in plan.steps] == [
        f"FROM {BUSYBOX}",
        "RUN echo linux",
        "FROM build_${TARGETOS}",
        "RUN echo final",
    ]
    assert plan.steps[2].status is api.PlanStatus.CONFIG
    lines = instructions(lower_to_dockerfile(plan))
    assert lines[-2:] == ["FROM build_linux AS final", "RUN echo final"]
    darwin = {**named, "final": dsl.from_stage("build_${TARGETOS}_x").run("echo final")}
    with pytest.raises(dsl.UnknownStageError) as raised:
        api.plan(darwin, "final")
    assert raised.value.name == "build_linux_x"


# -- forms Docker 20.10's frontend lacks, written in forms it accepts ------------------------------


def test_heredoc_script_is_an_exec_form_run_of_the_shell() -> None:
    """RUN <<EOF on Docker 20.10: the stage's SHELL with the script as one argument (what
    BuildKit 1.4+ runs for the heredoc); with a 1.4 frontend, the heredoc itself."""
    script = dsl.script(
        """
        set -e
        echo "a $HOME" > /a
        """
    )
    stage = dsl.image(BUSYBOX).shell("/bin/sh", "-ec").run(script, mounts=[dsl.cache("/c")])
    plan = api.plan(stage, "s")
    old = lower_to_dockerfile(plan)
    assert instructions(old)[-1] == (
        'RUN --mount=type=cache,target=/c ["/bin/sh", "-ec", "set -e\\necho \\"a $HOME\\" > /a\\n"]'
    )
    check_lowered(plan, old)
    new = lower_to_dockerfile(plan, features=DOCKERFILE_1_4)
    assert "RUN --mount=type=cache,target=/c <<'EOF'\nset -e\n" in new.text
    (run,) = [c for c in parse(new) if c.cmd == "RUN"]
    assert run.heredocs[0].content == 'set -e\necho "a $HOME" > /a\n'
    check_lowered(plan, new)


def test_a_delimiter_in_the_script_picks_another() -> None:
    """A script with an ``EOF`` line gets a delimiter that no line equals."""
    plan = api.plan(dsl.image(BUSYBOX).run(dsl.script("cat <<EOF\nx\nEOF\n")), "s")
    lowered = lower_to_dockerfile(plan, features=DOCKERFILE_1_4)
    assert "<<'EOF2'" in lowered.text
    (run,) = [c for c in parse(lowered) if c.cmd == "RUN"]
    assert run.heredocs[0].content == "cat <<EOF\nx\nEOF\n"


def test_inline_file_is_a_staged_file(tmp_path: Path) -> None:
    """COPY <<EOF on Docker 20.10: a context file with the bytes and mode, copied in."""
    stage = dsl.image(BUSYBOX).copy(dsl.inline(b"\x00bin\n", mode=0o600), "/etc/x", chown="1:1")
    plan = api.plan(stage, "s")
    lowered = write_build_dir(plan, tmp_path / "out")
    (tree,) = lowered.trees
    assert instructions(lowered)[-1] == f"COPY --chown=1:1 {tree.name}/EOF /etc/x"
    written = tmp_path / "out" / tree.name / "EOF"
    assert written.read_bytes() == b"\x00bin\n"
    assert written.stat().st_mode & 0o7777 == 0o600
    check_lowered(plan, lowered)
    text = api.plan(dsl.image(BUSYBOX).copy(dsl.inline("a = 1\n"), "/etc/a.conf"), "s")
    native = lower_to_dockerfile(text, features=DOCKERFILE_1_4)
    assert "COPY <<'EOF' /etc/a.conf\na = 1\nEOF" in native.text
    assert native.trees == ()


def test_parents_are_a_staged_tree_of_context_paths(src_dir: Path, tmp_path: Path) -> None:
    """COPY --parents on Docker 20.10: the staged tree already holds the context paths."""
    src = dsl.context(src_dir, ignore=["*.log"])
    stage = dsl.image(BUSYBOX).copy(src.select("app/static", "run.sh"), "/dst/", parents=True)
    plan = api.plan(stage, "s")
    lowered = write_build_dir(plan, tmp_path / "out")
    (tree,) = lowered.trees
    assert sorted(e.placed for e in tree.entries) == ["app/static/site.css", "run.sh"]
    assert instructions(lowered)[-1] == f"COPY {tree.name}/ /dst/"
    assert (tmp_path / "out" / tree.name / "app" / "static" / "site.css").is_file()
    check_lowered(plan, lowered)


def test_link_is_a_scratch_stage_copied_in(src_dir: Path) -> None:
    """link=True on Docker 20.10: the COPY in a FROM scratch stage, then ``COPY --from / /``
    (parents it makes replace the image's, as --link's do); a name for --chown cannot be
    resolved in a scratch stage, so that COPY stays plain; a 1.4 frontend gets --link."""
    src = dsl.context(src_dir)
    stage = (
        dsl.image(BUSYBOX)
        .workdir("/app")
        .copy(src.file("run.sh"), "bin/", link=True, chown="5:6")
        .copy(src.file("run.sh"), "/named", link=True, chown="app")
    )
    plan = api.plan(stage, "s")
    lowered = lower_to_dockerfile(plan)
    lines = instructions(lowered)
    assert lines[0] == "FROM scratch AS s-link-1"
    assert lines[1].startswith("COPY --chown=5:6 ")
    assert lines[1].endswith("/run.sh /app/bin/")
    assert "COPY --from=s-link-1 / /" in lines
    assert lines[-1].startswith("COPY --chown=app ")
    assert "--link" not in lines[-1]
    assert [s.name for s in lowered.stages] == ["s-link-1", "s"]
    assert lowered.vertices[2] == "[s 3/4]"  # the COPY --from=s-link-1 vertex
    check_lowered(plan, lowered)
    native = instructions(lower_to_dockerfile(plan, features=DOCKERFILE_1_4))
    assert native[-2].startswith("COPY --chown=5:6 --link ")


def test_url_is_fetched_checked_and_staged(tmp_path: Path) -> None:
    """ADD --checksum on Docker 20.10: imagedsl fetches the file, checks it, stages it (0600,
    as ADD makes it) and COPYs it; a wrong checksum stops before anything is written."""
    import hashlib
    import http.server
    import threading

    body = b"payload\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/files/pay%20load.txt"
        good = "sha256:" + hashlib.sha256(body).hexdigest()
        stage = dsl.image(BUSYBOX).add(dsl.url(url, checksum=good), "/dl/", chmod=0o640)
        plan = api.plan(stage, "s")
        lowered = write_build_dir(plan, tmp_path / "out")
        (tree,) = lowered.trees
        assert (
            instructions(lowered)[-1] == f'COPY --chmod=0640 ["{tree.name}/pay load.txt", "/dl/"]'
        )
        fetched = tmp_path / "out" / tree.name / "pay load.txt"
        assert fetched.read_bytes() == body
        assert fetched.stat().st_mode & 0o7777 == 0o600
        check_lowered(plan, lowered)
        bad = dsl.image(BUSYBOX).add(dsl.url(url, checksum="sha256:" + "0" * 64), "/dl/")
        with pytest.raises(DownloadError) as caught:
            write_build_dir(api.plan(bad, "s"), tmp_path / "bad")
        assert caught.value.url == url
        assert not any((tmp_path / "bad").glob("*/*"))
    finally:
        server.shutdown()
        server.server_close()


def test_onbuild_is_written_in_the_target_stage_only() -> None:
    """BuildKit runs a stage's ONBUILD triggers in every stage FROM it; build.py never does,
    so triggers are written in the target's stage, after its FROM, in chain order."""
    base = dsl.image(BUSYBOX).onbuild("RUN make").run("echo base")
    app = base.onbuild("ENV A=1").run("echo app")
    plan = api.plan({"base": base, "app": app}, "app")
    lines = instructions(lower_to_dockerfile(plan))
    assert lines == [
        f"FROM {BUSYBOX} AS base",
        "RUN echo base",
        "FROM base AS app",
        "ONBUILD RUN make",
        "ONBUILD ENV A=1",
        "RUN echo app",
    ]
    check_lowered(plan, lower_to_dockerfile(plan))


def test_entrypoint_keeps_a_cmd_of_an_earlier_stage() -> None:
    """In build.py an ENTRYPOINT drops only a CMD the base image set; BuildKit drops one its
    Dockerfile stage did not set, so the lowering writes the stage's CMD again."""
    base = dsl.image(BUSYBOX).cmd("serve --port 80").shell("/bin/sh", "-ec")
    app = base.entrypoint("/bin/app", "run")
    plan = api.plan({"base": base, "app": app}, "app")
    lines = instructions(lower_to_dockerfile(plan))
    assert lines[-2:] == [
        'ENTRYPOINT ["/bin/app", "run"]',
        'CMD ["/bin/sh", "-c", "serve --port 80"]',
    ]
    same_stage = api.plan(dsl.image(BUSYBOX).cmd("x").entrypoint(["y"]), "s")
    assert instructions(lower_to_dockerfile(same_stage))[-1] == 'ENTRYPOINT ["y"]'
    resets = api.plan({"base": base, "app": base.entrypoint()}, "app")
    assert instructions(lower_to_dockerfile(resets))[-2:] == [
        "ENTRYPOINT []",
        'CMD ["/bin/sh", "-c", "serve --port 80"]',
    ]


def test_a_chmod_with_special_bits_needs_a_frontend_that_keeps_them(src_dir: Path) -> None:
    """Docker 20.10's BuildKit drops setuid, setgid and sticky bits from ``--chmod`` (BuildKit
    issue 3920, fixed later) where the OCI backend keeps them: one build.py, two images. The
    docker backend refuses it up front on such an engine (a requirement of the lowering)."""
    src = dsl.context(src_dir)
    special = api.plan(dsl.image(BUSYBOX).copy(src.dir("app"), "/app", chmod="4755"), "s")
    features = [r.feature for r in lower_to_dockerfile(special).requirements]
    assert features == ["COPY --chmod with setuid, setgid or sticky bits"]
    plain = api.plan(dsl.image(BUSYBOX).copy(src.dir("app"), "/app", chmod="755"), "s")
    assert not lower_to_dockerfile(plain).requirements

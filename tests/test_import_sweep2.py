"""``imagedsl import`` on more forms from real Dockerfiles (the second sweep).

Each case is a reduced Dockerfile of our own. Before, the importer crashed on it, refused a form
BuildKit builds, or wrote a build.py whose meaning differs from BuildKit's; now each imports
with BuildKit's meaning, or is refused with its line and the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagedsl.importer._mountopts import MountOptionError, ram_in_bytes
from imagedsl.steps import Run, SecretMount, TmpfsMount
from tests.test_import_sweep import _load, _refused


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        pytest.param("67108864", 67108864, id="bytes"),
        pytest.param("64m", 64 * 1024**2, id="m"),
        pytest.param("4G", 4 * 1024**3, id="G"),
        pytest.param("5120m", 5120 * 1024**2, id="5120m"),
        pytest.param("1.5GiB", 3 * 1024**3 // 2, id="GiB-fraction"),
        pytest.param("512kb", 512 * 1024, id="kb"),
    ],
)
def test_a_tmpfs_size_with_a_unit_is_read_as_buildkit_reads_it(
    tmp_path: Path, size: str, expected: int
) -> None:
    """``--mount=type=tmpfs,size=4G`` (go-units' RAMInBytes: binary prefixes); before, the
    importer crashed with a ValueError on anything but a plain number."""
    _, plan = _load(tmp_path, f"FROM busybox\nRUN --mount=type=tmpfs,target=/t,size={size} true\n")
    run = plan.steps[-1].node.step
    assert isinstance(run, Run)
    (mount,) = run.mounts
    assert isinstance(mount, TmpfsMount)
    assert mount.size == expected


def test_a_tmpfs_size_of_zero_sets_no_limit(tmp_path: Path) -> None:
    text, _ = _load(tmp_path, "FROM busybox\nRUN --mount=type=tmpfs,target=/t,size=0 true\n")
    assert 'dsl.tmpfs("/t")' in text


def test_a_tmpfs_size_buildkit_refuses_is_refused_with_its_line() -> None:
    error = _refused("FROM busybox\n\nRUN --mount=type=tmpfs,target=/t,size=lots true\n")
    assert error.line == 3
    assert "size=lots" in error.problem
    with pytest.raises(MountOptionError):
        ram_in_bytes("1.2.3m")


@pytest.mark.parametrize(
    ("options", "secret_id", "target"),
    [
        pytest.param("source=npmrc", "npmrc", "/run/secrets/npmrc", id="source"),
        pytest.param("src=npmrc", "npmrc", "/run/secrets/npmrc", id="src"),
        pytest.param("id=a,src=b,target=/s", "b", "/s", id="source-before-id"),
        pytest.param("target=/only/target", "target", "/only/target", id="target-only"),
        pytest.param("id=tok", "tok", "/run/secrets/tok", id="id"),
    ],
)
def test_a_secret_named_by_its_source_or_target(
    tmp_path: Path, options: str, secret_id: str, target: str
) -> None:
    """BuildKit's secret id is ``source`` (``src``), else ``id``, else the target's last
    element; before, ``source=`` was refused ("needs an id") and ``src=`` "not supported"."""
    _, plan = _load(tmp_path, f"FROM busybox\nRUN --mount=type=secret,{options} true\n")
    run = plan.steps[-1].node.step
    assert isinstance(run, Run)
    (mount,) = run.mounts
    assert isinstance(mount, SecretMount)
    assert (mount.id, mount.target) == (secret_id, target)


def test_a_secret_without_id_source_or_target_is_refused() -> None:
    error = _refused("FROM busybox\nRUN --mount=type=secret,env=TOKEN true\n")
    assert error.line == 2
    assert "needs an id, a source or a target" in error.problem


@pytest.mark.parametrize(
    "mount",
    [
        pytest.param("type=cache,from=deps,source=/c,target=/c", id="stage"),
        pytest.param("type=cache,from=rust:1.60,source=/usr/local/cargo,target=/c", id="image"),
        pytest.param("type=cache,from=deps,target=/w,ro", id="readonly"),
    ],
)
def test_a_cache_seeded_from_a_stage_or_image_is_refused_saying_why(mount: str) -> None:
    """BuildKit fills such a cache from the stage or image the first time; a build.py's cache
    starts empty. Before, the message only said "option 'from' is not supported"."""
    error = _refused(f"FROM busybox AS deps\nFROM busybox\nRUN --mount={mount} true\n")
    assert error.line == 3
    assert "a cache seeded from a stage or image" in error.problem


def test_from_a_stage_with_onbuild_triggers_is_refused() -> None:
    """BuildKit runs a stage's ONBUILD triggers in a later stage ``FROM`` it, then drops them
    from that image; the import continued the stage, triggers unrun and kept in the config."""
    error = _refused(
        "FROM busybox AS base\nRUN true\nONBUILD RUN echo hi\nONBUILD RUN echo 2\n"
        "FROM base AS child\nRUN true\n"
    )
    assert error.line == 5
    assert "ONBUILD triggers of that stage (line 3)" in error.problem


def test_onbuild_in_a_stage_nothing_continues_still_imports(tmp_path: Path) -> None:
    """Triggers of the last stage, or of a stage only copied from, stay in its image config."""
    text, plan = _load(
        tmp_path,
        "FROM busybox AS tools\nONBUILD RUN echo hi\nRUN true\n"
        "FROM busybox\nCOPY --from=tools /bin/sh /sh\nONBUILD COPY . /app\n",
    )
    assert '.onbuild("COPY . /app")' in text
    assert plan.steps[-1].instruction == "ONBUILD COPY . /app"


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("COPY --from=$BUILDER /a /a", id="stage-var"),
        pytest.param("COPY --from=${IMAGE} /a /a", id="image-var"),
        pytest.param("COPY --from=example.invalid/tools:${V} /a /a", id="tag-var"),
    ],
)
def test_a_variable_in_copy_from_is_refused_with_the_workaround(line: str) -> None:
    """BuildKit never expands ``--from`` (recent releases refuse it, older ones fail on the
    name as written): the message says so and names the FROM ... AS workaround."""
    error = _refused(f"ARG V=1 BUILDER=b IMAGE=alpine\nFROM busybox AS b\nFROM scratch\n{line}\n")
    assert error.line == 4
    assert "does not expand variables in --from" in error.problem
    assert "FROM ${VAR} AS name" in error.problem


@pytest.mark.parametrize(
    "dockerfile",
    [
        pytest.param("# escape=`\nFROM scratch\nWORKDIR C:\\app\n", id="workdir"),
        pytest.param("# escape=`\nFROM scratch\nCOPY . C:\\app\\\n", id="copy-dest"),
        pytest.param('FROM scratch\nADD ["f", "c:/tools/"]\n', id="add-dest"),
    ],
)
def test_windows_paths_in_workdir_and_destinations_are_refused(dockerfile: str) -> None:
    """A Windows image's ``WORKDIR C:\\app``; before, it became the Linux path ``/C:\\app``."""
    error = _refused(dockerfile)
    assert error.line == dockerfile.count("\n")
    assert "a Windows path" in error.problem


@pytest.mark.parametrize("chmod", ["+x", "u+x,g+r", "a=rX"])
def test_a_symbolic_chmod_is_refused_saying_why(chmod: str) -> None:
    """``COPY --chmod=+x`` (common in real files; BuildKit 1.14 applies it to each file's own
    mode): a build.py's chmod is one octal mode for every file."""
    error = _refused(f"FROM busybox\nCOPY --chmod={chmod} run.sh /run.sh\n")
    assert error.line == 2
    assert "takes an octal mode" in error.problem


def test_real_world_forms_that_already_import_keep_buildkits_meaning(tmp_path: Path) -> None:
    """Forms the sweep read in public files and found right: pinned so they stay so."""
    text, plan = _load(
        tmp_path,
        "FROM scratch AS ctx\nCOPY build.sh /\n"
        "FROM busybox\n"
        'SHELL ["/bin/bash", "-o", "pipefail", "-c"]\n'
        "RUN --mount=type=bind,from=ctx,source=/,target=/ctx "
        "--mount=type=cache,dst=/var/cache --mount=type=tmpfs,dst=/tmp /ctx/build.sh\n"
        "CMD ['echo', 'hi']\n"
        'ENV PATH="/opt/bin:${PATH}" A=1\n'
        "ENV A=${A}:2 B=$A\n"
        "STOPSIGNAL SIGRTMIN+3\n",
        ("build.sh",),
    )
    assert 'dsl.bind(ctx.path("/"), "/ctx")' in text
    assert 'dsl.cache("/var/cache")' in text
    assert 'dsl.tmpfs("/tmp")' in text
    # JSON with single quotes is the shell form in BuildKit.
    assert ".cmd(\"['echo', 'hi']\")" in text
    assert '.env(A="${A}:2", B="$A")' in text
    instructions = [step.instruction for step in plan.steps]
    assert "STOPSIGNAL SIGRTMIN+3" in instructions
    assert 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]' in instructions


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("https://example.invalid/o/r.git?branch=main", id="query"),
        pytest.param("https://example.invalid/o/r.git?ref=v1&subdir=d", id="query-subdir"),
    ],
)
@pytest.mark.parametrize("checksum", ["", "--checksum=sha256:" + "a" * 64 + " "])
def test_a_git_url_with_a_query_is_a_git_repository(source: str, checksum: str) -> None:
    """BuildKit's git URL: an http(s) URL whose path ends in ``.git`` (query and fragment
    apart). Before, ``r.git?branch=main`` was taken for a file to download, and imported as
    ``dsl.url`` when it had a checksum."""
    error = _refused(f"FROM busybox\nADD {checksum}{source} /src\n")
    assert error.line == 2
    assert "git repository" in error.problem


def test_a_url_whose_query_mentions_git_is_a_download(tmp_path: Path) -> None:
    text, _ = _load(
        tmp_path,
        f"FROM busybox\nADD --checksum=sha256:{'a' * 64} https://example.invalid/f?x=.git /f\n",
    )
    assert "dsl.url(" in text
    assert '"https://example.invalid/f?x=.git"' in text
    assert "git repository" not in text


def test_from_platform_of_an_architecture_alone_is_linux(tmp_path: Path) -> None:
    """``FROM --platform=amd64`` (containerd's platforms.Parse on BuildKit's Linux daemon:
    linux/amd64). Before, the build.py did not load when the image had a variable (the DSL
    refused "amd64", and the import did not check a templated FROM)."""
    text, plan = _load(
        tmp_path,
        "ARG V=1\nFROM --platform=amd64 busybox:${V} AS a\nFROM --platform=armhf busybox:${V} AS b\n"
        "FROM scratch\nCOPY --from=a /bin/sh /a\nCOPY --from=b /bin/sh /b\n",
    )
    assert 'dsl.image(f"busybox:{V}", platform="linux/amd64")' in text
    assert 'dsl.image(f"busybox:{V}", platform="linux/arm/v7")' in text
    froms = [s.instruction for s in plan.steps if s.instruction.startswith("FROM --platform")]
    assert froms == [
        "FROM --platform=linux/amd64 busybox:1",
        "FROM --platform=linux/arm/v7 busybox:1",
    ]


@pytest.mark.parametrize(
    ("platform", "words"),
    [
        pytest.param("linux", "not an architecture", id="os-alone"),
        pytest.param("foo/bar/baz/qux", "platform", id="four-parts"),
    ],
)
def test_a_platform_a_build_py_cannot_hold_is_refused_even_in_a_templated_from(
    platform: str, words: str
) -> None:
    error = _refused(f"ARG V=1\nFROM --platform={platform} busybox:${{V}}\n")
    assert error.line == 2
    assert words in error.problem

"""Faults the fourth sweep found and left for the next stop, each judged by the engine here.

Each test builds a Dockerfile with ``docker build`` (the engine's BuildKit) and the build.py
``imagedsl import`` makes of it with both backends, and compares what users notice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagedsl.importer import translate_text
from tests.support.cli import imagedsl, imagedsl_on
from tests.support.docker import DockerEngine
from tests.support.fidelity import docker_config, layout_config
from tests.test_import_sweep import _refused


@pytest.fixture(name="tags")
def fixture_tags(docker_engine: DockerEngine) -> Iterator[list[str]]:
    """Unique image names for a test, removed afterwards (never anything else)."""
    made: list[str] = []
    yield made
    for tag in made:
        docker_engine.run("rmi", "--no-prune", tag, check=False)


def _three_ways(
    engine: DockerEngine, root: Path, dockerfile: str, targets: list[str], tags: list[str]
) -> dict[str, list[dict[str, object]]]:
    """The config of each target built by ``docker build``, the docker backend and the OCI
    backend (in that order)."""
    root.mkdir(exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    (root / "build.py").write_text(translate_text(dockerfile, context_dir=root))
    store = root / "store"
    configs: dict[str, list[dict[str, object]]] = {}
    for target in targets:
        theirs, ours = (f"imagedsl-test/{kind}-{target}:{uuid.uuid4().hex[:12]}" for kind in "ab")
        tags.extend([theirs, ours])
        engine.run("build", "-q", "--target", target, "-t", theirs, str(root))
        for args in (
            ("--backend", "docker", "-t", ours),
            ("--backend", "oci", "--output", f"oci:{root / 'layout'}:{target}"),
        ):
            done = imagedsl_on(engine, "build", *args, f"build.py:{target}", cwd=root, store=store)
            assert done.returncode == 0, done.stderr
        configs[target] = [
            docker_config(engine, theirs),
            docker_config(engine, ours),
            layout_config(root / "layout", target),
        ]
    return configs


def test_an_entrypoint_drops_a_cmd_the_stage_continued_from_set(
    tmp_path: Path, docker_engine: DockerEngine, tags: list[str]
) -> None:
    """BuildKit drops a CMD its Dockerfile stage did not set when ENTRYPOINT is written; the
    build.py continues the earlier stage's chain, where an ENTRYPOINT keeps the chain's CMD.
    Before, both backends kept ``echo base`` under the new ENTRYPOINT."""
    dockerfile = (
        'FROM scratch AS base\nCMD ["echo", "base"]\n'
        'FROM base AS reset\nENTRYPOINT ["/bin/sh", "-c"]\n'
        'FROM base AS own\nCMD ["own"]\nENTRYPOINT ["/bin/sh"]\n'
        'FROM reset AS again\nENTRYPOINT ["/again"]\nCMD ["later"]\n'
        "FROM base AS kept\nLABEL a=b\n"
    )
    configs = _three_ways(
        docker_engine, tmp_path, dockerfile, ["reset", "own", "again", "kept"], tags
    )
    expected = {
        "reset": (["/bin/sh", "-c"], None),
        "own": (["/bin/sh"], ["own"]),
        "again": (["/again"], ["later"]),
        "kept": (None, ["echo", "base"]),
    }
    for target, (entrypoint, cmd) in expected.items():
        engine, docker_backend, oci_backend = configs[target]
        assert (engine["Entrypoint"], engine["Cmd"]) == (entrypoint, cmd), target
        assert docker_backend == engine, target
        assert oci_backend == engine, target


def test_from_a_stage_named_in_another_case_is_refused_as_buildkit_refuses_it(
    tmp_path: Path, docker_engine: DockerEngine
) -> None:
    """BuildKit finds ``COPY --from=Builder`` among the stages whatever the case, but looks
    ``FROM Builder`` up as written: it reads an image, and refuses its upper case. The
    import continued the stage ``builder``; it now refuses the line, as the engine does."""
    dockerfile = "FROM scratch AS builder\nCOPY a /a\nFROM Builder\nCOPY a /b\n"
    (tmp_path / "a").write_text("a\n")
    (tmp_path / "Dockerfile").write_text(dockerfile)
    built = docker_engine.run("build", "-q", str(tmp_path), check=False)
    assert built.returncode != 0
    assert "must be lowercase" in built.stdout + built.stderr
    refused = _refused(dockerfile)
    assert refused.line == 3
    assert "FROM Builder" in refused.problem
    text = translate_text(dockerfile.replace("FROM Builder", "FROM builder"))
    assert "= builder.copy(" in text  # the name as written continues the stage


@pytest.mark.parametrize(
    ("setup", "copy", "files", "message"),
    [
        pytest.param(
            "mkdir -p /x/usr/bin && ln -s usr/bin /x/bin",
            "COPY tree /x",
            {"tree/bin/tool": "t\n"},
            "cannot copy to non-directory: /x/bin",
            id="directory-over-a-symlink",
        ),
        pytest.param(
            "mkdir -p /x/usr/bin && ln -s usr/bin /x/bin",
            "COPY --from=tree /tree /x",
            {},
            "cannot copy to non-directory: /x/bin",
            id="stage-directory-over-a-symlink",
        ),
        pytest.param(
            "mkdir -p /x/a/inner",
            "COPY tree /x",
            {"tree/a": "file\n"},
            "cannot replace to directory /x/a with file",
            id="file-over-a-directory",
        ),
        pytest.param(
            "mkdir -p /x && echo f > /x/a",
            "COPY tree /x",
            {"tree/a/b": "b\n"},
            "cannot copy to non-directory: /x/a",
            id="directory-over-a-file",
        ),
    ],
)
def test_a_copy_over_a_path_of_another_type_fails_as_in_buildkit(
    tmp_path: Path,
    docker_engine: DockerEngine,
    busybox_image: str,
    setup: str,
    copy: str,
    files: dict[str, str],
    message: str,
) -> None:
    """BuildKit's copy refuses a directory over a file or symlink below the destination, and
    a file over a directory; the OCI backend replaced them (a merged-/usr base's /bin symlink
    became a directory holding only the copied files)."""
    dockerfile = (
        f"FROM {busybox_image} AS tree\nRUN mkdir -p /tree/bin && echo t > /tree/bin/tool\n"
        f"FROM {busybox_image}\nRUN {setup}\n{copy}\n"
    )
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "Dockerfile").write_text(dockerfile)
    theirs = docker_engine.run("build", "-q", str(tmp_path), check=False)
    assert theirs.returncode != 0
    assert message.split(":")[0].split(" /")[0] in theirs.stdout + theirs.stderr
    (tmp_path / "build.py").write_text(translate_text(dockerfile, context_dir=tmp_path))
    ours = imagedsl_on(
        docker_engine, "build", "--backend", "oci", "--output", f"oci:{tmp_path / 'out'}",
        "build.py", cwd=tmp_path, store=tmp_path / "store",
    )  # fmt: skip
    assert ours.returncode == 2, ours.stderr
    assert message in ours.stderr


def test_a_label_key_with_blanks_and_quotes_is_kept_as_buildkit_keeps_it(
    tmp_path: Path, docker_engine: DockerEngine, tags: list[str]
) -> None:
    """``LABEL "com.example.my key"=v``: BuildKit keeps the key with its blank (and a quote
    escaped in one); the import refused both."""
    dockerfile = 'FROM scratch AS app\nLABEL "com.example.my key"="v" "q\\"k"=w plain=p\n'
    configs = _three_ways(docker_engine, tmp_path, dockerfile, ["app"], tags)
    engine, docker_backend, oci_backend = configs["app"]
    assert engine["Labels"] == {"com.example.my key": "v", 'q"k': "w", "plain": "p"}
    assert docker_backend == engine
    assert oci_backend == engine


def test_a_chown_naming_only_a_group_is_root_and_that_group(
    tmp_path: Path, docker_engine: DockerEngine, busybox_image: str, tags: list[str]
) -> None:
    """``COPY --chown=:grp`` gives BuildKit's root user and the group; the build.py the
    import wrote did not load (the DSL asked for a user)."""
    dockerfile = (
        f"FROM {busybox_image} AS app\n"
        'RUN echo "grp:x:77:" > /etc/group && echo "root:x:0:0::/:/bin/sh" > /etc/passwd\n'
        "COPY --chown=:5 a /a\nCOPY --chown=:grp a /b\n"
        'RUN stat -c "%u:%g %n" /a /b > /st\n'
    )
    (tmp_path / "a").write_text("a\n")
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / "build.py").write_text(translate_text(dockerfile, context_dir=tmp_path))
    theirs, ours = (f"imagedsl-test/chown-{kind}:{uuid.uuid4().hex[:12]}" for kind in "ab")
    tags.extend([theirs, ours])
    docker_engine.run("build", "-q", "-t", theirs, str(tmp_path))
    done = imagedsl_on(
        docker_engine, "build", "--backend", "oci", "--output", f"docker:{ours}", "build.py",
        cwd=tmp_path, store=tmp_path / "store",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = [docker_engine.run("run", "--rm", tag, "cat", "/st").stdout for tag in (theirs, ours)]
    assert seen[0] == "0:5 /a\n0:77 /b\n"
    assert seen[1] == seen[0]


def test_the_imported_build_py_is_left_out_of_its_context(tmp_path: Path) -> None:
    """The build.py written beside the Dockerfile was in the context it imports: each
    re-import after a Dockerfile edit (a LABEL) rebuilt ``COPY . /app`` and what follows,
    where ``docker build`` (whose .dockerignore often names the Dockerfile) reused it."""
    from imagedsl.importer import import_dockerfile

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.txt").write_text("app\n")
    (ctx / ".dockerignore").write_text("*.log\nDockerfile\n")
    dockerfile = ctx / "Dockerfile"
    dockerfile.write_text("FROM scratch\nCOPY . /app\nLABEL v=1\n")
    build_py = ctx / "build.py"
    build_py.write_text(import_dockerfile(dockerfile, build_py))
    assert 'ignore=["*.log", "Dockerfile", "build.py"]' in build_py.read_text()
    store, out = tmp_path / "store", tmp_path / "out"
    done = imagedsl("build", "--backend", "oci", "--output", f"oci:{out}", "build.py",
                    cwd=ctx, store=store)  # fmt: skip
    assert done.returncode == 0, done.stderr
    dockerfile.write_text("FROM scratch\nCOPY . /app\nLABEL v=2\n")
    build_py.write_text(import_dockerfile(dockerfile, build_py))
    planned = imagedsl("plan", "build.py", cwd=ctx, store=store)
    assert planned.returncode == 0, planned.stderr
    copy_row = next(line for line in planned.stdout.splitlines() if "COPY . /app" in line)
    assert " hit " in copy_row, planned.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert '"build.py"' not in import_dockerfile(dockerfile, elsewhere / "build.py")
    assert '"build.py"' in import_dockerfile(dockerfile)  # by default, beside the Dockerfile


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("WORKDIR /tmp/..\nWORKDIR /w/.\nWORKDIR sub/..\n", id="workdir-dots"),
        pytest.param("ENV a=2 d=$a a=3\nLABEL l=1 m=2 l=3\n", id="a-name-twice"),
        pytest.param('ENTRYPOINT [""]\nCMD ["x", ""]\n', id="empty-exec-arguments"),
        pytest.param('SHELL ["/bin/sh", "-c", ""]\nHEALTHCHECK CMD ["t", ""]\n', id="empty-args"),
    ],
)
def test_forms_buildkit_accepts_build_the_same_config_three_ways(
    tmp_path: Path, docker_engine: DockerEngine, tags: list[str], body: str
) -> None:
    """Forms the second syntax sweep found: a WORKDIR ending in ``.`` or ``..`` failed the
    OCI backend ("not a clean relative path"); a name given twice in one ENV or LABEL, and an
    empty exec-form argument (``ENTRYPOINT [""]`` clears an entrypoint), were refused."""
    configs = _three_ways(docker_engine, tmp_path, f"FROM scratch AS app\n{body}", ["app"], tags)
    engine, docker_backend, oci_backend = configs["app"]
    assert docker_backend == engine
    assert oci_backend == engine


def test_chmod_forms_buildkit_reads_in_octal_are_imported() -> None:
    """``--chmod=7`` and ``--chmod=00755`` are octal numbers to BuildKit; the import refused
    them (it took three or four digits only)."""
    text = translate_text("FROM scratch\nCOPY --chmod=7 a /a\nCOPY --chmod=00755 a /b\n")
    assert "chmod=0o007" in text
    assert "chmod=0o755" in text

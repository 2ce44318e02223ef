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
from tests.support.cli import imagedsl_on
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

"""Mapping BuildKit's vertices to plan steps by their names, and reading its plain progress."""

from __future__ import annotations

import pytest

import imagedsl as dsl
from imagedsl import api
from imagedsl.backends.dockerfile._progress import CACHED, DONE, ERROR, ProgressParser
from imagedsl.backends.dockerfile._vertices import (
    ExpectedVertex,
    PrintedVertex,
    VertexMap,
    align,
    text_pattern,
)
from imagedsl.backends.dockerfile.lowering import lower_to_dockerfile

BUSYBOX = "imagedsl-test/busybox:latest"


@pytest.mark.parametrize(
    ("written", "printed"),
    [
        pytest.param("echo $V fidexp", "echo 1 fidexp", id="variable-expanded"),
        pytest.param("echo ${UNKNOWN} x", "echo ${UNKNOWN} x", id="unknown-kept"),
        pytest.param("echo \\$HOME", "echo $HOME", id="escaped-dollar"),
        pytest.param("echo x$V$E-y", "echo x12-y", id="glued-to-letters"),
        pytest.param('["f.txt", "/with space/"]', "[f.txt, /with space/]", id="json-copy"),
        pytest.param("echo $PATH", "echo /usr/local/sbin:/usr/bin", id="base-variable"),
        pytest.param("echo a $EMPTY b", "echo a  b", id="empty-value"),
        pytest.param("echo   spaced    out", "echo   spaced    out", id="spacing-kept"),
    ],
)
def test_text_pattern_matches_what_buildkit_prints(written: str, printed: str) -> None:
    """Variables expand to anything, punctuation and quoting are not compared."""
    assert text_pattern(written).match(printed)


@pytest.mark.parametrize(
    ("written", "printed"),
    [
        pytest.param("echo 1", "echo 12", id="longer-number"),
        pytest.param("make test", "make build", id="other-word"),
        pytest.param("echo $V x", "echo 1 y", id="literal-after-variable"),
    ],
)
def test_text_pattern_tells_instructions_apart(written: str, printed: str) -> None:
    """Letters and digits written in the instruction must be there as written."""
    assert not text_pattern(written).match(printed)


def expected(*lines: str) -> list[ExpectedVertex]:
    """Instructions of one stage, numbered as plan steps from 0."""
    out = []
    for index, line in enumerate(lines):
        keyword, _, text = line.partition(" ")
        out.append(ExpectedVertex(step=index, keyword=keyword, text=text))
    return out


def printed(*names: tuple[int, str]) -> list[PrintedVertex]:
    """Vertices as BuildKit printed them: (K, instruction), numbered from 10."""
    return [PrintedVertex(10 + i, k, text) for i, (k, text) in enumerate(names)]


def test_a_workdir_that_makes_no_vertex_shifts_nothing() -> None:
    """``WORKDIR /`` makes no vertex, so K of every later vertex is one less than its place."""
    stage = expected(
        "FROM busybox AS base",
        "RUN echo -n x",
        "WORKDIR /",
        "RUN make",
        "WORKDIR /app",
        "COPY a/ .",
    )
    vertices = printed(
        (1, "FROM docker.io/library/busybox"),
        (2, "RUN echo -n x"),
        (3, "RUN make"),
        (4, "WORKDIR /app"),
        (5, "COPY a/ ."),
    )
    assert align(stage, vertices) == {10: 0, 11: 1, 12: 3, 13: 4, 14: 5}


def test_vertices_printed_out_of_order_or_missing_still_map() -> None:
    """A failed build names only some vertices, in any order; each maps to its step."""
    stage = expected("FROM b AS s", "RUN make", "RUN make", "COPY x/ /x", "RUN make test")
    vertices = printed((5, "RUN make test"), (3, "RUN make"))
    assert align(stage, vertices) == {10: 4, 11: 2}


def test_a_vertex_with_an_unmatched_text_maps_only_where_k_agrees() -> None:
    """Keyword alone is trusted only when K names the same place."""
    stage = expected("FROM b AS s", "RUN first", "RUN second")
    assert align(stage, printed((2, "RUN something else"))) == {10: 1}
    assert align(stage, printed((4, "RUN something else"))) == {}
    assert align(stage, printed((2, "COPY first"))) == {}


def test_vertex_map_reads_a_lowered_dockerfile() -> None:
    """Stages of a lowered Dockerfile are aligned one by one, by the stage in the label."""
    base = dsl.image(BUSYBOX).run("echo one").workdir("/").arg("V", "1").run("echo $V")
    app = base.workdir("/app").run("echo app")
    plan = api.plan({"base": base, "app": app}, "app")
    lowered = lower_to_dockerfile(plan)
    mapping = VertexMap(lowered.expected_vertices, labelled=True)
    mapping.add(4, "base", 1, f"FROM docker.io/{BUSYBOX}")
    mapping.add(7, "app", 2, "RUN echo app")
    mapping.add(5, "base", 2, "RUN echo one")
    mapping.add(6, "base", 3, "RUN echo 1")
    mapping.add(9, "app", 1, "WORKDIR /app")
    steps = {number: plan.steps[index].instruction for number, index in mapping.steps().items()}
    assert steps == {
        4: f"FROM {BUSYBOX}",
        5: "RUN echo one",
        6: "RUN echo $V",
        9: "WORKDIR /app",
        7: "RUN echo app",
    }


def test_one_stage_dockerfile_labels_have_no_stage() -> None:
    """Without stage names in the labels, every vertex belongs to the only stage."""
    stage = dsl.image(BUSYBOX).run("echo one").run("echo two")
    plan = api.plan(stage, "s")
    lowered = lower_to_dockerfile(plan)
    mapping = VertexMap(lowered.expected_vertices, labelled=len(lowered.expected_vertices) > 1)
    mapping.add(5, None, 3, "RUN echo two")
    assert mapping.step_of(5) == 2


def test_progress_parser_splits_a_status_glued_to_output() -> None:
    """``RUN printf x`` leaves no newline: BuildKit prints ``x#5 DONE 0.2s`` on one line."""
    parser = ProgressParser()
    for line in (
        "#5 [base 2/7] RUN echo -n x",
        "#5 0.192 x#5 DONE 0.2s",
        "#6 [base 3/7] RUN printf y; exit 1",
        "#6 0.101 y#6 ERROR: executor failed running [/bin/sh -c printf y; exit 1]: exit code: 1",
        "#7 [base 4/7] RUN echo '#7 DONE 1.0s'",
        "#7 0.100 #7 DONE 1.0s",
        "#7 DONE 0.3s",
    ):
        parser.feed(line)
    assert parser.vertices[5].status == DONE
    assert parser.vertices[5].output == ["x"]
    assert parser.vertices[6].status == ERROR
    assert parser.vertices[6].output == ["y"]
    assert (
        parser.vertices[6].error
        == "executor failed running [/bin/sh -c printf y; exit 1]: exit code: 1"
    )
    assert parser.vertices[7].status == DONE


def test_progress_parser_reads_padded_labels() -> None:
    """Stages with ten or more vertices pad K: ``[base  7/12]``."""
    parser = ProgressParser()
    parser.feed("#10 [base  7/12] RUN echo 7")
    parser.feed("#10 CACHED")
    parser.feed("#11 [ 3/10] COPY a /a")
    vertex = parser.vertices[10]
    assert (vertex.stage, vertex.number_in_stage, vertex.instruction) == ("base", 7, "RUN echo 7")
    assert vertex.label == "[base 7/12]"
    assert vertex.status == CACHED
    one_stage = parser.vertices[11]
    assert (one_stage.stage, one_stage.number_in_stage) == (None, 3)

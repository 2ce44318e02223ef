"""The build graph: shared prefixes collapse, unused stages are pruned, cycles are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl import api
from imagedsl.loader import load_buildfile
from imagedsl.store import Store, StoreArea

RESOURCES = Path(__file__).parent / "resources"


@pytest.fixture(name="project")
def fixture_project() -> api.BuildFile:
    """The multi-target sample build file."""
    return load_buildfile(RESOURCES / "project" / "build.py")


def test_targets_default_to_the_last_stage(project: api.BuildFile) -> None:
    """Without dsl.targets, every module-level stage is a target, the last one the default."""
    assert project.default_target == "test"
    assert set(project.targets) == {"base", "deps", "builder", "app", "test"}


def test_shared_prefix_is_one_node_per_step(project: api.BuildFile) -> None:
    """Steps that app and test share have the same keys; each plan holds them once."""
    app = project.plan("app")
    test = project.plan("test")
    app_keys = [s.key for s in app.steps]
    assert len(app_keys) == len(set(app_keys))
    shared = [s.key for s in app.steps if s.stage in ("base", "deps")]
    assert shared == [s.key for s in test.steps if s.stage in ("base", "deps")]
    assert len(shared) == 5


def test_stages_a_target_does_not_need_are_pruned(project: api.BuildFile) -> None:
    """test does not copy from builder, so builder's steps are absent from its plan."""
    assert "builder" in {s.stage for s in project.plan("app").steps}
    assert "builder" not in {s.stage for s in project.plan("test").steps}


def test_steps_are_labelled_by_the_shortest_named_stage(project: api.BuildFile) -> None:
    """A step belongs to the smallest named stage that contains it, with its position."""
    labels = [(s.stage, s.index) for s in project.plan("app").steps]
    assert labels[:3] == [("base", 0), ("base", 1), ("base", 2)]
    assert ("deps", 4) in labels
    assert ("app", 5) in labels


def test_waves_let_independent_stages_run_together(project: api.BuildFile) -> None:
    """builder and base start in wave 0; the COPY --from waits for builder's RUN."""
    plan = project.plan("app")
    by_label = {(s.stage, s.index): s for s in plan.steps}
    assert by_label["builder", 0].wave == by_label["base", 0].wave == 0
    copy_from = next(s for s in plan.steps if s.instruction.startswith("COPY --from=builder"))
    assert copy_from.wave > by_label["builder", 3].wave
    assert copy_from.wave > by_label["app", 5].wave


def test_topological_order(project: api.BuildFile) -> None:
    """Every step comes after everything it depends on."""
    plan = project.plan("app")
    for i, step in enumerate(plan.steps):
        assert all(dep < i for dep in step.node.deps)


def test_cycle_is_an_error_carrying_the_cycle() -> None:
    """Stages that copy from each other are refused with the stages in the loop."""
    build = load_buildfile(RESOURCES / "project" / "build_cycle.py")
    with pytest.raises(dsl.CycleError) as caught:
        build.plan("a")
    assert len(caught.value.cycle) == 2
    assert caught.value.location is not None


def test_reference_cycle_between_names() -> None:
    """dsl.targets naming stages that reference each other by name is a cycle too."""
    with pytest.raises(dsl.CycleError) as caught:
        api.plan({"a": dsl.stage("b"), "b": dsl.stage("a")}, "a")
    assert caught.value.cycle == ("a", "b")


def test_unknown_stage_reference() -> None:
    """A reference to a stage that does not exist names it and lists the stages."""
    build = load_buildfile(RESOURCES / "project" / "build_unknown_stage.py")
    with pytest.raises(dsl.UnknownStageError) as caught:
        build.plan()
    assert caught.value.name == "nope"
    assert caught.value.available == ("app",)


def test_a_stage_named_in_another_case_or_with_dashes_is_found(tmp_path: Path) -> None:
    """BuildKit compares stage names without case, and ``imagedsl import`` names the stage
    ``build-x`` ``build_x``: ``dsl.from_stage("Builder")`` and ``"build-${V}"`` find them;
    a name nothing is alike still fails, naming it."""
    (tmp_path / "build.py").write_text(
        "import imagedsl as dsl\n"
        "V = dsl.arg('V', 'x')\n"
        "builder = dsl.scratch().env(WHO='builder')\n"
        "build_x = dsl.scratch().env(WHO='build-x')\n"
        "by_case = dsl.from_stage('Builder').env(THEN='1')\n"
        "by_dash = dsl.from_stage('build-${V}').env(THEN='2')\n"
        "lost = dsl.from_stage('Build-Y').env(THEN='3')\n"
    )
    build = load_buildfile(tmp_path / "build.py")
    for target, who in (("by_case", "builder"), ("by_dash", "build-x")):
        env = dict(build.plan(target).steps[-1].node.state.env)
        assert env["WHO"] == who
    with pytest.raises(dsl.UnknownStageError) as caught:
        build.plan("lost")
    assert caught.value.name == "Build-Y"


def test_networkx_view_collapses_equal_keys(tmp_path: Path) -> None:
    """The key-identified graph has one node per distinct key."""
    (tmp_path / "f").write_text("x")
    src = dsl.context(tmp_path)
    one = dsl.image("alpine:3.20").env(A="1").copy(src.file("f"), "/f")
    two = dsl.image("alpine:3.20").env(A="2").copy(src.file("f"), "/f")
    final = dsl.scratch().copy(one.path("/f"), "/one").copy(two.path("/f"), "/two")
    plan = api.plan(final)
    graph = plan.graph.to_networkx()
    keys = {s.key for s in plan.steps}
    assert graph.number_of_nodes() == len(keys) < len(plan.steps)


def test_analysis_is_memoised_by_shape(tmp_path: Path) -> None:
    """A second plan of the same shape reads the analysis from the store."""
    store = Store(tmp_path / "store")
    stage = dsl.image("alpine:3.20").run("a").run("b")
    first = api.plan(stage, store=store)
    memo = list(store.area(StoreArea.ANALYSES).iterdir())
    assert len(memo) == 1
    second = api.plan(dsl.image("alpine:3.21").run("c").run("d"), store=store)
    assert [s.wave for s in first.steps] == [s.wave for s in second.steps]
    assert len(list(store.area(StoreArea.ANALYSES).iterdir())) == 1


def test_damaged_analysis_memo_is_recomputed(tmp_path: Path) -> None:
    """A damaged memo is ignored and replaced, never trusted."""
    store = Store(tmp_path / "store")
    stage = dsl.image("alpine:3.20").run("a")
    expected = [s.wave for s in api.plan(stage, store=store).steps]
    (memo,) = store.area(StoreArea.ANALYSES).iterdir()
    memo.write_text('{"v": 1, "order": [0, 0], "waves": [5]}')
    assert [s.wave for s in api.plan(stage, store=store).steps] == expected


def test_layered_copy_makes_one_node_per_layer(tmp_path: Path) -> None:
    """layers= splits a COPY into parts with independent keys, and later steps see all parts."""
    root = tmp_path / "p"
    (root / "src").mkdir(parents=True)
    (root / "requirements.txt").write_text("x\n")
    (root / "src" / "a.py").write_text("a\n")
    src = dsl.context(root)
    stage = dsl.image("alpine:3.20").copy(src, "/app", layers=[["requirements.txt"]]).run("x")
    plan = api.plan(stage)
    parts = [s for s in plan.steps if s.node.part is not None]
    assert [p.node.part for p in parts] == ["group-0", "rest"]
    assert parts[0].node.deps == parts[1].node.deps == (0,)
    before = [s.key for s in plan.steps]
    (root / "src" / "a.py").write_text("b\n")
    after = [s.key for s in api.plan(stage).steps]
    assert before[1] == after[1]  # the requirements layer keeps its key
    assert before[2] != after[2]
    assert before[3] != after[3]  # the RUN sees the new files


@pytest.mark.parametrize(
    ("dest", "placed"),
    [
        pytest.param("/app/", "f.txt", id="trailing-slash"),
        pytest.param(".", "f.txt", id="dot"),
        pytest.param("sub/..", "f.txt", id="dot-dot"),
        pytest.param("/app/g.txt", ".", id="file-name"),
    ],
)
def test_single_file_destinations(tmp_path: Path, dest: str, placed: str) -> None:
    """A file copied to `.`, `..` or `dir/` lands inside it; to any other name, as that name."""
    (tmp_path / "f.txt").write_text("x")
    stage = dsl.scratch().workdir("/w").copy(dsl.context(tmp_path).file("f.txt"), dest)
    (tree,) = api.plan(stage).steps[-1].node.trees
    assert [row[0] for row in tree.rows] == [placed]

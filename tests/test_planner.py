"""Plans: hits come from the ledger, and every miss says exactly why it misses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import imagedsl as dsl
from imagedsl import api
from imagedsl.api import plan
from imagedsl.planner import PlanStatus, record_copy_output, record_step
from imagedsl.store import Store, StoreArea
from imagedsl.treehash import Tree

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path) -> Store:
    """An empty store."""
    return Store(tmp_path / "store")


@pytest.fixture(name="src_dir")
def fixture_src_dir(tmp_path: Path) -> Path:
    """A small source tree."""
    root = tmp_path / "src"
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "app" / "util.py").write_text("X = 1\n")
    (root / "requirements.txt").write_text("flask\n")
    return root


def build_all(plan: api.Plan, store: Store) -> None:
    """Record every step, as a backend does after a successful build."""
    for step in plan.steps:
        record_step(store, step)


def statuses(plan: api.Plan) -> list[str]:
    """The status column of a plan."""
    return [s.status.value for s in plan.steps]


def make_app(src_dir: Path, *, env: str = "1", ref: str = f"python:3.12@{DIGEST_A}") -> dsl.Stage:
    """A typical stage: base, ENV, WORKDIR, deps COPY + RUN, app COPY, CMD."""
    src = dsl.context(src_dir)
    return (
        dsl.image(ref)
        .env(MODE=env)
        .workdir("/app")
        .copy(src.file("requirements.txt"), "/app/")
        .run("pip install -r requirements.txt")
        .copy(src.dir("app"), "/app/app")
        .cmd("python", "-m", "app")
    )


def test_everything_misses_on_an_empty_store(src_dir: Path, store: Store) -> None:
    """With nothing recorded, every layer step misses and config steps are config."""
    plan = api.plan(make_app(src_dir), store=store)
    assert statuses(plan) == ["miss", "config", "miss", "miss", "miss", "miss", "config"]
    assert plan.steps[2].reasons == ("no earlier build of this step",)
    assert plan.summary == {"hit": 0, "miss": 5, "maybe": 0, "config": 2}


def test_recorded_steps_are_hits(src_dir: Path, store: Store) -> None:
    """After recording, an unchanged plan is all hits (and config)."""
    build_all(api.plan(make_app(src_dir), store=store), store)
    plan = api.plan(make_app(src_dir), store=store)
    assert statuses(plan) == ["hit", "config", "hit", "hit", "hit", "hit", "config"]
    assert all(not s.reasons for s in plan.steps)


EDITS: list[object] = [
    pytest.param(
        lambda d: (d / "app" / "main.py").write_text("print('ho')\n"),
        {},
        [("hit", ()), ("hit", ()), ("hit", ()), ("miss", ("app/main.py changed",))],
        id="edit-source",
    ),
    pytest.param(
        lambda d: (d / "app" / "new.py").write_text("new\n"),
        {},
        [("hit", ()), ("hit", ()), ("hit", ()), ("miss", ("added app/new.py",))],
        id="add-file",
    ),
    pytest.param(
        lambda d: (d / "app" / "util.py").unlink(),
        {},
        [("hit", ()), ("hit", ()), ("hit", ()), ("miss", ("removed app/util.py",))],
        id="remove-file",
    ),
    pytest.param(
        lambda d: (d / "requirements.txt").write_text("django\n"),
        {},
        [
            ("hit", ()),
            ("miss", ("requirements.txt changed",)),
            ("miss", ("parent changed: image[3] COPY requirements.txt /app/ (miss)",)),
            ("miss", ("parent changed: image[4] RUN pip install -r requirements.txt (miss)",)),
        ],
        id="edit-requirements",
    ),
    pytest.param(
        lambda _: None,
        {"env": "2"},
        [
            ("hit", ()),
            ("hit", ()),
            ("miss", ("ENV MODE '1' -> '2'",)),
            ("miss", ("parent changed: image[4] RUN pip install -r requirements.txt (miss)",)),
        ],
        id="change-env",
    ),
    pytest.param(
        lambda _: None,
        {"ref": f"python:3.12@{DIGEST_B}"},
        [
            ("miss", ("parent changed: image[0] FROM python:3.12@" + DIGEST_B + " (miss)",)),
            ("miss", ("parent changed: image[2] WORKDIR /app (miss)",)),
            ("miss", ("parent changed: image[3] COPY requirements.txt /app/ (miss)",)),
            ("miss", ("parent changed: image[4] RUN pip install -r requirements.txt (miss)",)),
        ],
        id="change-base-digest",
    ),
]


@pytest.mark.parametrize(("edit", "options", "expected"), EDITS)
def test_miss_reasons_after_an_edit(
    src_dir: Path,
    store: Store,
    edit: Callable[[Path], object],
    options: dict[str, str],
    expected: list[tuple[str, tuple[str, ...]]],
) -> None:
    """Each kind of edit gives the statuses and reasons a person would expect."""
    build_all(api.plan(make_app(src_dir), store=store), store)
    edit(src_dir)
    plan = api.plan(make_app(src_dir, **options), store=store)
    layer_steps = [
        (s.status.value, s.reasons) for s in plan.steps if s.kind in ("workdir", "copy", "run")
    ]
    assert layer_steps == expected


def test_file_reasons_are_memoised_by_the_two_trees(
    src_dir: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files a miss names come from the built tree's manifest and the new tree's rows
    once; a plan run again before the next build reads them from the store (no rows are
    built), and another edit (another tree) is diffed afresh."""
    build_all(api.plan(make_app(src_dir), store=store), store)
    (src_dir / "app" / "main.py").write_text("print('ho')\n")
    first = api.plan(make_app(src_dir), store=store).steps[-2].reasons
    assert first == ("app/main.py changed",)

    def no_rows(_: Tree) -> dict[str, list[object]]:
        raise AssertionError("the new tree's rows were read")

    with monkeypatch.context() as patched:
        patched.setattr(Tree, "manifest", no_rows)
        assert api.plan(make_app(src_dir), store=store).steps[-2].reasons == first
        (src_dir / "app" / "new.py").write_text("new\n")
        with pytest.raises(AssertionError, match="rows were read"):
            api.plan(make_app(src_dir), store=store)
    again = api.plan(make_app(src_dir), store=store).steps[-2].reasons
    assert again == ("app/main.py changed", "added app/new.py")


@pytest.mark.parametrize("layers", [None, "auto"])
def test_a_content_edit_is_diffed_without_the_new_trees_rows(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch, layers: str | None
) -> None:
    """When only contents changed since the build (the built tree's shape is the new one's),
    the files a miss names come from the built manifest and the changed files' digests: the
    new tree's rows (every file of a large copy placed and sorted into parts) are not built.
    An edit that changes the shape (a mode, a file added) reads the rows, as before."""
    root = tmp_path / "ctx"
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(4):
            (root / f"d{d}" / f"f{f}.py").write_text(f"v = {d}{f}\n")

    def app() -> dsl.Stage:
        source = dsl.context(str(root))
        copied = dsl.scratch().copy(source, "/app", layers=layers) if layers else None
        return copied or dsl.scratch().copy(source, "/app")

    build_all(api.plan(app(), store=store), store)
    (root / "d0" / "f1.py").write_text("v = 'edited'\n")
    (root / "d2" / "f3.py").write_text("v = 'also'\n")

    def no_rows(_: Tree) -> dict[str, list[object]]:
        raise AssertionError("the new tree's rows were read")

    with monkeypatch.context() as patched:
        patched.setattr(Tree, "manifest", no_rows)
        missed = [s.reasons for s in api.plan(app(), store=store).steps if s.status.value == "miss"]
    assert sorted(r for reasons in missed for r in reasons) == [
        "d0/f1.py changed",
        "d2/f3.py changed",
    ]
    (root / "d1" / "f0.py").chmod(0o755)
    with monkeypatch.context() as patched:
        patched.setattr(Tree, "manifest", no_rows)
        with pytest.raises(AssertionError, match="rows were read"):
            api.plan(app(), store=store)
    missed = [s.reasons for s in api.plan(app(), store=store).steps if s.status.value == "miss"]
    assert sorted(r for reasons in missed for r in reasons) == [
        "d0/f1.py changed",
        "d1/f0.py mode changed: 644 -> 755",
        "d2/f3.py changed",
    ]


def test_base_digest_change_reason(src_dir: Path, store: Store) -> None:
    """A moved base digest is said once on the FROM step: what the name holds now."""
    build_all(api.plan(make_app(src_dir), store=store), store)
    plan = api.plan(make_app(src_dir, ref=f"python:3.12@{DIGEST_B}"), store=store)
    assert plan.steps[0].reasons == (f"base image changed: python:3.12 is now {DIGEST_B}",)


def test_build_arg_override_reason(store: Store) -> None:
    """A --build-arg override reaches RUN's key and is named ARG old -> new."""
    stage = dsl.image(f"alpine@{DIGEST_A}").arg("VERSION", default="1").run("echo $VERSION")
    build_all(api.plan(stage, store=store), store)
    plan = api.plan(stage, store=store, build_args={"VERSION": "2"})
    assert plan.steps[-1].status is PlanStatus.MISS
    assert plan.steps[-1].reasons == ("ARG VERSION '1' -> '2'",)
    assert (
        api.plan(stage, store=store, build_args={"VERSION": "1"}).steps[-1].status is PlanStatus.HIT
    )


def test_command_change_reason(store: Store) -> None:
    """A changed RUN names the command, old -> new."""
    build_all(api.plan(dsl.image(f"alpine@{DIGEST_A}").run("make"), store=store), store)
    plan = api.plan(dsl.image(f"alpine@{DIGEST_A}").run("make all"), store=store)
    assert plan.steps[-1].reasons == (
        'command changed: ["/bin/sh", "-c", "make"] -> ["/bin/sh", "-c", "make all"]',
    )


def test_copy_from_a_rebuilt_stage_is_maybe_then_cut_off(src_dir: Path, store: Store) -> None:
    """A COPY --from whose source misses is `maybe`; identical output keeps downstream hits."""
    src = dsl.context(src_dir)

    def make(command: str) -> dsl.Stage:
        builder = dsl.image(f"golang@{DIGEST_A}").copy(src.dir("app"), "/src").run(command)
        return (
            dsl.scratch()
            .copy(builder.path("/out/tool"), "/tool")
            .env(A="1")
            .copy(src.file("requirements.txt"), "/r.txt")
        )

    first = api.plan(make("go build -o /out/tool"), store=store)
    build_all(first, store)
    copy_step = next(s for s in first.steps if s.instruction.startswith("COPY --from"))
    tree = (
        api.plan(dsl.scratch().copy(src.file("requirements.txt"), "/tool"), store=None)
        .steps[1]
        .node.trees[0]
    )
    record_copy_output(store, copy_step, tree)
    # The same build again: everything hits, the COPY --from by its recorded content.
    again = api.plan(make("go build -o /out/tool"), store=store)
    assert "maybe" not in statuses(again)
    build_all(again, store)
    # Rebuild the builder with another command: the copy is maybe, and so is what follows.
    changed = api.plan(make("go build -trimpath -o /out/tool"), store=store)
    rows = {s.instruction: s for s in changed.steps}
    assert rows["RUN go build -trimpath -o /out/tool"].status is PlanStatus.MISS
    copy_row = rows["COPY --from=image-stage-1 /out/tool /tool"]
    assert copy_row.status is PlanStatus.MAYBE
    assert copy_row.node.provisional
    assert rows["COPY requirements.txt /r.txt"].status is PlanStatus.MAYBE
    # The backend builds it, finds the same bytes, records them: downstream keys come back.
    changed_copy = next(s for s in changed.steps if s.status is PlanStatus.MAYBE)
    record_step(store, changed.steps[changed_copy.node.sources[0]])
    for step in changed.steps:
        if step.node.index in changed_copy.node.deps or step.kind == "from":
            record_step(store, step)
    record_copy_output(store, changed_copy, tree)
    after = api.plan(make("go build -trimpath -o /out/tool"), store=store)
    last = after.steps[-1]
    assert last.key == again.steps[-1].key
    assert last.status is PlanStatus.HIT


def test_unpinned_base_is_flagged(store: Store) -> None:
    """A tag-only base gets a note: its key cannot see the image change under the tag."""
    plan = api.plan(dsl.image("alpine:3.20"), store=store)
    assert plan.steps[0].notes
    assert not api.plan(dsl.image(f"alpine@{DIGEST_A}"), store=store).steps[0].notes


def test_json_follows_the_documented_schema(src_dir: Path, store: Store) -> None:
    """--json output has the versioned schema's fields and types."""
    data = json.loads(json.dumps(api.plan(make_app(src_dir), store=store).to_json()))
    assert data["schema"] == 1
    assert isinstance(data["buildfile"], str)
    assert data["target"] == "image"
    assert set(data["summary"]) >= {"hit", "miss", "maybe"}
    for step in data["steps"]:
        assert isinstance(step["stage"], str)
        assert isinstance(step["index"], int)
        assert isinstance(step["instruction"], str)
        assert isinstance(step["kind"], str)
        assert len(step["key"]) == 64
        assert int(step["key"], 16) >= 0
        assert step["status"] in ("hit", "miss", "maybe", "config")
        assert all(isinstance(r, str) for r in step["reasons"])
        assert isinstance(step["wave"], int)


def test_unknown_target_lists_the_available_ones() -> None:
    """Planning a name that is not a target lists the ones that are."""
    with pytest.raises(dsl.UnknownTargetError) as caught:
        api.plan({"app": dsl.scratch(), "test": dsl.scratch()}, "nope")
    assert caught.value.available == ("app", "test")


def test_missing_context_file_names_the_step_line(tmp_path: Path) -> None:
    """A COPY of a file that does not exist fails at plan time with the COPY's line."""
    stage = dsl.scratch().copy(dsl.context(tmp_path).file("missing.txt"), "/m")
    with pytest.raises(dsl.ContextError) as caught:
        api.plan(stage)
    assert caught.value.missing == ("missing.txt",)
    assert caught.value.location is not None
    assert caught.value.location.file == __file__


def test_secret_values_never_reach_a_plan(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan of a RUN with a secret holds the id, never the value from the environment."""
    monkeypatch.setenv("TOKEN", "s3cr3t-value")
    stage = dsl.image(f"alpine@{DIGEST_A}").run("use", mounts=[dsl.secret("TOKEN", env="TOKEN")])
    plan = api.plan(stage, store=store)
    record_step(store, plan.steps[-1])
    text = json.dumps(plan.to_json()) + plan.to_dot()
    stored = "".join(p.read_text() for p in store.area(StoreArea.LEDGER).rglob("*.json"))
    assert "s3cr3t-value" not in text + stored


def test_record_step_keeps_how_long_the_step_took(store: Store) -> None:
    """``seconds`` is kept in the record's outputs, and a later record without it keeps it."""
    (step,) = [s for s in plan(dsl.image("alpine").run("make")).steps if s.kind == "run"]
    record_step(store, step, {"layer": "sha256:" + "0" * 64}, seconds=12.3456)
    record_step(store, step, {"layer": "sha256:" + "0" * 64})
    record = store.get(step.key)
    assert record is not None
    assert record.outputs["seconds"] == 12.346


def test_deep_chains_plan(store: Store) -> None:
    """A 10,000-step chain and a 150-deep chain of COPY --from stages both plan."""
    deep = dsl.scratch()
    for i in range(10_000):
        deep = deep.env(V=str(i))
    assert api.plan(deep, store=store).summary["config"] == 10_000
    cross = dsl.scratch().env(A="0")
    for i in range(150):
        cross = dsl.scratch().copy(cross.path("/"), "/x").env(B=str(i))
    plan = api.plan(cross, store=store)
    assert plan.summary["maybe"] == 150


def test_large_copies_are_split_into_layers_by_default(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COPY of LARGE_COPY bytes or more is split as layers="auto" unless layers="single"."""
    from imagedsl import treehash

    monkeypatch.setattr(treehash, "LARGE_COPY", 4000)
    root = tmp_path / "big"
    for i in range(40):
        (root / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 4}" / f"f{i}.py").write_bytes(bytes([i]) * 200)
    (root / "requirements.txt").write_text("flask\n")
    src = dsl.context(root)
    split = dsl.scratch().copy(src, "/app")
    parts = [s.node.part for s in api.plan(split, store=store).steps[1:]]
    assert parts[0] == "manifests"
    assert len(parts) > 1
    again = api.plan(split, store=store)  # warm: the parts come from the stat cache
    assert [s.key for s in again.steps] == [s.key for s in api.plan(split, store=None).steps]
    single = api.plan(dsl.scratch().copy(src, "/app", layers="single"), store=store)
    assert [s.node.part for s in single.steps] == [None, None]
    small = api.plan(dsl.scratch().copy(src.dir("d0"), "/app"), store=store)
    assert [s.node.part for s in small.steps] == [None, None]


def test_an_exclude_pattern_that_excludes_nothing_keeps_the_key(src_dir: Path) -> None:
    """The copied files decide a COPY's key: a pattern that leaves nothing out changes nothing
    (BuildKit copies the same files), one that leaves a file out changes the key."""
    src = dsl.context(src_dir)

    def copy_key(*exclude: str) -> str:
        stage = dsl.image(f"python:3.12@{DIGEST_A}").copy(src.dir("app"), "/app", exclude=exclude)
        return api.plan(stage, "s").steps[-1].key

    assert copy_key() == copy_key("*.tmp") == copy_key("*.tmp", "*.bak")
    assert copy_key("util.py") != copy_key()


def make_bound(run_tool: str, *, readwrite: bool = False, later: str = "echo later") -> dsl.Stage:
    """A RUN reading another stage through a bind mount, and a step after it."""
    tool = dsl.image(f"alpine@{DIGEST_A}").run(run_tool)
    return (
        dsl.image(f"python:3.12@{DIGEST_A}")
        .run("cat /tool/out", mounts=[dsl.bind(tool.path("/out"), "/tool", readwrite=readwrite)])
        .run(later)
    )


def test_a_bind_mount_of_a_stage_that_is_not_built_is_maybe(store: Store) -> None:
    """BuildKit keys a read-only bind mount by the bytes mounted: when the mounted stage is
    rebuilt, the RUN (and what follows) is reused if they come out the same."""
    build_all(api.plan(make_bound("make"), "s", store=store), store)
    plan = api.plan(make_bound("make --again"), "s", store=store)
    assert statuses(plan) == ["hit", "hit", "miss", "maybe", "maybe"]
    assert "mounts files of" in plan.steps[3].reasons[0]


def test_a_bind_mount_of_an_unbuilt_stage_with_its_own_change_misses(store: Store) -> None:
    """A step whose own inputs changed too is a miss; a writable bind mount is like a
    read-only one (BuildKit keys both by content)."""
    build_all(api.plan(make_bound("make"), "s", store=store), store)
    plan = api.plan(make_bound("make --again", later="echo changed"), "s", store=store)
    assert statuses(plan) == ["hit", "hit", "miss", "maybe", "miss"]
    build_all(api.plan(make_bound("make", readwrite=True), "s", store=store), store)
    plan = api.plan(make_bound("make --again", readwrite=True), "s", store=store)
    assert statuses(plan) == ["hit", "hit", "miss", "maybe", "maybe"]


def test_a_linked_copy_hits_on_a_changed_layer_below_and_what_follows_misses(
    src_dir: Path, store: Store
) -> None:
    """link=True: the COPY's own layer is reused whatever is below it, but the filesystem
    after it is not the one the next step was built on."""
    src = dsl.context(src_dir)

    def linked(below: str) -> dsl.Stage:
        return (
            dsl.image(f"busybox@{DIGEST_A}")
            .run(f"echo {below} > /below")
            .copy(src.dir("app"), "/app", link=True)
            .run("cat /below > /seen")
        )

    build_all(api.plan(linked("one"), "s", store=store), store)
    plan = api.plan(linked("two"), "s", store=store)
    assert statuses(plan) == ["hit", "miss", "hit", "miss"]
    before = api.plan(linked("one"), "s")
    assert plan.steps[2].key == before.steps[2].key
    assert plan.steps[3].key != before.steps[3].key

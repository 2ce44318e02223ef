"""Plans: every step of a target with its key, its status, and why each miss misses.

Statuses: ``hit`` (the ledger has the key and everything below it is a hit), ``miss``,
``maybe`` (the key depends on the output of an upstream miss: a ``COPY --from`` whose source
is rebuilt may produce the same bytes and then stay a hit), and ``config`` (metadata only).

A miss is explained by diffing its preimage with the closest earlier record of the same step
position (fewest differing fields, then most recent): files added, removed or changed (by
path), ENV/ARG old -> new, what a base image's name holds now, the command changed, or
"parent changed" naming the upstream step.
"""

from __future__ import annotations

import contextlib
import enum
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import blake3

from imagedsl import credentials, keys
from imagedsl._epoch import epoch_from_env
from imagedsl.buildstate import ArgScope
from imagedsl.dsl import GlobalArg, Stage, StageRef
from imagedsl.errors import SourceLocation, StepArgumentError, UnknownTargetError
from imagedsl.graph import (
    BaseResolver,
    BuildGraph,
    CopyOutput,
    OutputResolver,
    StepNode,
    build_graph,
    rekey,
    stage_namer,
)
from imagedsl.oci.platform import Platform, canonical_platform
from imagedsl.reporting import Reporter
from imagedsl.steps import Add, Arg, Copy, Env, FromImage, Run, StageNamer, Step, describe
from imagedsl.store import Record, Store, StoreWarning
from imagedsl.treehash import ContextHasher, Tree

if TYPE_CHECKING:
    from imagedsl.oci.reference import ImageReference

PLAN_SCHEMA: Final = 1
#: This machine's platform: the default target and build platform, as BuildKit's.
DEFAULT_PLATFORM: Final = canonical_platform(str(Platform.host()))
_MAX_FILE_REASONS: Final = 10


class PlanStatus(enum.StrEnum):
    """What a backend will do with a step."""

    HIT = "hit"
    MISS = "miss"
    MAYBE = "maybe"
    CONFIG = "config"


@attrs.frozen(kw_only=True)
class PlannedStep:
    """One row of a plan."""

    node: StepNode = attrs.field(repr=False)
    instruction: str
    status: PlanStatus
    reasons: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The step's cache key (provisional when ``status`` is ``maybe``)."""
        return self.node.key

    @property
    def stage(self) -> str:
        """The stage the step belongs to."""
        return self.node.stage

    @property
    def index(self) -> int:
        """The step's position in its stage (0 is the FROM)."""
        return self.node.position

    @property
    def kind(self) -> str:
        """The step's kind: ``from``, ``run``, ``copy``, ``env``, ..."""
        return self.node.kind

    @property
    def wave(self) -> int:
        """Steps of one wave can run in parallel once earlier waves are done."""
        return self.node.wave

    @property
    def location(self) -> SourceLocation | None:
        """The build-file line that made the step."""
        return self.node.location

    @property
    def platform(self) -> str:
        """The platform the step is built for: its stage's (``$BUILDPLATFORM`` for a native
        stage, else the target platform)."""
        return self.node.state.platform

    @property
    def bytes(self) -> int | None:
        """Bytes of context files the step reads, when known before building."""
        if not self.node.trees:
            return None
        return sum(tree.size for tree in self.node.trees)

    def to_json(self) -> dict[str, Any]:
        """This step in the plan JSON schema (see docs/plan-json.md)."""
        location = self.location
        return {
            "stage": self.stage,
            "index": self.index,
            "instruction": self.instruction,
            "kind": self.kind,
            "key": self.key,
            "status": str(self.status),
            "reasons": list(self.reasons),
            "wave": self.wave,
            "provisional": self.node.provisional,
            "notes": list(self.notes),
            "bytes": self.bytes,
            "location": None
            if location is None
            else {"file": location.file, "line": location.line},
            "depends_on": list(self.node.deps),
            "layer": self.node.part,
            "platform": self.platform,
        }


@attrs.frozen(kw_only=True)
class Plan:
    """A target's steps in topological order, with statuses and reasons."""

    buildfile: str
    target: str
    steps: tuple[PlannedStep, ...]
    graph: BuildGraph = attrs.field(repr=False)
    #: The target platforms, when several were planned together (:func:`union_plans`): the
    #: steps are then every platform's, each once by key, and ``graph`` the first platform's.
    platforms: tuple[str, ...] = ()
    #: One plan per platform of ``platforms``, in order (what backends build).
    per_platform: tuple[Plan, ...] = attrs.field(default=(), eq=False, repr=False)

    def platform_plans(self) -> tuple[tuple[str, Plan], ...]:
        """(target platform, its plan) for each platform planned; a plan of one platform is
        its own."""
        if self.per_platform:
            return tuple(zip(self.platforms, self.per_platform, strict=True))
        return ((self.target_platform, self),)

    @property
    def target_platform(self) -> str:
        """The (first) target platform: ``TARGETPLATFORM``."""
        return (
            self.platforms[0]
            if self.platforms
            else self.graph.scope.globals.get("TARGETPLATFORM", DEFAULT_PLATFORM)
        )

    @property
    def summary(self) -> dict[str, int]:
        """How many steps have each status."""
        counts = dict.fromkeys((s.value for s in PlanStatus), 0)
        for step in self.steps:
            counts[step.status.value] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        """The documented, versioned plan schema (``schema: 1``; fields may be added)."""
        return {
            "schema": PLAN_SCHEMA,
            "buildfile": self.buildfile,
            "target": self.target,
            "platforms": list(self.platforms) or [self.target_platform],
            "steps": [step.to_json() for step in self.steps],
            "summary": self.summary,
        }

    def to_dot(self) -> str:
        """The graph in Graphviz DOT, one node per step, coloured by status."""
        colours = {"hit": "palegreen", "miss": "salmon", "maybe": "khaki", "config": "lightgrey"}
        lines = ["digraph plan {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled"];']
        for i, step in enumerate(self.steps):
            label = f"{step.stage}[{step.index}] {step.instruction}\n{step.status} {step.key[:12]}"
            lines.append(
                f"  s{i} [label={json.dumps(label)}, fillcolor={colours[step.status.value]}];"
            )
        for i, step in enumerate(self.steps):
            parent = () if step.node.parent is None else (step.node.parent,)
            for dep in sorted({*step.node.deps, *parent}):
                lines.append(f"  s{dep} -> s{i};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def plan(
    stages: Mapping[str, Stage | StageRef] | Stage,
    target: str | None = None,
    *,
    store: Store | None = None,
    build_args: Mapping[str, str] | None = None,
    global_args: Sequence[GlobalArg] = (),
    platform: str | None = None,
    build_platform: str | None = None,
    reporter: Reporter | None = None,
    resolve_base: BaseResolver | None = None,
    buildfile: str = "<python>",
    project: str = "",
    source_date_epoch: int | None = None,
) -> Plan:
    """Plan ``target`` (a name in ``stages``, or the one stage given) without running anything.

    ``store`` holds the ledger that decides hits (None: everything misses, nothing is
    written). ``project`` scopes miss explanations (the CLI uses the build file's path).
    ``global_args`` are the build file's global ARGs in file order; ``platform`` is the target
    platform and ``build_platform`` the one the build runs on (both default to this machine's,
    as BuildKit's do; ``TARGETPLATFORM`` and ``BUILDPLATFORM`` come from them).
    ``source_date_epoch`` (default ``$SOURCE_DATE_EPOCH``, else 0, as the OCI backend's) is in
    every RUN's environment, so in its key.
    """
    if isinstance(stages, Stage):
        name = target or "image"
        stages = {name: stages}
        target = name
    if target is None:
        raise UnknownTargetError("", list(stages))
    if target not in stages:
        raise UnknownTargetError(target, list(stages))
    reporter = reporter or Reporter()
    target_platform = _platform_option("platform", platform)
    scope = ArgScope.make(
        dict(build_args or {}),
        [(a.name, a.default) for a in global_args],
        target_platform=target_platform,
        build_platform=_platform_option("build_platform", build_platform),
    )
    hasher = ContextHasher(store, reporter)
    graph = build_graph(
        target,
        stages,
        hasher=hasher,
        scope=scope,
        platform=target_platform,
        resolve_output=_output_resolver(store),
        resolve_base=resolve_base or _unpinned,
        memo=store,
        project=project,
        source_date_epoch=epoch_from_env() if source_date_epoch is None else source_date_epoch,
    )
    hasher.save()
    steps = _statuses(graph, store)
    return Plan(buildfile=buildfile, target=target, steps=steps, graph=graph)


def union_plans(plans: Sequence[tuple[str, Plan]]) -> Plan:
    """Several target platforms' plans as one: every step once by key, in the order the
    platforms were given (a step shared by all, such as one of a ``$BUILDPLATFORM`` stage,
    is shown once; a step that differs per platform is shown once per platform). Indices,
    parents, sources and dependencies are renumbered into the union."""
    if not plans:
        raise ValueError("no plans to unite")
    first = plans[0][1]
    if len(plans) == 1:
        return first
    steps: list[PlannedStep] = []
    seen: dict[str, int] = {}
    for _, planned in plans:
        remap: dict[int, int] = {}
        added: dict[str, int] = {}
        for step in planned.steps:
            node = step.node
            if node.key in seen:  # an earlier platform's step: shown once
                remap[node.index] = seen[node.key]
                continue
            index = len(steps)
            remap[node.index] = index
            added.setdefault(node.key, index)
            moved = attrs.evolve(
                node,
                index=index,
                parent=None if node.parent is None else remap[node.parent],
                sources=tuple(remap[i] for i in node.sources),
                deps=tuple(remap[i] for i in node.deps),
            )
            steps.append(attrs.evolve(step, node=moved))
        seen.update(added)
    return Plan(
        buildfile=first.buildfile,
        target=first.target,
        steps=tuple(steps),
        graph=first.graph,
        platforms=tuple(name for name, _ in plans),
        per_platform=tuple(planned for _, planned in plans),
    )


def _platform_option(name: str, text: str | None) -> str:
    """A platform option, canonical as BuildKit normalises it (default: this machine's)."""
    if text is None:
        return DEFAULT_PLATFORM
    try:
        return canonical_platform(text)
    except ValueError as error:
        raise StepArgumentError("plan", name, str(error)) from None


def settle(plan: Plan, store: Store | None) -> Plan:
    """``plan`` again after a backend recorded ``COPY --from`` outputs: the keys that waited
    for them are computed by content (as BuildKit's solver computes content keys once an input
    completes), and statuses follow. Nothing is loaded or hashed again."""
    graph = rekey(plan.graph)
    if graph is plan.graph:
        return plan
    return attrs.evolve(plan, steps=_statuses(graph, store), graph=graph)


def _unpinned(reference: ImageReference, platform: str) -> None:
    """The default base resolver: only digests written in the reference pin a base."""


def _output_resolver(store: Store | None) -> OutputResolver:
    def resolve(structural_key: str) -> CopyOutput | None:
        record = None if store is None else store.get(structural_key)
        if record is None:
            return None
        tree = record.outputs.get("tree")
        return CopyOutput(tree if keys.is_key(tree) else None)

    return resolve


def _statuses(graph: BuildGraph, store: Store | None) -> tuple[PlannedStep, ...]:
    namer = stage_namer(graph.stage_names)
    effective: list[PlanStatus] = []  # status of the filesystem each step leaves
    rows: list[PlannedStep] = []
    for node in graph.nodes:
        instruction = masked_description(node.step, namer)
        if node.part is not None:
            instruction += f"  [layer {node.part}]"
        notes = _notes(node)
        deps = list(node.deps)
        if node.is_config:
            assert node.parent is not None
            effective.append(effective[node.parent])
            rows.append(
                PlannedStep(
                    node=node,
                    instruction=instruction,
                    status=PlanStatus.CONFIG,
                    reasons=(),
                    notes=notes,
                )
            )
            continue
        if node.provisional:
            upstream = _first_unbuilt(rows, deps)
            reason = "depends on the output of an upstream step that is not built"
            if upstream is not None:
                reason = f"depends on the output of {upstream}, which is not built"
            effective.append(PlanStatus.MAYBE)
            rows.append(
                PlannedStep(
                    node=node,
                    instruction=instruction,
                    status=PlanStatus.MAYBE,
                    reasons=(reason,),
                    notes=notes,
                )
            )
            continue
        # A link=True layer does not depend on the filesystem below it: it is reused whatever
        # that is (the filesystem after it is new when the one below is).
        linked = isinstance(node.step, Copy | Add) and node.step.link
        if linked:
            deps = [d for d in deps if d != node.parent]
        deps_hit = all(effective[d] is PlanStatus.HIT for d in deps)
        record = _get(store, node.key) if node.kind != "scratch" else None
        if node.kind == "scratch" or (record is not None and deps_hit):
            status, reasons = PlanStatus.HIT, tuple[str, ...]()
        elif (maybe := _maybe_reason(node, effective, rows, store, record)) is not None:
            status, reasons = PlanStatus.MAYBE, (maybe,)
        else:
            status = PlanStatus.MISS
            explained = _explain(node, store, rows, have_record=record is not None)
            reasons = tuple(credentials.mask_text(reason) for reason in explained)
        after = status
        if node.group is not None and node.index != node.group:
            # The filesystem after a layered COPY is a hit only if every layer is.
            siblings = [rows[i].status for i in range(node.group, node.index)]
            after = _worst([*siblings, status])
        if linked and node.parent is not None:
            after = _worst([after, effective[node.parent]])
        effective.append(after)
        rows.append(
            PlannedStep(
                node=node, instruction=instruction, status=status, reasons=reasons, notes=notes
            )
        )
    return tuple(rows)


def masked_description(step: Step, namer: StageNamer) -> str:
    """:func:`~imagedsl.steps.describe`, with every secret-looking value masked: a plan is
    printed, piped and pasted, and must never give a credential away."""
    if isinstance(step, Env):
        step = attrs.evolve(
            step, items=tuple((k, credentials.mask_pair(k, v)) for k, v in step.items)
        )
    elif isinstance(step, Arg) and step.default is not None:
        step = attrs.evolve(step, default=credentials.mask_pair(step.name, step.default))
    return credentials.mask_text(describe(step, namer))


def _maybe_reason(
    node: StepNode,
    effective: Sequence[PlanStatus],
    rows: Sequence[PlannedStep],
    store: Store | None,
    record: Record | None,
) -> str | None:
    """Why a step whose key is not provisional may still be reused, or None.

    BuildKit keys a bind mount from another stage by the bytes it mounts, so a RUN
    reading a stage that is rebuilt is reused when that stage's files come out the same; and a
    step whose only new input is such a step's result is reused with it. Both are ``maybe``:
    a step that is not built yet but whose own inputs, apart from those, are as recorded.
    """
    if store is None:
        return None
    content_bound = set(_content_bound_sources(node))
    pending = [d for d in node.deps if effective[d] is not PlanStatus.HIT]
    if not pending or any(
        effective[d] is PlanStatus.MISS and d not in content_bound for d in pending
    ):
        return None
    if record is None:
        earlier = _closest(node, store)
        if earlier is None or not _differs_only_below(earlier.preimage, node.preimage):
            return None
    upstream = _first_unbuilt(rows, pending) or "an upstream step"
    if any(d in content_bound for d in pending):
        return f"mounts files of {upstream}, which is not built: reused if they come out the same"
    return f"depends on {upstream}, which may be reused"


def _content_bound_sources(node: StepNode) -> list[int]:
    """The stages a RUN reads through bind mounts: BuildKit keys what they mount by content
    (read-only or not: Docker 20.10's BuildKit reuses a RUN with a writable bind mount of a
    stage rebuilt to the same files, tested)."""
    return list(node.sources) if isinstance(node.step, Run) else []


def _differs_only_below(old: keys.Preimage, new: keys.Preimage) -> bool:
    """Whether two preimages differ only in what is below the step: its parent, and the
    contents of bind mounts from other stages (everything the step itself says is equal)."""
    for field in set(old) | set(new):
        if field == "parent" or old.get(field) == new.get(field):
            continue
        if field != "mounts":
            return False
        before, after = old.get(field), new.get(field)
        if not isinstance(before, list) or not isinstance(after, list):
            return False
        if len(before) != len(after):
            return False
        for a, b in zip(before, after, strict=True):
            if not (isinstance(a, dict) and isinstance(b, dict)):
                return False
            if {**a, "content": None} != {**b, "content": None}:
                return False
            if a != b and not _stage_content(b.get("content")):
                return False
    return True


def _stage_content(content: object) -> bool:
    """Whether a bind mount's keyed content names a stage's filesystem (``KEY:PATH``)."""
    if not isinstance(content, str) or ":" not in content:
        return False
    return keys.is_key(content.partition(":")[0])


def _worst(statuses: Sequence[PlanStatus]) -> PlanStatus:
    for status in (PlanStatus.MISS, PlanStatus.MAYBE):
        if status in statuses:
            return status
    return PlanStatus.HIT


def _get(store: Store | None, key: str) -> Record | None:
    return None if store is None else store.get(key)


def _notes(node: StepNode) -> tuple[str, ...]:
    step = node.step
    if not isinstance(step, FromImage):
        return ()
    notes = () if node.base is None else node.base.notes
    if node.preimage.get("digest") is None:
        return ("base image is not pinned to a digest: its key follows the tag name", *notes)
    return notes


def _first_unbuilt(rows: Sequence[PlannedStep], deps: Iterable[int]) -> str | None:
    """Name the first dependency (looking through config steps) that is not a hit."""
    for dep in deps:
        row = rows[dep]
        if row.status in (PlanStatus.MISS, PlanStatus.MAYBE):
            return f"{row.stage}[{row.index}] {row.instruction}"
        if row.status is PlanStatus.CONFIG:
            found = _first_unbuilt(rows, [row.node.parent] if row.node.parent is not None else [])
            if found:
                return found
    return None


# -- miss explanations -----------------------------------------------------------------------


def _explain(
    node: StepNode,
    store: Store | None,
    rows: Sequence[PlannedStep],
    *,
    have_record: bool,
) -> list[str]:
    if have_record:
        upstream = _first_unbuilt(rows, node.deps)
        return [
            f"parent changed: {upstream} is not built"
            if upstream
            else "an upstream step is not built"
        ]
    if node.kind == "from":
        earlier = _closest(node, store)
        if earlier is None:
            return ["base image not used before"]
        return _diff(earlier.preimage, node, store, rows) or ["base image not used before"]
    earlier = _closest(node, store)
    if earlier is None:
        return ["no earlier build of this step"]
    return _diff(earlier.preimage, node, store, rows) or ["no earlier build of this step"]


def _closest(node: StepNode, store: Store | None) -> Record | None:
    if store is None:
        return None
    candidates = []
    for key in store.history(node.locus):
        if key == node.key:
            continue
        record = store.get(key)
        if record is not None and record.preimage.get("kind") == node.preimage.get("kind"):
            candidates.append(record)
    if not candidates:
        return None

    def distance(record: Record) -> tuple[int, float]:
        old, new = record.preimage, node.preimage
        differing = sum(1 for f in set(old) | set(new) if old.get(f) != new.get(f))
        return differing, -record.created

    return min(candidates, key=distance)


def _diff(
    old: keys.Preimage,
    node: StepNode,
    store: Store | None,
    rows: Sequence[PlannedStep],
) -> list[str]:
    new = node.preimage
    reasons: list[str] = []
    if node.kind == "from" and old.get("digest") != new.get("digest"):
        # One reason for the base, however many of its fields moved.
        reasons.append(_base_reason(node, old.get("digest")))
        old = {**old, "digest": new.get("digest"), "ref": new.get("ref")}
    for field in sorted(set(old) | set(new), key=_field_order):
        before, after = old.get(field), new.get(field)
        if before == after or field in ("v", "kind"):
            continue
        if field == "parent":
            reasons.append(_parent_reason(node, rows))
        elif field == "tree":
            reasons.extend(_tree_reasons(before, node, store))
        elif field == "env":
            reasons.extend(_variable_reasons(before, after, _setter(node, rows)))
        elif field in ("ref", "repository"):
            if before is not None and after is not None:
                reasons.append(f"base image changed: {before} -> {after}")
        elif field == "argv":
            reasons.append(f"command changed: {_argv(before)} -> {_argv(after)}")
        elif field == "mounts":
            reasons.extend(_mount_reasons(before, after))
        elif field == "source":
            reasons.append("the source stage changed")
        else:
            reasons.append(f"{field} changed: {_show(before)} -> {_show(after)}")
    return reasons


def _base_reason(node: StepNode, before: Any) -> str:
    """``base image changed: NAME is now sha256:…``: what the name holds now."""
    step = node.step
    assert isinstance(step, FromImage)
    name = attrs.evolve(step.image, digest=None).familiar
    after = node.preimage.get("digest")
    if after is None:
        return (
            f"base image changed: {name} is no longer known by content (it was {before}); "
            "its key follows the tag name"
        )
    return f"base image changed: {name} is now {after}"


def _field_order(field: str) -> tuple[int, str]:
    first = ("parent", "ref", "repository", "digest", "argv", "tree", "env")
    return (first.index(field) if field in first else len(first), field)


def _parent_reason(node: StepNode, rows: Sequence[PlannedStep]) -> str:
    parent = node.parent
    while parent is not None and rows[parent].status is PlanStatus.CONFIG:
        parent = rows[parent].node.parent
    if parent is None:
        return "parent changed"
    row = rows[parent]
    return f"parent changed: {row.stage}[{row.index}] {row.instruction} ({row.status})"


def _tree_reasons(old_digest: Any, node: StepNode, store: Store | None) -> list[str]:
    """The files that differ between the tree last built and this one. Both trees are known
    by digest, so the answer is memoised by the pair (and the step): a plan run again before
    the next build reads it instead of the new tree's rows, which for a part of a large
    ``layers="auto"`` copy means placing every file of the copy."""
    new_tree = next((t for t in node.trees if t.digest == node.preimage.get("tree")), None)
    if new_tree is None or store is None or not isinstance(old_digest, str):
        return ["copied files changed"]
    memo = blake3.blake3(
        f"tree-reasons\0{_MAX_FILE_REASONS}\0{node.locus}\0{old_digest}\0{new_tree.digest}".encode(
            "utf-8", "surrogateescape"
        )
    ).hexdigest()
    with contextlib.suppress(ValueError, TypeError):
        known = json.loads(store.load_analysis(memo) or "null")
        if isinstance(known, list) and known and all(isinstance(r, str) for r in known):
            return known
    old_manifest = store.get_tree(old_digest)
    if old_manifest is None:
        return ["copied files changed"]
    new_manifest = _same_shape_manifest(old_digest, old_manifest, new_tree, store)
    reasons = _manifest_diff(old_manifest, new_manifest or new_tree.manifest())
    store.save_analysis(memo, json.dumps(reasons))
    return reasons


def _shape_memo(digest: str) -> str:
    """The store's analysis entry holding a kept tree's :attr:`~imagedsl.treehash.Tree.shape`."""
    return blake3.blake3(f"tree-shape\0{digest}".encode()).hexdigest()


def _same_shape_manifest(
    old_digest: str, old: Mapping[str, list[object]], new_tree: Tree, store: Store
) -> dict[str, list[object]] | None:
    """The new tree's manifest without its rows, when it has the shape of the tree built
    (the same files, types, modes and size classes: only contents differ, as after most
    edits): the old manifest with each file's content digest now. Building the rows of a
    part of a large ``layers="auto"`` copy would place every file of the copy."""
    if new_tree.shape is None or new_tree.contents_of is None:
        return None
    if store.load_analysis(_shape_memo(old_digest)) != new_tree.shape:
        return None
    files = [path for path, row in old.items() if row and row[0] == "file"]
    now = new_tree.contents_of(files)
    new = dict(old)
    for path in files:
        digest = now.get(path)
        if digest is None:
            return None  # not a file any more: the shape should have said so; read the rows
        if digest != old[path][3]:
            new[path] = [*old[path][:3], digest]
    return new


def _manifest_diff(old: Mapping[str, list[object]], new: Mapping[str, list[object]]) -> list[str]:
    changes: list[str] = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path), new.get(path)
        if before == after:
            continue
        if before is None:
            changes.append(f"added {path}")
        elif after is None:
            changes.append(f"removed {path}")
        elif before[0] != after[0]:
            changes.append(f"{path} changed type: {before[0]} -> {after[0]}")
        elif before[3] != after[3]:
            changes.append(f"{path} changed")
        else:
            changes.append(
                f"{path} mode changed: {before[1]:o} -> {after[1]:o}"
                if isinstance(before[1], int) and isinstance(after[1], int)
                else f"{path} changed"
            )
    if not changes:
        return ["copied files changed (destination layout)"]
    if len(changes) > _MAX_FILE_REASONS:
        extra = len(changes) - _MAX_FILE_REASONS
        changes = [*changes[:_MAX_FILE_REASONS], f"... and {extra} more file changes"]
    return changes


def _pairs(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):  # a record written before the environment was a list
        return [(str(k), str(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [(str(p[0]), str(p[1])) for p in value if isinstance(p, list) and len(p) == 2]
    return []


def _setter(node: StepNode, rows: Sequence[PlannedStep]) -> Callable[[str], str]:
    """For a variable name, ``ENV`` or ``ARG``: the kind of the last step that set it."""

    def kind(name: str) -> str:
        at = node.parent
        while at is not None and at < len(rows):
            step = rows[at].node.step
            if isinstance(step, Arg) and step.name == name:
                return "ARG"
            if isinstance(step, Env) and any(n == name for n, _ in step.items):
                return "ENV"
            at = rows[at].node.parent
        return "ENV"

    return kind


def _variable_reasons(before: Any, after: Any, kind: Callable[[str], str]) -> list[str]:
    old_pairs, new_pairs = _pairs(before), _pairs(after)
    old, new = dict(old_pairs), dict(new_pairs)
    reasons = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) == new.get(name):
            continue
        was, now = _masked(name, old.get(name)), _masked(name, new.get(name))
        if name not in old:
            reasons.append(f"{kind(name)} {name} set to {now!r}")
        elif name not in new:
            reasons.append(f"{kind(name)} {name} removed (was {was!r})")
        else:
            reasons.append(f"{kind(name)} {name} {was!r} -> {now!r}")
    if not reasons and old_pairs != new_pairs:
        # BuildKit keys RUN on the environment in order: a reordering alone is a miss.
        shown = ", ".join
        reasons.append(
            f"environment order changed: {shown(n for n, _ in old_pairs)} -> "
            f"{shown(n for n, _ in new_pairs)}"
        )
    return reasons


def _masked(name: str, value: Any) -> Any:
    return credentials.mask_pair(name, value) if isinstance(value, str) else value


def _mount_reasons(before: Any, after: Any) -> list[str]:
    old = {m.get("target") or m.get("env"): m for m in before or [] if isinstance(m, dict)}
    new = {m.get("target") or m.get("env"): m for m in after or [] if isinstance(m, dict)}
    reasons = []
    for target in sorted(set(old) | set(new), key=str):
        a, b = old.get(target), new.get(target)
        if a == b:
            continue
        if a is None:
            reasons.append(f"mount added: {b.get('type') if b else '?'} {target}")
        elif b is None:
            reasons.append(f"mount removed: {a.get('type')} {target}")
        elif a.get("type") == b.get("type") == "bind" and a.get("content") != b.get("content"):
            reasons.append(f"bind mount {target}: mounted files changed")
        else:
            reasons.append(f"{b.get('type')} mount {target} options changed")
    return reasons


def _argv(argv: Any) -> str:
    if isinstance(argv, list):
        return json.dumps(argv, ensure_ascii=False)
    return repr(argv)


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# -- recording -------------------------------------------------------------------------------


def record_step(
    store: Store,
    step: PlannedStep | StepNode,
    outputs: Mapping[str, Any] | None = None,
    *,
    seconds: float | None = None,
) -> Record:
    """Record that a step was built: its preimage, its trees' manifests, and ``outputs``.

    This is how backends turn misses into hits for the next plan. ``seconds`` (how long
    making the step took, when it was made now) is kept as ``outputs["seconds"]``: ``imagedsl
    check`` reads it to say what re-running a step costs.
    """
    node = step.node if isinstance(step, PlannedStep) else step
    keep_manifests(store, node)
    merged = dict(outputs or {})
    if seconds is not None:
        merged["seconds"] = round(seconds, 3)
    record = Record(key=node.key, preimage=node.preimage, locus=node.locus, outputs=merged)
    return store.put(record)


def keep_manifests(store: Store, node: StepNode) -> None:
    """Keep the manifests of a step's trees (what miss reasons diff), each made only where the
    store does not hold it yet, and their shapes (which let a later diff skip the new tree's
    rows when only contents changed)."""
    for tree in node.trees:
        store.put_tree(tree.digest, tree.manifest)
        if tree.shape is not None and store.load_analysis(_shape_memo(tree.digest)) is None:
            store.save_analysis(_shape_memo(tree.digest), tree.shape)


def record_copy_output(store: Store, step: PlannedStep | StepNode, tree: Tree) -> str:
    """Record what a built ``COPY --from`` placed; return its content-based key.

    Later plans read this to give the COPY (and everything after it) a key by content, so
    an upstream rebuild with identical output keeps downstream hits (early cutoff).
    """
    node = step.node if isinstance(step, PlannedStep) else step
    if node.structural_key is None:
        raise ValueError("not a COPY --from step")
    structural = node.preimage
    if structural.get("kind") == "copy-from":
        store.put(
            Record(key=node.structural_key, preimage=structural, outputs={"tree": tree.digest})
        )
        content = keys.copy_preimage(
            kind="copy",
            parent=structural["parent"],
            dest=structural["dest"],
            chown=structural["chown"],
            chmod=structural["chmod"],
            exclude=structural["exclude"],
            tree=tree.digest,
        )
    else:
        content = structural
    store.put_tree(tree.digest, tree.manifest())
    key = keys.key_of(content)
    store.put(Record(key=key, preimage=content, locus=node.locus))
    return key


__all__ = [
    "Plan",
    "PlanStatus",
    "PlannedStep",
    "StoreWarning",
    "plan",
    "record_copy_output",
    "record_step",
    "settle",
]

"""The build graph: stages unfolded into steps, checked, ordered, and keyed.

Building a graph has three phases:

1. **Structure.** Walk from the target through every stage it needs (chain parents, ``COPY
   --from`` and bind-mount sources, ``dsl.stage`` references). Equal stage values are one node,
   so prefixes shared across stages and targets are planned once; stages the target does not
   need are never visited (pruned).
2. **Analysis** (networkx): refuse cycles (reporting the stages in the loop), order the steps
   topologically, and split them into waves that can run in parallel. The result depends only
   on the graph's shape, so it is memoised by a digest of that shape (a small JSON file in the
   store); an unchanged build file skips networkx entirely, which keeps a warm ``plan`` fast.
3. **Keys**, in topological order, from each step's preimage (:mod:`imagedsl.keys`).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import blake3

from imagedsl import keys
from imagedsl._validate import clean_container_path
from imagedsl.buildstate import DEFAULT_PATH, ArgScope, BuildState
from imagedsl.buildstate import expand as expand_word
from imagedsl.contexts import ContextSource
from imagedsl.dsl import Stage, StageRef
from imagedsl.errors import (
    CycleError,
    ImageDSLError,
    SourceLocation,
    StepArgumentError,
    UnknownStageError,
)
from imagedsl.oci.platform import canonical_platform
from imagedsl.oci.reference import ImageReference, parse_reference
from imagedsl.steps import (
    INLINE_FILE_NAME,
    LAYER_KINDS,
    Add,
    BindMount,
    Copy,
    FromImage,
    FromScratch,
    FromStage,
    InlineFile,
    Run,
    StagePath,
    Step,
    UrlSource,
    Workdir,
    check_stage_copy_dest,
)
from imagedsl.treehash import ContextHasher, Tree, sole_file

if TYPE_CHECKING:
    import networkx as nx

ANALYSIS_VERSION = 1


@attrs.frozen
class CopyOutput:
    """What the ledger knows of a built ``COPY --from``: the digest of what it placed, when
    the backend measured it (None: built, e.g. by BuildKit, but not measured)."""

    tree: str | None


@attrs.frozen(kw_only=True)
class ResolvedBase:
    """What a base image is, found while planning (see docs/cache-keys.md).

    ``digest`` is its content identity, the one its key holds: the image's config digest
    (the engine's image ID), or a manifest digest where that is all that is known (a lock
    file written by an older imagedsl); None when nothing knows it (then ``notes`` say why).
    ``manifest`` pulls exactly that image from its registry, when known; ``notes`` say where
    the identity came from.
    """

    digest: str | None
    manifest: str | None = None
    notes: tuple[str, ...] = ()


#: Given a structural COPY --from key, what is known of its built output (None: not built).
OutputResolver = Callable[[str], CopyOutput | None]
#: Given a base image reference (unpinned) and a platform, what it is (None: not known).
BaseResolver = Callable[[ImageReference, str], ResolvedBase | None]


class AnalysisMemo(Protocol):
    """Where graph-shape analyses persist (the store implements it)."""

    def load_analysis(self, digest: str) -> str | None:
        """The saved analysis for a shape digest, or None."""

    def save_analysis(self, digest: str, text: str) -> None:
        """Save the analysis for a shape digest, atomically."""


@attrs.frozen(kw_only=True)
class StepNode:
    """One step of the build, keyed. ``index`` is its position in topological order."""

    index: int
    stage: str
    position: int
    step: Step
    key: str
    #: Key of the filesystem this step leaves: itself for layer steps, else inherited.
    fs_key: str
    preimage: keys.Preimage = attrs.field(eq=False, repr=False)
    #: The step below this one in its stage (None for a FROM).
    parent: int | None
    #: Stages this step reads from (COPY --from, bind mounts): their last steps.
    sources: tuple[int, ...]
    #: The steps whose outputs this step's key depends on.
    deps: tuple[int, ...]
    wave: int
    #: The key may still change once upstream outputs are known (``maybe`` in a plan).
    provisional: bool
    #: For COPY --from: the structural key under which the built output digest is recorded.
    structural_key: str | None = None
    trees: tuple[Tree, ...] = attrs.field(default=(), eq=False, repr=False)
    locus: str
    #: The Dockerfile state (env, args, workdir, user, shell, platform) after this step.
    state: BuildState = attrs.field(eq=False, repr=False)
    #: For a COPY split into layers: this layer's name, and the index of the first layer.
    part: str | None = None
    group: int | None = None
    #: ``imagedsl check`` rules the build file allows at this step (``Stage.allow``).
    allowed: frozenset[str] = attrs.field(default=frozenset(), eq=False, repr=False)
    #: A filesystem kind that makes no layer here (``WORKDIR /``: BuildKit makes no vertex).
    layerless: bool = False
    #: For a FROM of an unpinned reference: what the plan found the base to be.
    base: ResolvedBase | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def kind(self) -> str:
        """The step's kind (``run``, ``copy``, ``env``, ...)."""
        return self.step.kind

    @property
    def is_config(self) -> bool:
        """Whether the step only changes image config (no layer, no work)."""
        if self.layerless:
            return True
        return self.kind not in LAYER_KINDS and self.kind not in ("from", "scratch")

    @property
    def location(self) -> SourceLocation | None:
        """The build-file line that made the step."""
        return self.step.location


@attrs.frozen(kw_only=True)
class BuildGraph:
    """The keyed steps a target needs, in topological order."""

    target: str
    nodes: tuple[StepNode, ...]
    stage_names: Mapping[Stage, str] = attrs.field(eq=False, repr=False)
    #: What ARG steps read (``--build-arg`` values, global and platform ARGs); backends that
    #: replay steps on a base's real config use the same scope.
    scope: ArgScope = attrs.field(factory=ArgScope, eq=False, repr=False)
    #: What keyed the graph, kept so that :func:`rekey` can key it again once outputs it
    #: depends on are known (no file is read again: trees are remembered).
    keyer: _Keyer | None = attrs.field(default=None, eq=False, repr=False)
    #: The ``SOURCE_DATE_EPOCH`` RUN steps are keyed for (their layers' mtimes and .pyc files).
    source_date_epoch: int = 0

    @property
    def output(self) -> StepNode:
        """The target's last step."""
        return self.nodes[-1]

    def to_networkx(self) -> nx.DiGraph:
        """The graph with key-identified nodes; steps with one key collapse into one node."""
        import networkx as nx

        graph = nx.DiGraph()
        for node in self.nodes:
            graph.add_node(node.key, kind=node.kind, label=f"{node.stage}[{node.position}]")
            for dep in {*node.deps, *([node.parent] if node.parent is not None else [])}:
                graph.add_edge(self.nodes[dep].key, node.key)
        return graph


def stage_namer(names: Mapping[Stage, str]) -> Callable[[Stage | StageRef], str]:
    """A function naming stages for messages (``StageRef`` by its name)."""

    def name(stage: Stage | StageRef) -> str:
        if isinstance(stage, StageRef):
            return stage.name
        return names.get(stage, "<stage>")

    return name


def build_graph(
    target: str,
    named: Mapping[str, Stage | StageRef],
    *,
    hasher: ContextHasher,
    scope: ArgScope,
    platform: str,
    resolve_output: OutputResolver,
    resolve_base: BaseResolver,
    memo: AnalysisMemo | None,
    project: str,
    source_date_epoch: int = 0,
) -> BuildGraph:
    """Unfold ``named[target]`` into its keyed steps (see the module docstring)."""
    resolved = _resolve_names(named, scope)
    structure = _Structure.collect(resolved[target], resolved, scope)
    labels = _stage_labels(structure.stages, resolved, target)
    order, waves = _analyse(structure, memo, labels)
    return _Keyer(
        structure=structure,
        labels=labels,
        hasher=hasher,
        scope=scope,
        platform=platform,
        resolve_output=resolve_output,
        resolve_base=resolve_base,
        project=project,
        named=resolved,
        source_date_epoch=source_date_epoch,
    ).key_all(target, order, waves)


def rekey(graph: BuildGraph) -> BuildGraph:
    """Key ``graph`` again, now that more ``COPY --from`` outputs may be recorded.

    Structure, order and waves are kept; context trees are not hashed again. Only keys that
    depended on an unknown output (provisional ones) can change.
    """
    if graph.keyer is None or not any(node.provisional for node in graph.nodes):
        return graph
    return graph.keyer.key_again()


# -- phase 1: structure ----------------------------------------------------------------------


def _resolve_names(named: Mapping[str, Stage | StageRef], scope: ArgScope) -> dict[str, Stage]:
    """Follow ``dsl.stage`` references among named stages to stage values."""
    resolved: dict[str, Stage] = {}
    for name, value in named.items():
        seen = [name]
        while isinstance(value, StageRef):
            wanted = _stage_called(value, named, scope)
            if wanted in seen:
                raise CycleError(seen[seen.index(wanted) :])
            seen.append(wanted)
            value = named[wanted]
        resolved[name] = value
    return resolved


def _named(ref: StageRef, named: Mapping[str, Stage], scope: ArgScope, step: Step) -> Stage:
    """The stage a reference names, its name expanded with the global ARGs."""
    try:
        return named[_stage_called(ref, named, scope)]
    except UnknownStageError as error:
        raise error.with_location(step.location) from None


def _stage_called(ref: StageRef, named: Mapping[str, object], scope: ArgScope) -> str:
    """The name of the stage ``ref`` picks: the stage so named, else the one named alike once
    lower-cased with ``-`` and ``.`` read as ``_``, the name ``imagedsl import`` gives a
    Dockerfile's stage (BuildKit compares stage names without case), so ``FROM
    build-${OS}`` picks ``build_linux`` and ``dsl.stage("Builder")`` picks ``builder``."""
    wanted = scope.expand_global(ref.name)
    if wanted in named:
        return wanted
    alike = wanted.lower().replace("-", "_").replace(".", "_")
    if alike in named:
        return alike
    raise UnknownStageError(wanted, sorted(named))


@attrs.define
class _Structure:
    """Stages as nodes (numbered in dependency-first order) and their dependency edges."""

    stages: list[Stage]
    index: dict[Stage, int]
    edges: list[tuple[int, int]]
    deps: list[tuple[int | None, tuple[int, ...]]]

    @classmethod
    def collect(cls, target: Stage, named: Mapping[str, Stage], scope: ArgScope) -> _Structure:
        stages: list[Stage] = []
        index: dict[Stage, int] = {}
        pending: dict[Stage, tuple[Stage | None, tuple[Stage, ...]]] = {}
        # Iterative post-order DFS: dependencies get smaller numbers than their dependents.
        stack: list[tuple[Stage, bool]] = [(target, False)]
        while stack:
            stage, expanded = stack.pop()
            if stage in index:
                continue
            if expanded:
                index[stage] = len(stages)
                stages.append(stage)
                continue
            if stage in pending:
                continue  # on the current path: a cycle, reported by the analysis
            parent = stage.parent
            if isinstance(stage.step, FromStage):  # FROM <template>: continue that stage
                parent = _named(stage.step.ref, named, scope, stage.step)
            sources = tuple(_source_stages(stage.step, named, scope))
            pending[stage] = (parent, sources)
            stack.append((stage, True))
            for dep in reversed((*([parent] if parent is not None else []), *sources)):
                if dep not in index:
                    stack.append((dep, False))
        edges: list[tuple[int, int]] = []
        deps: list[tuple[int | None, tuple[int, ...]]] = []
        for stage in stages:
            parent, sources = pending[stage]
            parent_index = None if parent is None else index[parent]
            source_indices = tuple(index[s] for s in sources)
            if parent_index is not None:
                edges.append((parent_index, index[stage]))
            edges.extend((s, index[stage]) for s in source_indices)
            deps.append((parent_index, source_indices))
        return cls(stages, index, edges, deps)

    def shape_digest(self) -> str:
        """A digest of the graph's shape: node kinds and edges, nothing about content."""
        shape = {
            "v": ANALYSIS_VERSION,
            "kinds": [s.step.kind for s in self.stages],
            "edges": sorted(self.edges),
        }
        return blake3.blake3(json.dumps(shape, separators=(",", ":")).encode()).hexdigest()


def _source_stages(step: Step, named: Mapping[str, Stage], scope: ArgScope) -> list[Stage]:
    sources: list[StagePath] = []
    if isinstance(step, Copy) and isinstance(step.source, StagePath):
        sources.append(step.source)
    if isinstance(step, Run):
        sources.extend(
            m.source
            for m in step.mounts
            if isinstance(m, BindMount) and isinstance(m.source, StagePath)
        )
    out = []
    for source in sources:
        stage = source.stage
        if isinstance(stage, StageRef):
            stage = _named(stage, named, scope, step)
        out.append(stage)
    return out


# -- phase 2: analysis -----------------------------------------------------------------------


def _analyse(
    structure: _Structure, memo: AnalysisMemo | None, labels: Mapping[Stage, tuple[str, int]]
) -> tuple[list[int], list[int]]:
    """Topological order and waves, from the memo or computed (networkx only names a cycle:
    importing it costs more than a whole warm plan)."""
    digest = structure.shape_digest()
    if memo is not None:
        saved = _read_analysis(memo.load_analysis(digest), len(structure.stages))
        if saved is not None:
            return saved
    size = len(structure.stages)
    edges = set(structure.edges)
    successors: list[list[int]] = [[] for _ in range(size)]
    predecessors: list[list[int]] = [[] for _ in range(size)]
    for u, v in edges:
        successors[u].append(v)
        predecessors[v].append(u)
    # Kahn's algorithm, smallest ready node first: networkx's lexicographical_topological_sort.
    waiting = [len(p) for p in predecessors]
    ready = [node for node in range(size) if not waiting[node]]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for succ in successors[node]:
            waiting[succ] -= 1
            if not waiting[succ]:
                heapq.heappush(ready, succ)
    if len(order) < size:
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(range(size))
        graph.add_edges_from(edges)
        cycle_edges = nx.find_cycle(graph)
        raise _cycle_error(structure, [u for u, _ in cycle_edges], labels)
    weight = [0 if _is_free(s.step) else 1 for s in structure.stages]
    waves = [0] * len(order)
    for node in order:
        waves[node] = max((waves[p] + weight[node] for p in predecessors[node]), default=0)
    if memo is not None:
        memo.save_analysis(
            digest, json.dumps({"v": ANALYSIS_VERSION, "order": order, "waves": waves})
        )
    return order, waves


def _is_free(step: Step) -> bool:
    return step.kind not in LAYER_KINDS


def _read_analysis(text: str | None, size: int) -> tuple[list[int], list[int]] | None:
    if text is None:
        return None
    try:
        payload = json.loads(text)
        order, waves = payload["order"], payload["waves"]
    except (ValueError, KeyError, TypeError):
        return None
    if (
        payload.get("v") != ANALYSIS_VERSION
        or sorted(order) != list(range(size))
        or len(waves) != size
        or not all(isinstance(w, int) for w in waves)
    ):
        return None
    return order, waves


def _cycle_error(
    structure: _Structure, members: Sequence[int], labels: Mapping[Stage, tuple[str, int]]
) -> CycleError:
    """Name a cycle by the stages whose chains carry it, starting from the first-named one,
    located at the step of that stage that reaches into the next (a COPY --from or bind)."""
    names: list[str] = []
    reaching: dict[str, SourceLocation | None] = {}
    for member in members:
        stage = structure.stages[member]
        name = labels[stage][0]
        if isinstance(stage.step, Copy | Run) and name not in reaching:
            reaching[name] = stage.step.location
        if not names or names[-1] != name:
            names.append(name)
    if len(names) > 1 and names[0] == names[-1]:
        names.pop()
    start = names.index(min(names))
    names = names[start:] + names[:start]
    error = CycleError(names)
    error.with_location(reaching.get(names[0]))
    return error


# -- stage labels ------------------------------------------------------------------------------


def _stage_labels(
    stages: Sequence[Stage], named: Mapping[str, Stage], target: str
) -> dict[Stage, tuple[str, int]]:
    """Name every node by the shortest named stage whose chain contains it (ties: file order)."""
    labels: dict[Stage, tuple[str, int]] = {}
    wanted = set(stages)
    ordered = sorted(named.items(), key=lambda item: len(item[1]))
    for name, stage in ordered:
        for position, member in enumerate(stage.chain()):
            if member in wanted and member not in labels:
                labels[member] = (name, position)
    anonymous = 0
    for stage in reversed(stages):  # dependents first, so one label covers a whole chain
        if stage in labels:
            continue
        anonymous += 1
        for position, member in enumerate(stage.chain()):
            if member not in labels:
                labels[member] = (f"{target}-stage-{anonymous}", position)
    return labels


# -- phase 3: keys -----------------------------------------------------------------------------


@attrs.define(kw_only=True)
class _Keyer:
    structure: _Structure
    labels: dict[Stage, tuple[str, int]]
    hasher: ContextHasher
    scope: ArgScope
    platform: str
    resolve_output: OutputResolver
    resolve_base: BaseResolver
    project: str
    named: Mapping[str, Stage]
    source_date_epoch: int = 0
    _states: dict[int, BuildState] = attrs.field(factory=dict)
    _nodes: dict[int, StepNode] = attrs.field(factory=dict)
    _trees: dict[tuple[ContextSource, tuple[str, ...], bool | None, bool], Tree] = attrs.field(
        factory=dict
    )
    _keyed: tuple[str, Sequence[int], Sequence[int]] | None = None

    def key_all(self, target: str, order: Sequence[int], waves: Sequence[int]) -> BuildGraph:
        self._keyed = (target, order, waves)
        self._states.clear()
        self._nodes.clear()
        nodes: list[StepNode] = []
        for old in order:
            made = self._key_one(old, len(nodes), waves[old])
            nodes.extend(made)
            self._nodes[old] = made[-1]
        names = {s: label for s, (label, _) in self.labels.items()}
        return BuildGraph(
            target=target,
            nodes=tuple(nodes),
            stage_names=names,
            scope=self.scope,
            keyer=self,
            source_date_epoch=self.source_date_epoch,
        )

    def key_again(self) -> BuildGraph:
        assert self._keyed is not None
        return self.key_all(*self._keyed)

    def _key_one(self, old: int, index: int, wave: int) -> list[StepNode]:
        """The node(s) of one stage value: one, or one per layer of a layered COPY."""
        stage = self.structure.stages[old]
        step = stage.step
        parent_old, source_olds = self.structure.deps[old]
        parent = None if parent_old is None else self._nodes[parent_old]
        sources = tuple(self._nodes[s] for s in source_olds)
        label, position = self.labels[stage]
        provisional = (parent is not None and parent.provisional) or any(
            s.provisional for s in sources
        )
        deps = tuple(n.index for n in (*([parent] if parent else []), *sources))
        common: dict[str, Any] = {
            "index": index,
            "stage": label,
            "position": position,
            "step": step,
            "parent": None if parent is None else parent.index,
            "sources": tuple(s.index for s in sources),
            "deps": deps,
            "wave": wave,
            "locus": self._locus(label, position),
            "allowed": stage.allowed,
        }
        if isinstance(step, FromImage | FromScratch):
            platform = self._platform(step)
            # A base image's config is not read while planning: its state inherits.
            inherits = isinstance(step, FromImage)
            # FROM scratch starts from Docker's empty image, whose config sets PATH.
            path = () if inherits else (("PATH", DEFAULT_PATH),)
            start = BuildState(
                platform=platform,
                inherits=inherits,
                workdir="" if inherits else "/",
                env=path,
                config_env=path,
            )
            self._states[old] = common["state"] = start
            digest = base = None
            if isinstance(step, FromImage):
                step = common["step"] = self._expand_image(step)
                digest = step.image.digest
                if digest is None:
                    base = self.resolve_base(step.image, platform)
                    digest = None if base is None else base.digest
            preimage = keys.base_preimage(step, platform, digest)
            key = keys.key_of(preimage)
            return [
                StepNode(
                    key=key, fs_key=key, preimage=preimage, provisional=False, base=base, **common
                )
            ]
        assert parent is not None
        assert parent_old is not None
        before = self._states[parent_old]
        source = step.source if isinstance(step, Copy | Add) else None
        if isinstance(source, ContextSource | StagePath) and source.templated:
            assert isinstance(step, Copy | Add)
            # Keyed, built and lowered by the paths BuildKit would read.
            step = common["step"] = expand_sources(step, before)
        state = before.apply(step, self.scope)
        self._states[old] = common["state"] = state
        # BuildKit makes no vertex (and no layer) for a WORKDIR that is the root.
        root_workdir = isinstance(step, Workdir) and state.workdir == "/"
        if not isinstance(step, Run | Copy | Add | Workdir) or root_workdir:
            preimage = keys.config_preimage(parent=parent.key, step=step, state=state)
            node = StepNode(
                key=keys.key_of(preimage),
                fs_key=parent.fs_key,
                preimage=preimage,
                provisional=provisional,
                layerless=root_workdir,
                **common,
            )
            return [node]
        structural_key: str | None = None
        trees: tuple[Tree, ...] = ()
        if isinstance(step, Run):
            preimage, trees = self._run_preimage(step, before, parent, sources)
        elif isinstance(step, Workdir):
            # The directory made is the cleaned path (``/app/`` and ``/app`` make one).
            made = clean_container_path(state.workdir) if state.workdir.startswith("/") else None
            preimage = keys.workdir_preimage(
                parent=parent.fs_key, path=made or state.workdir, user=before.user
            )
        elif isinstance(step.source, StagePath):
            assert isinstance(step, Copy)
            preimage, structural_key, still_provisional = self._copy_from_stage(
                step, before, parent, sources[0]
            )
            provisional = parent.provisional or still_provisional
        elif isinstance(step, Copy) and (
            layered := self._layered_copy(step, before, parent, provisional, common)
        ):
            return layered
        else:
            preimage, trees = self._copy_context(step, before, parent)
        key = keys.key_of(preimage)
        fs_key = key
        if isinstance(step, Copy | Add) and step.link:
            # The layer does not depend on what is below it, but the filesystem after it does.
            fs_key = keys.key_of(keys.layers_preimage([parent.fs_key, key]))
        node = StepNode(
            key=key,
            fs_key=fs_key,
            preimage=preimage,
            provisional=provisional,
            structural_key=structural_key,
            trees=trees,
            **common,
        )
        return [node]

    def _platform(self, step: FromImage | FromScratch) -> str:
        """The stage's platform: its own (``$BUILDPLATFORM`` expands), else the build's."""
        if step.platform is None:
            return self.platform
        text = self.scope.expand_global(step.platform)
        try:
            return canonical_platform(text)
        except ValueError as error:
            raise StepArgumentError("FROM", "platform", str(error)).with_location(
                step.location
            ) from None

    def _expand_image(self, step: FromImage) -> FromImage:
        """The FROM step with its reference parsed, once global ARGs expanded its template."""
        if step.template is None:
            return step
        text = self.scope.expand_global(step.template)
        try:
            reference = parse_reference(text, step="FROM")
        except ImageDSLError as error:
            raise error.with_location(step.location) from None
        return attrs.evolve(step, reference=reference)

    def _locus(self, label: str, position: int, part: str | None = None) -> str:
        """A stable name for a step position, under which its history is kept."""
        text = f"{self.project}\0{label}\0{position}" + ("" if part is None else f"\0{part}")
        return blake3.blake3(text.encode()).hexdigest()

    def _layered_copy(
        self,
        step: Copy,
        state: BuildState,
        parent: StepNode,
        provisional: bool,
        common: dict[str, Any],
    ) -> list[StepNode]:
        """One node per layer part of a COPY split into layers (none for a COPY that is one
        layer: see :meth:`ContextHasher.partition`). Each part's key depends on the filesystem
        below the COPY and its own files only, so editing one file re-keys one part; the
        filesystem after the COPY is keyed by all parts together."""
        if not isinstance(step.source, ContextSource):
            return []
        whole = self._tree(
            step.source,
            step.exclude,
            dest_is_dir=_dest_is_dir(step),
            step=step,
            parents=step.parents,
        )
        parts = self.hasher.partition(step.source, whole, step.layers)
        if parts is None:
            return []
        dest = _copy_dest(state, step.dest)
        below = None if step.link else parent.fs_key
        nodes: list[StepNode] = []
        first = common["index"]
        for i, (name, tree) in enumerate(parts):
            preimage = keys.copy_preimage(
                kind="copy",
                parent=below,
                dest=dest,
                chown=_expanded(state, step.chown),
                chmod=_expanded(state, step.chmod),
                exclude=(),  # the part's tree already leaves excluded files out
                tree=tree.digest,
            )
            key = keys.key_of(preimage)
            fields = {
                **common,
                "index": first + i,
                "parent": common["parent"] if i == 0 else first + i - 1,
                "locus": self._locus(common["stage"], common["position"], name),
            }
            nodes.append(
                StepNode(
                    key=key,
                    fs_key=key,
                    preimage=preimage,
                    provisional=provisional,
                    trees=(tree,),
                    part=name,
                    group=first,
                    **fields,
                )
            )
        below_too = [parent.fs_key] if step.link else []  # linked parts do not hold it
        joined = keys.key_of(keys.layers_preimage([*below_too, *(n.key for n in nodes)]))
        nodes[-1] = attrs.evolve(nodes[-1], fs_key=joined)
        return nodes

    def _run_preimage(
        self, step: Run, state: BuildState, parent: StepNode, sources: Sequence[StepNode]
    ) -> tuple[keys.Preimage, tuple[Tree, ...]]:
        mounts = []
        trees = []
        stage_sources = iter(sources)
        for mount in step.mounts:
            content = None
            if isinstance(mount, BindMount):
                if isinstance(mount.source, ContextSource):
                    tree = self._tree(mount.source, (), dest_is_dir=True, step=step)
                    trees.append(tree)
                    content = _mounted_digest(mount.source, tree)
                else:
                    source = next(stage_sources)
                    content = f"{source.fs_key}:{mount.source.path}"
            mounts.append(keys.mount_preimage(mount, content))
        argv = state.argv(step.command, step.shell_form)
        preimage = keys.run_preimage(
            parent=parent.fs_key,
            argv=argv,
            state=state,
            mounts=mounts,
            network=step.network,
            source_date_epoch=self.source_date_epoch,
        )
        return preimage, tuple(trees)

    def _copy_context(
        self, step: Copy | Add, state: BuildState, parent: StepNode
    ) -> tuple[keys.Preimage, tuple[Tree, ...]]:
        dest = _copy_dest(state, step.dest)
        link_parent = None if step.link else parent.fs_key
        if isinstance(step.source, UrlSource):
            preimage = keys.add_url_preimage(
                parent=link_parent,
                dest=dest,
                chown=_expanded(state, step.chown),
                chmod=_expanded(state, step.chmod),
                checksum=step.source.checksum,
                name=step.source.file_name,
            )
            return preimage, ()
        exclude = step.exclude if isinstance(step, Copy) else ()
        dest_is_dir: bool | None = False  # an inline file is one file, placed at "."
        if isinstance(step.source, InlineFile):
            tree = inline_tree(step.source)
        else:
            assert isinstance(step.source, ContextSource)
            parents = isinstance(step, Copy) and step.parents
            dest_is_dir = _dest_is_dir(step)
            tree = self._tree(
                step.source, exclude, dest_is_dir=dest_is_dir, step=step, parents=parents
            )
        preimage = keys.copy_preimage(
            kind=step.kind,
            parent=link_parent,
            dest=dest,
            chown=_expanded(state, step.chown),
            chmod=_expanded(state, step.chmod),
            # The tree is what the patterns left: a pattern that excludes nothing must not
            # change the key (BuildKit copies the same staged files), one that does changes
            # the tree.
            exclude=(),
            tree=tree.digest,
            name=None if dest_is_dir else _lone_file_name(tree),
        )
        return preimage, (tree,)

    def _copy_from_stage(
        self, step: Copy, state: BuildState, parent: StepNode, source: StepNode
    ) -> tuple[keys.Preimage, str, bool]:
        assert isinstance(step.source, StagePath)
        dest = _copy_dest(state, step.dest)
        link_parent = None if step.link else parent.fs_key
        structural = keys.copy_from_stage_preimage(
            parent=link_parent,
            dest=dest,
            chown=_expanded(state, step.chown),
            chmod=_expanded(state, step.chmod),
            exclude=step.exclude,
            source=source.fs_key,
            paths=step.source.paths,
        )
        structural_key = keys.key_of(structural)
        output = None if source.provisional else self.resolve_output(structural_key)
        if output is None:
            return structural, structural_key, True
        if output.tree is None:
            return structural, structural_key, False
        content = output.tree
        preimage = keys.copy_preimage(
            kind="copy",
            parent=link_parent,
            dest=dest,
            chown=_expanded(state, step.chown),
            chmod=_expanded(state, step.chmod),
            exclude=step.exclude,
            tree=content,
        )
        return preimage, structural_key, False

    def _tree(
        self,
        source: ContextSource,
        exclude: Sequence[str],
        *,
        dest_is_dir: bool | None,
        step: Step,
        parents: bool = False,
    ) -> Tree:
        memo = (source, tuple(exclude), dest_is_dir, parents)
        known = self._trees.get(memo)
        if known is not None:
            return known
        try:
            tree = self.hasher.tree(
                source, exclude=exclude, dest_is_dir=dest_is_dir, parents=parents
            )
        except Exception as error:
            if isinstance(error, ImageDSLError):
                raise error.with_location(step.location) from None
            raise
        self._trees[memo] = tree
        return tree


class _Watched(dict[str, str]):
    """Variables that note each name looked up and not found."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.missing: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self.missing.append(key)
        return super().get(key, default)


def expand_sources(step: Copy | Add, state: BuildState) -> Copy | Add:
    """The COPY/ADD with ``$VAR`` in its source paths expanded with the stage's ARG and ENV
    values (``state``, before the step), as BuildKit expands every COPY/ADD argument.

    A stage on a base image may read variables the base sets, which planning does not know:
    a source path that needs one is refused (the file it names would be a guess)."""
    name = step.kind.upper()

    def expand(word: str) -> str:
        variables = _Watched(state.variables)
        value = expand_word(word, variables)
        if state.inherits and variables.missing:
            missing = variables.missing[0]
            raise StepArgumentError(
                name,
                "source",
                f"{word!r} reads ${missing}, which has no value the plan knows: the stage's "
                "base image may set it, and planning reads no image config. Give it one in "
                f"the build file: a default in .arg({missing!r}, default=...), "
                f"--build-arg {missing}=..., or .env()",
            )
        if value.startswith(("http://", "https://")):
            raise StepArgumentError(
                name, "source", f"{word!r} expands to a URL: add it with dsl.url(..., checksum=)"
            )
        return value

    source = step.source
    try:
        if isinstance(source, ContextSource):
            source = source.expanded(expand, name)
        elif isinstance(source, StagePath):
            source = source.expanded(expand)
            check_stage_copy_dest(name, source, step.dest)  # a path may now be a wildcard
    except ImageDSLError as error:
        raise error.with_location(step.location) from None
    return attrs.evolve(step, source=source)  # type: ignore[arg-type]


def _copy_dest(state: BuildState, dest: str) -> str:
    """A COPY/ADD destination as BuildKit keys it: resolved against WORKDIR, with a trailing
    ``/`` when written with one or as ``.`` (``COPY f .`` and ``COPY f ./`` are one copy)."""
    resolved = state.resolve_path(dest)
    if state.expand(dest) in (".", "") and not resolved.endswith("/"):
        resolved += "/"
    return resolved


def inline_tree(source: InlineFile) -> Tree:
    """The tree of a file written in ``build.py``: that one file, at the destination."""
    size = len(source.content)
    return Tree.from_rows([(".", INLINE_FILE_NAME, "file", source.mode, size, source.digest)])


def _expanded(state: BuildState, word: str | None) -> str | None:
    """``--chown``/``--chmod`` with ``$VAR``s expanded in the state before the step."""
    return None if word is None else state.expand(word)


def _mounted_digest(source: ContextSource, tree: Tree) -> str:
    """What a bind mount's key holds of what it mounts: the tree's digest, or for one file
    mounted as itself only its content and mode (BuildKit keys a mount by content alone:
    the same bytes under another name are the same mount)."""
    lone = None if tree.shape is not None else sole_file(source, tree)
    if lone is None:
        return tree.digest
    return Tree.from_rows([(".", lone.source, "file", lone.mode, lone.size, lone.digest)]).digest


def _lone_file_name(tree: Tree) -> str | None:
    """The name of the one file a tree places at the destination itself (``.``), or None.
    A directory copied whole (its shape known without rows) never is one."""
    if tree.shape is not None:
        return None
    entries = tree.entries
    if len(entries) != 1 or entries[0].placed != ".":
        return None
    return entries[0].source.rpartition("/")[2]


def _dest_is_dir(step: Copy | Add) -> bool | None:
    """Docker's rule: a single file copied to a path not ending in / takes that name, except
    that ``.`` and ``..`` (and paths ending in them) always name directories. ``COPY
    --parents`` always copies into a directory. None for one wildcard: as BuildKit copies it,
    one file matched takes the name, several (or a directory) go into it."""
    assert isinstance(step.source, ContextSource)
    if isinstance(step, Copy) and step.parents:
        return True
    last = step.dest.rstrip("/").rsplit("/", 1)[-1] if step.dest.strip("/") else "/"
    if step.dest.endswith("/") or last in (".", "..") or len(step.source.selectors) > 1:
        return True
    kind = step.source.selectors[0].kind
    return None if kind == "glob" else kind == "dir"

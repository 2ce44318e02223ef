"""The direct OCI backend: layers, image config, manifest and outputs, with no daemon.

:class:`OCIBackend` walks a plan in order. A ``FROM`` brings its base image into the store
(checked, never recompressed); each COPY/ADD/WORKDIR becomes one layer written by
:mod:`imagedsl.backends.oci.layer`, or is found already written; config steps only change
the image config. Layers are content-addressed blobs in the store, found again through a small
index keyed by the step's cache key, what lies below it, the compression and the mtime, so a
rebuild with nothing changed compresses nothing. Every step made real is recorded in the
ledger (:func:`imagedsl.planner.record_step`), so the next ``plan`` shows hits.

A ``COPY --from`` reads what it copies out of the source stage's layers, records the digest
of it (:func:`imagedsl.planner.record_copy_output`) and plans again, so the steps after it are
keyed by content (early cutoff). A ``RUN`` executes in runc over the layers below it
(:mod:`imagedsl.backends.oci.run.executor`); what it changed becomes its layer.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import blake3

from imagedsl import keys
from imagedsl._epoch import check_epoch, epoch_from_env
from imagedsl._validate import clean_container_path
from imagedsl.backends import BuildRequestError, BuildResult, read_secrets
from imagedsl.backends.oci.bases import WantedBase, import_base, layer_index
from imagedsl.backends.oci.copy_entries import (
    Owner,
    Placement,
    archive_entries,
    chmod_bits,
    context_entries,
    inline_entry,
    names_something,
    needed_contents,
    resolve_owner,
    select_from_stage_paths,
    stage_entries,
    unpacked_by_add,
    url_entry,
)
from imagedsl.backends.oci.filesystem import Filesystem, read_members
from imagedsl.backends.oci.image_config import (
    apply_config_step,
    container_config,
    image_author,
    start_config,
)
from imagedsl.backends.oci.layer import LayerEntry
from imagedsl.backends.oci.outputs import (
    BuiltImage,
    Output,
    check_tag,
    load_into_docker,
    write_archive,
    write_layout,
)
from imagedsl.backends.oci.triggers import parse_trigger
from imagedsl.backends.oci.writer import LayerWriter, ParentFactory
from imagedsl.buildstate import BuildState, proxy_env
from imagedsl.contexts import ContextSource
from imagedsl.engine_api import LocalImages
from imagedsl.errors import ImageDSLError
from imagedsl.oci.annotations import BASE_DIGEST, BASE_NAME, CREATED
from imagedsl.oci.blobs import BlobStore, damaged_as_digest_error, scratch_dir
from imagedsl.oci.descriptor import Descriptor
from imagedsl.oci.image import BaseImage, LayerBlob
from imagedsl.oci.layerstream import decompressed
from imagedsl.oci.manifest import canonical_json, manifest_document
from imagedsl.oci.mediatypes import COMPRESSIONS, LAYER_MEDIA_TYPES, OCI_MANIFEST, Compression
from imagedsl.planner import PlanStatus, keep_manifests, record_copy_output, record_step, settle
from imagedsl.steps import (
    Add,
    Copy,
    FromImage,
    InlineFile,
    Run,
    StagePath,
    UrlSource,
    Workdir,
    describe,
)
from imagedsl.store import StoreArea, atomic_write
from imagedsl.treehash import NOTHING_MATCHED, Tree

if TYPE_CHECKING:
    from imagedsl.backends import BuildRequest
    from imagedsl.backends.engine import DockerEngine
    from imagedsl.backends.oci.run.executor import RunExecutor
    from imagedsl.graph import StepNode
    from imagedsl.planner import Plan
    from imagedsl.registry.client import RegistryClient
    from imagedsl.reporting import Reporter
    from imagedsl.store import Store

#: Bump when the bytes a step's layer gets could change for the same inputs (2: extended
#: attributes; 3: COPY --from keeps owners and makes an empty directory, hard links follow
#: their targets, ADD --chown keeps an archive's owners).
LAYER_FORMAT: Final = 3
DEFAULT_EPOCH: Final = 0
COMPRESSION_ENV: Final = "IMAGEDSL_OCI_COMPRESSION"


@attrs.frozen(kw_only=True)
class BuildStats:
    """What a build did, for reports and benchmarks."""

    layers_written: int = 0
    layers_reused: int = 0
    #: Uncompressed tar bytes that went through the compressor.
    bytes_compressed: int = 0
    #: Compressed bytes of the layers written.
    bytes_written: int = 0


@attrs.frozen(kw_only=True)
class OCIBuild:
    """The outcome of :meth:`OCIBackend.build_image`."""

    result: BuildResult
    image: BuiltImage
    stats: BuildStats

    @property
    def layer_cache(self) -> tuple[tuple[str, Path], ...]:
        """The layer-cache entries the build read or wrote (see :class:`BuildResult`)."""
        return self.result.layer_cache


@attrs.define
class _StageState:
    """The filesystem and history a step leaves, and the concrete Dockerfile state after it
    (the plan's state with the base image's config applied: its Env, WorkingDir, User).

    ``start_config`` is the container config the stage started from when the base's ONBUILD
    triggers changed it (None: the base's own), ``cmd_set`` whether a trigger set CMD."""

    layers: tuple[LayerBlob, ...]
    history: tuple[Mapping[str, Any], ...]
    base: BaseImage | None
    state: BuildState
    start_config: Mapping[str, Any] | None = None
    cmd_set: bool = False


def _compression_from_env() -> Compression:
    text = os.environ.get(COMPRESSION_ENV) or "gzip"
    if text not in COMPRESSIONS:
        raise BuildRequestError(f"{COMPRESSION_ENV} must be one of {', '.join(COMPRESSIONS)}")
    return text


def _default_registry() -> RegistryClient:
    from imagedsl.registry.client import RegistryClient

    return RegistryClient()


def _default_engine() -> DockerEngine:
    from imagedsl.backends.engine import require_docker

    # Bases from the engine and loading into it need an engine that answers, not BuildKit.
    return require_docker(buildkit=False)


class OCIBackend:
    """Writes OCI images directly (``imagedsl build --backend oci``).

    ``epoch`` (default ``$SOURCE_DATE_EPOCH``, else 0) is every file's mtime and the image's
    creation time; ``compression`` (default ``$IMAGEDSL_OCI_COMPRESSION``, else gzip) is
    ``gzip``, ``zstd`` or ``none``. ``engine``, ``images`` and ``registry`` make the Docker
    engine's client (outputs into the engine), the engine's image lookups (bases) and the
    registry client, only when a step needs one. ``run_timeout`` (default
    ``$IMAGEDSL_RUN_TIMEOUT``, else none) is how many seconds a RUN may take before it is
    killed.
    """

    name = "oci"

    def __init__(
        self,
        *,
        epoch: int | None = None,
        compression: Compression | None = None,
        engine: Callable[[], DockerEngine] | None = None,
        registry: Callable[[], RegistryClient] | None = None,
        images: Callable[[], LocalImages] | None = None,
        run_timeout: float | None = None,
    ) -> None:
        self.epoch = epoch_from_env() if epoch is None else check_epoch(epoch)
        self.run_timeout = run_timeout
        if run_timeout is None and os.environ.get("IMAGEDSL_RUN_TIMEOUT"):
            from imagedsl.backends.oci.run.runc import timeout_from_env

            self.run_timeout = timeout_from_env()
        self.compression: Compression = (
            _compression_from_env() if compression is None else compression
        )
        self._engine_factory = engine or _default_engine
        self._engine: DockerEngine | None = None
        self._registry_factory = registry or _default_registry
        self._registry: RegistryClient | None = None
        self._images_factory = images or LocalImages
        self._images: LocalImages | None = None

    @property
    def layer_media_types(self) -> frozenset[str]:
        """The media type of the layers this backend writes into the store."""
        return frozenset({LAYER_MEDIA_TYPES[self.compression]})

    def _registry_once(self) -> RegistryClient:
        if self._registry is None:
            self._registry = self._registry_factory()
        return self._registry

    def _images_once(self) -> LocalImages:
        if self._images is None:
            self._images = self._images_factory()
        return self._images

    def _engine_once(self) -> DockerEngine:
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine

    def build(
        self, plan: Plan, request: BuildRequest, *, store: Store, reporter: Reporter
    ) -> BuildResult:
        """Build ``plan``'s target, write the requested output, record what was built."""
        return self.build_image(plan, request, store=store, reporter=reporter).result

    def build_platforms(
        self,
        plan_for: Callable[[str], Plan],
        platforms: Sequence[str],
        request: BuildRequest,
        *,
        store: Store,
        reporter: Reporter,
    ) -> BuildResult:
        """Every platform's image, then their index (see :mod:`.platforms`)."""
        from imagedsl.backends.oci.platforms import build_platforms

        return build_platforms(self, plan_for, platforms, request, store=store, reporter=reporter)

    def build_image(
        self, plan: Plan, request: BuildRequest, *, store: Store, reporter: Reporter
    ) -> OCIBuild:
        """:meth:`build`, returning the image and what the build did as well."""
        read_secrets(request.secrets)  # every secret given must be readable, used or not
        _check_epoch_of(plan, self.epoch)
        check_run_support(plan)
        output = Output.parse(request.output, request.tags) if request.output else None
        run = _Build(self, plan, request, store, reporter)
        try:
            image = run.build_all()
            where = run.write_output(image, output)
        finally:
            if self._registry is not None:
                self._registry.close()
                self._registry = None
            self._images = None  # the next build asks the engine again
        manifest = Descriptor(
            media_type=OCI_MANIFEST, digest=image.manifest_digest, size=len(image.manifest)
        )
        result = BuildResult(
            built=tuple(run.built),
            cached=tuple(run.cached),
            image=where,
            digest=image.manifest_digest,
            manifest=manifest,
            layer_cache=tuple(run.layer_cache),
        )
        return OCIBuild(result=result, image=image, stats=run.stats)


def _check_epoch_of(plan: Plan, epoch: int) -> None:
    """RUN keys hold the epoch RUN steps see: a plan keyed for another one cannot be built."""
    planned = plan.graph.source_date_epoch
    if planned != epoch and any(step.kind == "run" for step in plan.steps):
        raise BuildRequestError(
            f"the plan keys its RUN steps for SOURCE_DATE_EPOCH={planned}, but the backend "
            f"builds with {epoch}: plan with the same epoch"
        )


def check_run_support(plan: Plan) -> None:
    """Before any work: if a RUN of the plan must execute (it is not a hit) and this machine
    cannot execute it (no root, no runc), raise :class:`RuntimeUnavailableError`; if it is
    for a platform this machine runs neither natively nor under emulation,
    :class:`~imagedsl.backends.emulation.EmulationUnavailableError`."""
    step = next((s for s in plan.steps if s.kind == "run" and s.status is not PlanStatus.HIT), None)
    if step is None:
        return
    from imagedsl.backends.emulation import check_emulation
    from imagedsl.backends.oci.run.runc import RuntimeUnavailableError, missing_requirements

    missing = missing_requirements()
    if missing:
        error = RuntimeUnavailableError(missing, step.instruction, f"{step.stage}[{step.index}]")
        raise error.with_location(step.location)
    check_emulation(plan)


def layer_cache_path(store: Store, name: str) -> Path:
    """Where the layer-cache entry ``name`` lives (the blake3 hex of what a layer is keyed by:
    the step key, the diff_ids below, compression, epoch). A remote cache writes entries here."""
    return store.area(StoreArea.OCI_LAYERS) / name[:2] / f"{name}.json"


def step_comment(node: StepNode, buildfile: str) -> str:
    """``imagedsl STAGE[POSITION] [PART] FILE:LINE``: the history comment that tells
    ``imagedsl inspect`` which step and build-file line made a layer. The file is relative to
    the build file's directory (its name alone when outside it), so the image does not depend
    on where the project is checked out; stages planned from Python (no build file) get the
    step alone."""
    text = f"imagedsl {node.stage}[{node.position}]" + (f" {node.part}" if node.part else "")
    location = node.location
    if location is None or buildfile.startswith("<"):
        return text  # stages made in Python, with no build file: the step alone
    shown = Path(location.file)
    with contextlib.suppress(ValueError):
        shown = shown.resolve().relative_to(Path(buildfile).resolve().parent)
    name = shown.as_posix() if not shown.is_absolute() else shown.name
    return f"{text} {name}:{location.line}"


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class _Build:
    """One build: the plan being made real, and what is known so far."""

    def __init__(
        self,
        backend: OCIBackend,
        plan: Plan,
        request: BuildRequest,
        store: Store,
        reporter: Reporter,
    ) -> None:
        self.backend = backend
        self.plan = plan
        self.request = request
        self.store = store
        self.reporter = reporter
        self.blobs = BlobStore(store)
        self.writer = LayerWriter(self.blobs, backend.compression, backend.epoch)
        self.states: dict[int, _StageState] = {}
        self.filesystems: dict[tuple[str, ...], Filesystem] = {}
        self.pending_copies: dict[int, tuple[list[LayerEntry], ParentFactory]] = {}
        self.built: list[str] = []
        self.cached: list[str] = []
        self.stats = BuildStats()
        self.layer_cache: list[tuple[str, Path]] = []
        self._scratch: Iterator[Path] | None = None
        self._spool_dir: Path | None = None
        self._spooled = 0
        self._runner: RunExecutor | None = None
        #: Indices below zero name steps that are not the plan's (a base's ONBUILD triggers).
        self._synthetic = 0

    # -- driving ---------------------------------------------------------------------------

    def build_all(self) -> BuiltImage:
        self.blobs.sweep()
        with scratch_dir(self.blobs) as spool, contextlib.closing(self.writer):
            self._spool_dir = spool
            # Each round measures one COPY --from output, so there are at most as many rounds
            # as steps; the planner then keys what waited for that output.
            for _ in range(len(self.plan.steps) + 1):
                if self._walk():
                    break
                self.plan = settle(self.plan, self.store)
                check_run_support(self.plan)
            else:  # pragma: no cover - each round settles one step for good
                raise BuildRequestError("COPY --from outputs did not settle")
            return self._compose(self.plan.graph.output)

    def _walk(self) -> bool:
        """Make steps real in order; False when a COPY --from output asks for a new plan."""
        for planned in self.plan.steps:
            node = planned.node
            if node.index in self.states:
                continue
            if node.structural_key is not None and node.provisional:
                source = node.sources[0] if node.sources else None
                if source is None or source not in self.states:  # pragma: no cover
                    raise BuildRequestError(f"{planned.instruction}: source stage is not built")
                self._measure_copy_from(node)
                return False
            self.states[node.index] = self._step(node, planned.instruction)
        return True

    def _label(self, node: StepNode, instruction: str) -> str:
        part = f" (layer {node.part})" if node.part is not None else ""
        return f"{node.stage}[{node.position}] {instruction}{part}"

    def _step(self, node: StepNode, instruction: str) -> _StageState:
        kind = node.kind
        if kind == "scratch":
            return _StageState(layers=(), history=(), base=None, state=node.state)
        if kind == "from":
            return self._from(node, instruction)
        assert node.parent is not None
        below = self.states[node.parent]
        if kind == "from-stage":  # FROM <stage>: that stage, as it is (BuildKit adds no history)
            return below
        below = attrs.evolve(below, state=below.state.apply(node.step, self.plan.graph.scope))
        part = f" (layer {node.part})" if node.part is not None else ""
        created_by = f"{instruction}{part} # imagedsl"
        comment = step_comment(node, self.plan.buildfile)
        if node.is_config:
            entry = {"created": _iso(self.backend.epoch), "created_by": created_by,
                     "comment": comment, "empty_layer": True}  # fmt: skip
            return attrs.evolve(below, history=(*below.history, entry))
        label = self._label(node, instruction)
        self.reporter.step_started(label)
        layer = self._layer(node, self._below(node), label)
        history: dict[str, Any] = {
            "created": _iso(self.backend.epoch),
            "created_by": created_by,
            "comment": comment,
        }
        if layer is None:  # a WORKDIR that exists already
            history["empty_layer"] = True
            return attrs.evolve(below, history=(*below.history, history))
        return attrs.evolve(below, layers=(*below.layers, layer), history=(*below.history, history))

    # -- FROM ------------------------------------------------------------------------------

    def _from(self, node: StepNode, instruction: str) -> _StageState:
        step = node.step
        assert isinstance(step, FromImage)
        label = self._label(node, instruction)
        self.reporter.step_started(label)
        wanted = WantedBase(
            reference=step.image,
            platform=node.state.platform,
            identity=node.preimage.get("digest"),
            manifest=None if node.base is None else node.base.manifest,
        )
        base = import_base(
            wanted,
            self.blobs,
            images=self.backend._images_once,
            registry=self.backend._registry_once,
        )
        self._filesystem(base.layers)  # reads (and checks) every base layer once
        record_step(self.store, node, {"oci.manifest": base.manifest_digest})
        self.reporter.step_finished(label, "cached")
        self.cached.append(label)
        history = base.config.get("history") or []
        non_empty = [h for h in history if not h.get("empty_layer")]
        if len(non_empty) != len(base.layers):
            history = [
                {"created_by": f"layer {i} of {base.name or base.manifest_digest}"}
                for i in range(len(base.layers))
            ]
        config = base.config.get("config") or {}
        state = BuildState.from_image_config(config, node.state.platform)
        stage = _StageState(layers=base.layers, history=tuple(history), base=base, state=state)
        triggers = config.get("OnBuild") or []
        return self._run_triggers(node, stage, triggers) if triggers else stage

    def _run_triggers(
        self, node: StepNode, stage: _StageState, triggers: Sequence[str]
    ) -> _StageState:
        """Run a base's ONBUILD triggers, in order, as BuildKit does for ``FROM`` it: each is
        a step on the base, with a key chained from the base's manifest digest."""
        assert stage.base is not None
        base = stage.base
        steps = [parse_trigger(base.reference, str(t), node.step.location) for t in triggers]
        config = start_config(base.config.get("config") or {})
        cmd_set = False
        parent = node
        self.states[node.index] = stage
        for text, step in zip(triggers, steps, strict=True):
            preimage = keys.trigger_preimage(
                parent=parent.key, base=base.manifest_digest, instruction=str(text)
            )
            key = keys.key_of(preimage)
            trigger = attrs.evolve(
                node,
                index=self._next_synthetic_index(),
                parent=parent.index,
                step=step,
                key=key,
                fs_key=key,
                preimage=preimage,
                sources=(),
                deps=(),
                trees=(),
                part=None,
                group=None,
                structural_key=None,
            )
            before = self.states[parent.index]
            after = attrs.evolve(before, state=before.state.apply(step, self.plan.graph.scope))
            cmd_set = apply_config_step(config, step, after.state, cmd_set=cmd_set)
            created_by = f"ONBUILD {text} # imagedsl, from {base.reference}"
            history: dict[str, Any] = {
                "created": _iso(self.backend.epoch),
                "created_by": created_by,
            }
            layer = None
            if isinstance(step, Run | Workdir):
                label = f"{node.stage}[{node.position}] ONBUILD {text}"
                self.reporter.step_started(label)
                layer = self._layer(trigger, before, label)
            if layer is None:
                history["empty_layer"] = True
                after = attrs.evolve(after, history=(*after.history, history))
            else:
                after = attrs.evolve(
                    after, layers=(*after.layers, layer), history=(*after.history, history)
                )
            self.states[trigger.index] = after
            parent = trigger
        final = self.states[parent.index]
        return attrs.evolve(final, start_config=config, cmd_set=cmd_set)

    def _next_synthetic_index(self) -> int:
        self._synthetic -= 1
        return self._synthetic

    # -- filesystems ---------------------------------------------------------------------------

    def _filesystem(self, layers: Sequence[LayerBlob]) -> Filesystem:
        key = tuple(layer.diff_id for layer in layers)
        found = self.filesystems.get(key)
        if found is not None:
            return found
        fs = Filesystem() if not layers else _copy_fs(self._filesystem(layers[:-1]))
        if layers:
            fs.apply(layer_index(self.blobs, layers[-1], fs))
        self.filesystems[key] = fs
        return fs

    # -- layers ------------------------------------------------------------------------------

    def _below(self, node: StepNode) -> _StageState:
        """What a step's layer is written over: for the parts of a COPY split into layers,
        what lies below the whole COPY (so editing one part never re-keys its siblings)."""
        group = node.group
        first = node if group is None else self.plan.graph.nodes[group]
        assert first.parent is not None
        return self.states[first.parent]

    def _cache_path(self, node: StepNode, below: _StageState) -> Path:
        step = node.step
        # A link=True layer does not depend on what is below, unless --chown names users that
        # only the image below can turn into ids.
        link = isinstance(step, Copy | Add) and step.link and not _names_users(step.chown)
        lower = "" if link else "|".join(layer.diff_id for layer in below.layers)
        material = json.dumps(
            [LAYER_FORMAT, node.key, lower, self.backend.compression, self.backend.epoch]
        )
        key = blake3.blake3(material.encode()).hexdigest()
        return layer_cache_path(self.store, key)

    def _cached(self, cache: Path) -> tuple[bool, LayerBlob | None]:
        """(found, layer) from a layer cache entry whose blob is in the store."""
        try:
            saved = json.loads(cache.read_bytes())
            layer = None if saved is None else LayerBlob(**saved)
        except (OSError, ValueError, TypeError):
            return False, None
        return layer is None or self.blobs.intact(layer.digest, layer.size), layer

    def _layer(self, node: StepNode, below: _StageState, label: str) -> LayerBlob | None:
        cache = self._cache_path(node, below)
        self.layer_cache.append((node.key, cache))
        found, layer = (False, None) if self.writer.has(node.index) else self._cached(cache)
        if found:
            self.stats = attrs.evolve(self.stats, layers_reused=self.stats.layers_reused + 1)
            if node.index >= 0:
                record_step(self.store, node, _outputs(layer))
            self.reporter.step_finished(label, "cached")
            self.cached.append(label)
            return layer
        started = time.monotonic()
        if isinstance(node.step, Run):
            layer = self._run(node, below, label)
        else:
            if node.group is not None and not self.writer.has(node.index):
                self._write_parts_ahead(node, below)
            if self.writer.has(node.index):
                taken = self.writer.take(node.index)
                layer = None if taken is None else self._counted(taken)
            else:
                made = self._entries(node, below)
                layer = None if made is None else self._write(*made)
        # A cache entry (checked when read: the blob must be in the store): no fsync needed.
        atomic_write(
            cache, json.dumps(None if layer is None else layer.to_json()).encode(), durable=False
        )
        if node.index >= 0:  # a base's ONBUILD trigger is no step of the plan
            record_step(self.store, node, _outputs(layer), seconds=time.monotonic() - started)
        self.reporter.step_finished(label, "built")
        self.built.append(label)
        return layer

    def _run(self, node: StepNode, below: _StageState, label: str) -> LayerBlob | None:
        """Execute a RUN over ``below``; its change is the layer (None: it changed nothing)."""
        # Here, not at the top: builds with no RUN to execute need none of it.
        from imagedsl.backends.oci.run.executor import RunExecutor, RunInputs, StageSource

        step = node.step
        assert isinstance(step, Run)
        if self._runner is None:
            self._runner = RunExecutor(
                self.blobs,
                secrets=self.request.secrets,
                epoch=self.backend.epoch,
                timeout=self.backend.run_timeout,
                on_output=self.reporter.step_output,
                allow=self.request.allow,
                seccomp=self.request.seccomp,
            )
        stages = tuple(
            StageSource(layers=self.states[i].layers, fs=self._filesystem(self.states[i].layers))
            for i in node.sources
        )
        inputs = RunInputs(
            step=step,
            stage=f"{node.stage}[{node.position}]",
            instruction=describe(step),
            label=label,
            state=self._before(node),
            layers=below.layers,
            lower=self._filesystem(below.layers),
            stages=stages,
            trees=node.trees,
            proxy_env=proxy_env(self.plan.graph.scope.build_args),
        )
        try:
            with self._runner.execute(inputs) as finished:
                if not finished.change.entries:
                    return None
                layer = self._write(list(finished.change.entries), finished.change.parent)
                self._runner.keep(finished, layer)
                return layer
        except BaseException:
            self.reporter.step_finished(label, "failed")
            raise

    def _write_parts_ahead(self, node: StepNode, below: _StageState) -> None:
        """Hand ``node`` and the other missing parts of its split COPY to the writer's pool,
        when more than one is missing (each is written over ``below``, not over another)."""
        parts = [
            step.node
            for step in self.plan.steps
            if step.node.group == node.group and step.node.index not in self.states
        ]
        missing = [
            part
            for part in parts
            if part.index == node.index or not self._cached(self._cache_path(part, below))[0]
        ]
        if not self.writer.parallel(len(missing)):
            return
        self._filesystem(below.layers)  # once, here, not in each process writing parts
        self.writer.write_ahead([(p.index, partial(self._part_entries, p, below)) for p in missing])

    def _part_entries(
        self, node: StepNode, below: _StageState
    ) -> tuple[list[LayerEntry], ParentFactory] | None:
        """:meth:`_entries` of one part of a split COPY, and its trees' manifests kept in the
        store while the part's rows are at hand (where parts are written on other processes,
        :func:`record_step` would otherwise build every part's rows again, on this one)."""
        made = self._entries(node, below)
        keep_manifests(self.store, node)
        return made

    def _write(self, entries: list[LayerEntry], parent: ParentFactory) -> LayerBlob:
        return self._counted(self.writer.write(entries, parent))

    def _counted(self, layer: LayerBlob) -> LayerBlob:
        self.stats = attrs.evolve(
            self.stats,
            layers_written=self.stats.layers_written + 1,
            bytes_compressed=self.stats.bytes_compressed + layer.uncompressed_size,
            bytes_written=self.stats.bytes_written + layer.size,
        )
        return layer

    def _entries(
        self, node: StepNode, below: _StageState
    ) -> tuple[list[LayerEntry], ParentFactory] | None:
        step = node.step
        lower = self._filesystem(below.layers)
        if isinstance(step, Workdir):
            return self._workdir_entries(node, lower)
        assert isinstance(step, Copy | Add)
        if node.index in self.pending_copies:
            return self.pending_copies.pop(node.index)
        if isinstance(step.source, StagePath):  # a COPY --from known by content already
            entries, _, placement = self._copy_from_entries(node, lower)
            return entries, placement.parent
        placement = self._placement(node, lower)
        if isinstance(step.source, UrlSource):
            return [url_entry(step.source, placement, self.blobs)], placement.parent
        if isinstance(step.source, InlineFile):
            return [inline_entry(step.source, placement)], placement.parent
        assert isinstance(step.source, ContextSource)
        root = step.source.context.root
        if not any(tree.entries for tree in node.trees):
            # Only empty directories (BuildKit still makes the destination), or wildcards
            # that matched nothing (it makes nothing): an empty layer, as BuildKit's.
            made = placement.root and any(t.digest != NOTHING_MATCHED for t in node.trees)
            return ([placement.parent(placement.root)] if made else []), placement.parent
        if isinstance(step, Add):
            return self._add_entries(node, step.source, placement), placement.parent
        items = [item for tree in node.trees for item in tree.entries]
        return context_entries(items, root, placement, _named(step.source)), placement.parent

    def _placement(
        self, node: StepNode, lower: Filesystem, single: bool | None = None
    ) -> Placement:
        step = node.step
        assert isinstance(step, Copy | Add)
        before = self._before(node)
        return Placement(
            before.resolve_path(step.dest),
            None if step.link else lower,
            owner=resolve_owner(describe(step), _expanded(before, step.chown), lower.files),
            chmod=chmod_bits(_expanded(before, step.chmod)),
            single_file=_single_file(node) if single is None else single,
            step=describe(step),
        )

    def _add_entries(
        self, node: StepNode, source: ContextSource, placement: Placement
    ) -> list[LayerEntry]:
        root = source.context.root
        plain = []
        entries: list[LayerEntry] = []
        for tree in node.trees:
            for item in tree.entries:
                if unpacked_by_add(root, source, item):
                    host = os.path.join(root, item.source)
                    entries.extend(archive_entries(host, placement, self._spool, "ADD"))
                else:
                    plain.append(item)
        if plain:
            entries.extend(context_entries(plain, root, placement, _named(source)))
        return entries

    def _workdir_entries(
        self, node: StepNode, lower: Filesystem
    ) -> tuple[list[LayerEntry], ParentFactory] | None:
        workdir = self._before(node).apply(node.step, self.plan.graph.scope).workdir
        path = clean_container_path("/" + workdir).strip("/")  # /tmp/.. makes nothing
        if not path:
            return None
        head, base = posixpath.split(path)
        real = posixpath.join(lower.resolve(head), base) if head else base
        found = lower.get(real)
        if found is not None and found.kind == "symlink":
            real = lower.resolve(real)
            found = lower.get(real)
        if found is not None:
            return None
        owner = Owner()
        before_user = self._before(node).user
        if before_user:
            try:  # BuildKit makes the directory owned by the USER in force
                owner = resolve_owner("WORKDIR", before_user, lower.files)
            except ImageDSLError:
                owner = Owner()
        placement = Placement("/" + real, lower, owner=owner, chmod=None, single_file=False)
        return [placement.parent(real)], placement.parent

    def _before(self, node: StepNode) -> BuildState:
        """The concrete state a step starts from (for a part of a split COPY, the state before
        the whole COPY, which is the same: a COPY changes no state)."""
        return self._below(node).state

    def _spool(self) -> Path:
        assert self._spool_dir is not None
        self._spooled += 1
        return self._spool_dir / f"{self._spooled:08d}"

    # -- COPY --from -------------------------------------------------------------------------

    def _copy_from_entries(
        self, node: StepNode, lower: Filesystem
    ) -> tuple[list[LayerEntry], Tree, Placement]:
        step = node.step
        assert isinstance(step, Copy)
        assert isinstance(step.source, StagePath)
        source_state = self.states[node.sources[0]]
        source_fs = self._filesystem(source_state.layers)
        files, single = select_from_stage_paths(
            source_fs, step.source.paths, step.exclude, describe(step)
        )
        contents = self._read_contents(source_fs, source_state.layers, needed_contents(files))
        placement = self._placement(node, lower, single)
        entries, tree = stage_entries(files, contents, placement, keep_owners=step.chown is None)
        if not files and placement.root and names_something(source_fs, step.source.paths):
            entries = [placement.parent(placement.root)]  # an empty directory: BuildKit makes it
        return entries, tree, placement

    def _measure_copy_from(self, node: StepNode) -> None:
        """Read what a COPY --from takes and record its digest (the plan is then redone)."""
        assert node.parent is not None
        below = self.states[node.parent]
        lower = self._filesystem(below.layers)
        entries, tree, placement = self._copy_from_entries(node, lower)
        record_copy_output(self.store, node, tree)
        self.pending_copies[node.index] = (entries, placement.parent)

    def _read_contents(
        self, fs: Filesystem, layers: Sequence[LayerBlob], wanted: set[str]
    ) -> dict[str, Path]:
        by_layer: dict[int, dict[str, Path]] = {}
        contents: dict[str, Path] = {}
        for path in sorted(wanted):
            origin = fs.origin.get(path)
            if origin is None:
                continue
            spooled = self._spool()
            by_layer.setdefault(origin, {})[path] = spooled
            contents[path] = spooled
        for position, names in sorted(by_layer.items()):
            layer = layers[position]
            with (
                self.blobs.open(layer.digest) as raw,
                damaged_as_digest_error(raw, f"layer {layer.digest}"),
            ):
                inner = decompressed(raw)
                found = read_members(inner, names, layer.digest)
                while inner.read(1 << 20):
                    pass
                raw.drain()
            missing = set(names) - found
            if missing:
                raise BuildRequestError(
                    f"layer {layer.digest} lacks {sorted(missing)[:3]} although its index lists them"
                )
        return contents

    # -- the image ---------------------------------------------------------------------------

    def _compose(self, node: StepNode) -> BuiltImage:
        state = self.states[node.index]
        chain = self._chain(node)
        base = state.base
        base_config: Mapping[str, Any] = base.config if base is not None else {}
        states = [self.states[n.index].state for n in chain]
        start = state.start_config
        if start is None:
            # FROM scratch: BuildKit's empty image has WorkingDir / (and Docker's PATH).
            empty = {"WorkingDir": "/"} if base is None else {}
            start = start_config(base_config.get("config") or empty)
        steps = [n.step for n in chain]
        container = container_config(steps, states, start, cmd_set=state.cmd_set)
        os_name, _, rest = node.state.platform.partition("/")
        arch, _, variant = rest.partition("/")
        config: dict[str, Any] = {
            "architecture": base_config.get("architecture", arch),
            "os": base_config.get("os", os_name),
            "created": _iso(self.backend.epoch),
            "config": container,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in state.layers]},
            "history": [dict(h) for h in state.history],
        }
        variant = base_config.get("variant", variant)
        if variant:
            config["variant"] = variant
        author = image_author(steps, base_config)
        if author is not None:
            config["author"] = author
        config_bytes = canonical_json(config)
        config_digest = self.blobs.put(config_bytes)
        annotations = {CREATED: _iso(self.backend.epoch)}
        if base is not None:
            if base.name is not None:  # a name, never a local path (same archive, same image)
                annotations[BASE_NAME] = base.name
            annotations[BASE_DIGEST] = base.manifest_digest
        manifest = manifest_document(config_digest, len(config_bytes), state.layers, annotations)
        manifest_digest = self.blobs.put(manifest)
        return BuiltImage(
            manifest=manifest,
            manifest_digest=manifest_digest,
            config_digest=config_digest,
            layers=state.layers,
        )

    def _chain(self, node: StepNode) -> list[StepNode]:
        nodes = self.plan.graph.nodes
        chain = []
        current: StepNode | None = node
        while current is not None:
            chain.append(current)
            current = None if current.parent is None else nodes[current.parent]
        chain.reverse()
        return chain

    # -- outputs -------------------------------------------------------------------------------

    def write_output(self, image: BuiltImage, output: Output | None) -> str:
        tags = [output.tag] if output is not None and output.tag else list(self.request.tags)
        if output is None:
            return image.manifest_digest
        if output.kind != "docker":  # -t names become the layout's tags: they must be valid
            tags = [check_tag(tag, "-t") for tag in tags]
        if output.kind == "oci":
            assert output.path is not None
            write_layout(Path(output.path), image, tags, self.blobs)
            return f"oci:{output.path}" + (f":{tags[0]}" if tags else "")
        if output.kind in ("oci-archive", "docker-archive"):
            assert output.path is not None
            write_archive(
                Path(output.path),
                image,
                tags,
                self.blobs,
                mtime=self.backend.epoch,
                docker_names=output.docker_names(),
            )
            return f"{output.kind}:{output.path}" + (f":{tags[0]}" if tags else "")
        engine = self.backend._engine_once()
        with scratch_dir(self.blobs) as tmp:
            archive = tmp / "image.tar"
            write_archive(archive, image, tags, self.blobs, mtime=self.backend.epoch)
            return load_into_docker(archive, tags, engine)


def _expanded(state: BuildState, word: str | None) -> str | None:
    """``--chown``/``--chmod`` with ``$VAR``s expanded in the concrete state before the step."""
    return None if word is None else state.expand(word)


def _names_users(chown: str | None) -> bool:
    return chown is not None and not all(part.isdigit() for part in chown.split(":"))


def _copy_fs(fs: Filesystem) -> Filesystem:
    copy = Filesystem()
    copy.entries = dict(fs.entries)
    copy.origin = dict(fs.origin)
    copy.files = dict(fs.files)
    copy.layers = list(fs.layers)
    return copy


def _outputs(layer: LayerBlob | None) -> dict[str, Any]:
    if layer is None:
        return {"oci.layer": None}
    return {"oci.layer": {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size}}


def _named(source: ContextSource) -> frozenset[str]:
    """The paths a source's selectors name (not globs): the only sources the plan may have
    followed as symlinks (see :func:`~.copy_entries.context_entries`)."""
    return frozenset(s.path for s in source.selectors if s.kind != "glob")


def _single_file(node: StepNode) -> bool:
    step = node.step
    assert isinstance(step, Copy | Add)
    if isinstance(step.source, UrlSource | InlineFile):
        return True
    if not isinstance(step.source, ContextSource):
        return False
    return any(e.placed == "." for tree in node.trees for e in tree.entries)


__all__ = [
    "BuildStats",
    "OCIBackend",
    "OCIBuild",
    "check_run_support",
    "layer_cache_path",
]

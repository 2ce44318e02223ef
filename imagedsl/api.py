"""The library behind the ``imagedsl`` command: everything the CLI does, as calls.

``import imagedsl as dsl`` gives the vocabulary of build files. This module gives the
plumbing, for tools that drive builds themselves::

    from imagedsl.api import BuildSession

    session = BuildSession("build.py", "app", build_args={"VERSION": "1.2"})
    plan = session.plan()                       # statuses and reasons, no daemon
    for step in plan.steps:
        print(step.stage, step.index, step.status, step.reasons)
    outcome = session.build("oci", output="oci:out:latest", push="registry.example/app:1.2")

A :class:`BuildSession` holds one build file, one target and the options every command shares
(build args, platform, store, registry trust, a :class:`~imagedsl.reporting.Reporter`). Each
method is one command: :meth:`~BuildSession.plan`, :meth:`~BuildSession.check`,
:meth:`~BuildSession.build`,
:meth:`~BuildSession.lower`, :meth:`~BuildSession.resolve_bases`, and the remote cache's
:meth:`~BuildSession.import_cache`; :func:`push_image` pushes an existing layout or archive,
:func:`inspect_image` reads any image and :func:`write_html` draws what it found.
Progress and messages go to the reporter's hooks only: the library prints nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from imagedsl.backends import (
    Backend,
    BuildRequest,
    BuildRequestError,
    BuildResult,
    SecretSource,
    check_entitlement_names,
    check_entitlements,
    get_backend,
    required_entitlement,
)
from imagedsl.loader import BuildFile, load_buildfile, split_spec
from imagedsl.planner import (
    Plan,
    PlannedStep,
    PlanStatus,
    plan,
    record_copy_output,
    record_step,
    settle,
    union_plans,
)
from imagedsl.reporting import Reporter
from imagedsl.store import Record, Store, StoreWarning, default_store_path

if TYPE_CHECKING:
    from imagedsl.check import CheckReport
    from imagedsl.inspect import InspectReport
    from imagedsl.lockfile import LockFile
    from imagedsl.maintenance import PruneReport, VerifyReport
    from imagedsl.registry.client import PushResult, RegistryClient
    from imagedsl.remote_cache import RemoteCache

__all__ = [
    "Backend",
    "BuildFile",
    "BuildOutcome",
    "BuildRequest",
    "BuildResult",
    "BuildSession",
    "Plan",
    "PlanStatus",
    "PlannedStep",
    "Record",
    "Reporter",
    "SecretSource",
    "Store",
    "StoreWarning",
    "default_store_path",
    "get_backend",
    "import_dockerfile",
    "inspect_image",
    "load_buildfile",
    "open_store",
    "parse_platforms",
    "plan",
    "prune_store",
    "push_image",
    "record_copy_output",
    "record_step",
    "settle",
    "split_spec",
    "verify_store",
    "write_html",
]


def parse_platforms(value: str | Sequence[str]) -> tuple[str, ...]:
    """``--platform``: one platform or a comma-separated list (or a sequence of either), each
    validated and normalised as BuildKit's are (``linux/aarch64`` is ``linux/arm64``), each
    once; :class:`~imagedsl.errors.PlatformError` (exit 2) names a value that is none."""
    from imagedsl.errors import PlatformError
    from imagedsl.oci.platform import canonical_platforms

    try:
        return canonical_platforms(value)
    except ValueError as error:
        shown = value if isinstance(value, str) else ",".join(value)
        raise PlatformError(shown, str(error)) from None


def open_store(path: str | os.PathLike[str] | None = None) -> Store:
    """The store at ``path``, else ``$IMAGEDSL_STORE``, else the user cache directory."""
    return Store(default_store_path(path))


def verify_store(store: Store | str | os.PathLike[str] | None = None) -> VerifyReport:
    """``imagedsl cache verify``: check everything the store holds against what names it
    (every blob hashed, every snapshot compared byte by byte); remove and report the damaged
    (see :mod:`imagedsl.maintenance`)."""
    from imagedsl.maintenance import verify_store as verify

    return verify(store if isinstance(store, Store) else open_store(store))


def prune_store(
    store: Store | str | os.PathLike[str] | None = None,
    *,
    older_than: float | None = None,
    max_size: int | None = None,
) -> PruneReport:
    """``imagedsl cache prune``: remove what was not used for ``older_than`` seconds, then the
    least recently used until at most ``max_size`` bytes are left (see
    :mod:`imagedsl.maintenance`)."""
    from imagedsl.maintenance import prune_store as prune

    chosen = store if isinstance(store, Store) else open_store(store)
    return prune(chosen, older_than=older_than, max_size=max_size)


@attrs.frozen(kw_only=True)
class BuildOutcome:
    """What :meth:`BuildSession.build` did: the backend's result, and where it was pushed."""

    result: BuildResult
    #: One entry per repository the image was pushed to (``--push``).
    pushed: tuple[PushResult, ...] = ()
    #: The reference the remote cache was exported to (``--cache-to``), if any.
    cache_exported_to: str | None = None


class BuildSession:
    """One build file and target, with the options every command shares.

    ``buildfile`` is a path (or ``FILE:TARGET``, or a directory holding ``build.py``) or a
    :class:`BuildFile` already loaded; ``target`` None means the build file's default.
    ``store`` is a :class:`Store` or a directory (default: :func:`open_store`).
    ``insecure`` allows plain HTTP to registries off loopback. ``allow`` grants entitlements
    as BuildKit's ``--allow`` does (``network.host``: RUN steps with ``network="host"`` may use
    the host's network); a plan says which steps need one.
    """

    def __init__(
        self,
        buildfile: str | os.PathLike[str] | BuildFile | None = None,
        target: str | None = None,
        *,
        build_args: Mapping[str, str] | None = None,
        platform: str | Sequence[str] | None = None,
        store: Store | str | os.PathLike[str] | None = None,
        reporter: Reporter | None = None,
        insecure: bool = False,
        allow: Sequence[str] = (),
    ) -> None:
        self.allow = check_entitlement_names(allow)
        if isinstance(buildfile, BuildFile):
            self.buildfile = buildfile
        else:
            path, named = split_spec(None if buildfile is None else os.fspath(buildfile))
            self.buildfile = load_buildfile(path)
            target = target or named
        self.target = self.buildfile.target(target)
        self.build_args: Mapping[str, str] = dict(build_args or {})
        #: The target platforms: ``platform`` (one, a comma-separated list, or a sequence),
        #: else the build file's ``dsl.platforms`` for the target; empty: this machine's.
        self.platforms = (
            parse_platforms(platform)
            if platform is not None
            else self.buildfile.default_platforms(self.target)
        )
        #: The one target platform, when the session has one (None: several, or the default).
        self.platform = self.platforms[0] if len(self.platforms) == 1 else None
        self.store = store if isinstance(store, Store) else open_store(store)
        self.reporter = reporter or Reporter()
        self.insecure = insecure

    @property
    def path(self) -> Path:
        """The build file's path as given."""
        return self.buildfile.path

    # -- plan ----------------------------------------------------------------------------------

    def plan(self, *, cache_from: Sequence[str] = ()) -> Plan:
        """Plan the target without running anything; ``cache_from`` imports remote caches'
        records first (and notes on each hit they made)."""
        added = self.import_cache(cache_from) if cache_from else {}
        planned = _note_entitlements(self._plan(), self.allow)
        return _note_remote_hits(planned, added) if added else planned

    def _plan(self) -> Plan:
        if len(self.platforms) <= 1:
            return self._plan_for(self.platform)
        return union_plans([(name, self._plan_for(name)) for name in self.platforms])

    def _plan_for(self, platform: str | None) -> Plan:
        return self.buildfile.plan(
            self.target,
            store=self.store,
            build_args=self.build_args,
            platform=platform,
            reporter=self.reporter,
        )

    # -- check ---------------------------------------------------------------------------------

    def check(self, plan: Plan | None = None) -> CheckReport:
        """Apply ``imagedsl check``'s rules to the target (planned now, or ``plan``): no
        daemon, no build. See :mod:`imagedsl.check` and docs/rules.md."""
        from imagedsl.check.engine import check_plan
        from imagedsl.check.model import CheckReport

        planned = self._plan() if plan is None else plan
        if not planned.per_platform:
            return check_plan(planned, store=self.store, build_args=self.build_args)
        rows = {step.key: row for row, step in enumerate(planned.steps)}
        findings = []
        for _, single in planned.platform_plans():
            report = check_plan(single, store=self.store, build_args=self.build_args)
            findings += [
                attrs.evolve(f, row=rows[single.steps[f.row].key]) for f in report.findings
            ]
        return CheckReport.of(planned.buildfile, planned.target, findings)

    def resolve_bases(self) -> LockFile:
        """Pin every registry or ``docker-daemon:`` base the build file leaves unpinned, in the
        ``imagedsl.lock`` beside the build file: the local engine's image where it has one for
        the platform (no registry is asked), else what the registry's tag names now. Each pin
        is the image's config digest (its content identity) and, when known, the manifest
        digest that pulls it; the next plan keys the bases by content."""
        from imagedsl.bases import BaseNotFoundError, engine_pin
        from imagedsl.engine_api import LocalImages
        from imagedsl.lockfile import LockFile, Pin, unpinned_bases
        from imagedsl.oci.platform import Platform

        lock = LockFile.beside(self.path)
        wanted = unpinned_bases(self._plan())
        images = LocalImages()
        resolved: list[tuple[str, str, Pin]] = []
        remote = {}
        for (name, platform), image in sorted(wanted.items()):
            pin = engine_pin(images, image, platform)
            if pin is not None:
                resolved.append((name, platform, pin))
            elif image.transport == "registry":
                remote[name, platform] = image
            else:
                held = images.absence() if images.engine is None else "has no such image"
                raise BaseNotFoundError(str(image), None, (("the local engine", held),))
        if remote:
            with self._registry() as client:
                for (name, platform), image in sorted(remote.items()):
                    found = client.resolve_image(image, Platform.parse(platform))
                    resolved.append(
                        (name, platform, Pin(found.config.digest, found.manifest.digest))
                    )
        lock = lock.updated(resolved)
        lock.write()
        self.reporter.bases_pinned(len(lock.pins), str(lock.path))
        return lock

    # -- remote cache --------------------------------------------------------------------------

    def import_cache(self, references: Sequence[str]) -> dict[str, str]:
        """Import each remote cache's records into the store (``--cache-from``): key -> the
        cache that added it. A reference with no cache yet is reported and skipped."""
        added: dict[str, str] = {}
        with self._registry() as client:
            for text in references:
                found = self._fetch_cache(client, text)
                if found is not None:
                    added.update(dict.fromkeys(found[1], str(found[0].reference)))
        return added

    def _fetch_cache(
        self, client: RegistryClient, text: str
    ) -> tuple[RemoteCache, frozenset[str]] | None:
        from imagedsl import remote_cache
        from imagedsl.registry.errors import NotFoundError

        reference = remote_cache.parse_cache_reference(text)
        try:
            cache = remote_cache.fetch_cache(client, reference, self.store)
        except NotFoundError:
            self.reporter.cache_missing(str(reference))
            return None
        imported = remote_cache.import_records(self.store, cache.bundle)
        self.reporter.cache_imported(
            str(reference), len(cache.bundle.records), len(imported.new), len(cache.bundle.blobs)
        )
        return cache, imported.new

    # -- build ---------------------------------------------------------------------------------

    def build(
        self,
        backend: str | Backend = "docker",
        *,
        output: str | None = None,
        tags: Sequence[str] = (),
        secrets: Sequence[SecretSource | str] = (),
        progress: str = "auto",
        push: str | None = None,
        cache_to: str | None = None,
        cache_from: Sequence[str] = (),
        seccomp: bool = True,
    ) -> BuildOutcome:
        """Plan, then let ``backend`` (a name or a :class:`Backend`) build the misses.

        ``push`` (a ``HOST/NAME[:TAG]``; ``tags`` add tags), ``cache_to`` and ``cache_from``
        (``registry:REF``) need a backend that writes the image into the store (``oci``).
        A step that needs an entitlement the session was not given (``allow``) stops the
        build before anything runs. ``seccomp=False`` runs the OCI backend's RUN steps with
        no seccomp profile (``--no-seccomp``: for machines without seccomp support).
        """
        chosen = get_backend(backend) if isinstance(backend, str) else backend
        request = BuildRequest(
            tags=tuple(tags),
            output=output,
            build_args=self.build_args,
            platform=self.platform,
            secrets=tuple(
                s if isinstance(s, SecretSource) else SecretSource.parse(s) for s in secrets
            ),
            progress=progress,
            allow=self.allow,
            seccomp=seccomp,
            push=bool(push),
        )
        if not (push or cache_to or cache_from):
            planned = self._plan()
            check_entitlements(planned, self.allow)
            return BuildOutcome(result=self._run_backend(chosen, planned, request))
        # A multi-platform docker build brings its images and index into the store to push.
        from_store = bool(push) and len(self.platforms) > 1 and not (cache_to or cache_from)
        if not chosen.layer_media_types and not from_store:
            raise BuildRequestError(
                f"--push, --cache-to and --cache-from need --backend oci (a backend that writes "
                f"the image into the store); {chosen.name!r} does not"
            )
        return self._build_with_registry(chosen, request, push, cache_to, cache_from)

    def _build_with_registry(
        self,
        backend: Backend,
        request: BuildRequest,
        push: str | None,
        cache_to: str | None,
        cache_from: Sequence[str],
    ) -> BuildOutcome:
        from imagedsl import remote_cache
        from imagedsl.registry.push import push_manifest

        target_cache = cache_to and remote_cache.parse_cache_reference(cache_to, "--cache-to")
        pushed: list[PushResult] = []
        exported: str | None = None
        with self._registry() as client:
            caches = [self._fetch_cache(client, text) for text in cache_from]
            planned = self._plan()
            check_entitlements(planned, request.allow)
            hits = {step.key for step in planned.steps if step.status is PlanStatus.HIT}
            for found in caches:
                if found is not None:
                    remote_cache.import_layers(
                        client,
                        found[0],
                        self.store,
                        hits,
                        media_types=backend.layer_media_types,
                    )
            result = self._run_backend(backend, planned, request)
            if push:
                if result.manifest is None:  # pragma: no cover - layer_media_types promised one
                    raise BuildRequestError(f"backend {backend.name!r} made no image to push")
                for done in push_manifest(
                    client,
                    self.store,
                    result.manifest,
                    push,
                    request.tags,
                    mount_from=registry_bases(planned),
                ):
                    self.reporter.image_pushed(str(done.reference), done.reference.name, done.tags)
                    pushed.append(done)
            if target_cache:
                bundle = remote_cache.collect(self.store, self._plan(), result.layer_cache)
                host = target_cache.name.partition("/")[0]
                mounts = [
                    p.reference.name.partition("/")[2]
                    for p in pushed
                    if p.reference.name.partition("/")[0] == host
                ]
                done_cache = remote_cache.export_cache(
                    client, self.store, bundle, target_cache, mount_from=mounts
                )
                exported = str(done_cache.reference)
                self.reporter.cache_exported(exported, len(bundle.records), len(bundle.blobs))
        return BuildOutcome(result=result, pushed=tuple(pushed), cache_exported_to=exported)

    def _run_backend(self, backend: Backend, planned: Plan, request: BuildRequest) -> BuildResult:
        """One platform: ``planned`` built. Several: each platform planned again when its turn
        comes (what the platforms before it built is then a hit), and one image index."""
        if not planned.per_platform:
            return backend.build(planned, request, store=self.store, reporter=self.reporter)
        first = planned.per_platform[0]

        def plan_for(name: str) -> Plan:
            # The first platform was just planned; the others see what it built.
            return first if name == self.platforms[0] else self._plan_for(name)

        return backend.build_platforms(
            plan_for, self.platforms, request, store=self.store, reporter=self.reporter
        )

    # -- lower ---------------------------------------------------------------------------------

    def lower(self, output_dir: str | os.PathLike[str] | None = None) -> str:
        """The Dockerfile the target lowers to; with ``output_dir``, also write it there with
        exactly the context it needs."""
        from imagedsl.backends.dockerfile import lowering

        # One Dockerfile serves every platform (its FROM --platform lines say which stages are
        # native): the first platform's plan lowers it, unless a COPY source reads a platform
        # ARG (each platform's build lowers its own Dockerfile then).
        plans = self._plan().platform_plans()
        planned = plans[0][1]
        for name, other in plans[1:]:
            for mine, theirs in zip(planned.steps, other.steps, strict=False):
                if mine.instruction != theirs.instruction:
                    raise lowering.LoweringError(
                        mine.instruction,
                        f"is {theirs.instruction!r} for {name}: one Dockerfile cannot serve "
                        "these platforms; lower one platform at a time",
                        location=mine.node.location,
                    )
        if output_dir is not None:
            lowering.write_build_dir(planned, Path(output_dir))
        return lowering.lower_to_dockerfile(planned).text

    # -- helpers -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _registry(self) -> Iterator[RegistryClient]:
        from imagedsl.registry.client import RegistryClient

        with RegistryClient(insecure=self.insecure, progress=self.reporter) as client:
            yield client


def import_dockerfile(
    path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None
) -> str:
    """``imagedsl import``: the build.py for a Dockerfile (its context: the Dockerfile's
    directory, its ``.dockerignore`` the ignore list); ``output`` is where it will be written."""
    from imagedsl.importer import import_dockerfile as translate

    return translate(path, output)


def push_image(
    source: str,
    reference: str,
    tags: Sequence[str] = (),
    *,
    insecure: bool = False,
    reporter: Reporter | None = None,
) -> tuple[PushResult, ...]:
    """Push an OCI layout or archive (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``) to
    ``reference`` (``HOST/NAME[:TAG]``) and ``tags``; one result per repository."""
    from imagedsl.registry.client import RegistryClient
    from imagedsl.registry.push import open_layout, push_manifest

    reporter = reporter or Reporter()
    pushed = []
    with (
        open_layout(source) as (blobs, manifest),
        RegistryClient(insecure=insecure, progress=reporter) as client,
    ):
        for done in push_manifest(client, blobs, manifest, reference, tags):
            reporter.image_pushed(str(done.reference), done.reference.name, done.tags)
            pushed.append(done)
    return tuple(pushed)


def inspect_image(
    source: str,
    *,
    store: Store | None = None,
    platform: str = "linux/amd64",
    insecure: bool = False,
    reporter: Reporter | None = None,
) -> InspectReport:
    """What ``imagedsl inspect`` reports of an image: per layer its sizes, step and changes;
    dive's wasted bytes and efficiency; credentials in any layer (see
    :mod:`imagedsl.inspect`)."""
    from imagedsl.inspect import inspect_image as inspect

    return inspect(source, store=store, platform=platform, insecure=insecure, reporter=reporter)


def write_html(
    path: str | os.PathLike[str], report: InspectReport, plan: Plan | None = None
) -> None:
    """Write ``report`` (and ``plan``'s graph and build file) as one self-contained page."""
    from imagedsl.inspect import html

    html.write(path, report, plan)


def registry_bases(planned: Plan) -> list[str]:
    """The repositories (``HOST/NAME``) of a plan's registry bases: a push mounts from them."""
    from imagedsl.steps import FromImage

    names = set()
    for step in planned.steps:
        base = step.node.step
        if isinstance(base, FromImage) and base.image.transport == "registry":
            names.add(base.image.name)
    return sorted(names)


def _note_entitlements(planned: Plan, allow: frozenset[str]) -> Plan:
    """Say on each step that needs an entitlement whether the build may use it."""
    steps = []
    for step in planned.steps:
        needed = required_entitlement(step.node.step)
        if needed is not None:
            note = (
                f"runs on the host's network: allowed by --allow {needed}"
                if needed in allow
                else f"needs --allow {needed} to build (the host's network)"
            )
            step = attrs.evolve(step, notes=(*step.notes, note))
        steps.append(step)
    return attrs.evolve(planned, steps=tuple(steps))


def _note_remote_hits(planned: Plan, added: Mapping[str, str]) -> Plan:
    """Say on each hit that a remote cache (not a local build) made it one."""
    steps = tuple(
        attrs.evolve(step, notes=(*step.notes, f"hit from the remote cache {added[step.key]}"))
        if step.status is PlanStatus.HIT and step.key in added
        else step
        for step in planned.steps
    )
    return attrs.evolve(planned, steps=steps)

"""The ``imagedsl`` command: a short pipeline of small functions per subcommand.

Exit codes: 0 success, 1 a failure outside the user's input, 2 bad input (a build file error,
an unknown target, a bad option), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import attrs

from imagedsl import __version__
from imagedsl.backends import (
    BACKENDS,
    Backend,
    BuildRequest,
    BuildRequestError,
    BuildResult,
    SecretSource,
    get_backend,
)
from imagedsl.errors import ImageDSLError, SourceLocation
from imagedsl.ledger import Store, StoreWarning, default_store_path
from imagedsl.loader import load_buildfile, split_spec
from imagedsl.lockfile import LockFile, lock_key
from imagedsl.oci.reference import ImageReference
from imagedsl.reporting import Reporter
from imagedsl.steps import FromImage

if TYPE_CHECKING:
    from imagedsl.planner import Plan
    from imagedsl.registry.client import PushResult, RegistryClient
    from imagedsl.remote_cache import RemoteCache

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class TerminalReporter(Reporter):
    """Progress on stderr while a big context is hashed (a live line on a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._live = stream.isatty()
        self._total = (0, 0)
        self._last = 0.0
        self._shown = False

    def hashing_started(self, root: str, files: int, total_bytes: int) -> None:
        self._total = (files, total_bytes)
        self._last = time.monotonic()
        self._shown = files >= 2000 or total_bytes >= 64 << 20
        if self._shown:
            self._stream.write(
                f"hashing {files} files ({_mib(total_bytes)}) in {_shorten(root)}"
                + ("" if self._live else "\n")
            )
            self._stream.flush()

    def hashing_progress(self, root: str, files_done: int, bytes_done: int) -> None:
        now = time.monotonic()
        if not (self._shown and self._live) or now - self._last < 0.2:
            return
        self._last = now
        files, total = self._total
        self._stream.write(
            f"\rhashing {_shorten(root)}: {files_done}/{files} files, "
            f"{_mib(bytes_done)}/{_mib(total)}"
        )
        self._stream.flush()

    def hashing_finished(self, root: str) -> None:  # noqa: ARG002 - the hook's signature
        if self._shown and self._live:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def step_output(self, label: str, line: str) -> None:  # noqa: ARG002 - the hook's signature
        """A backend's progress line (BuildKit's, for the docker backend), printed as is."""
        self._stream.write(line + "\n")
        self._stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and ``python -m imagedsl``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StoreWarning)
            code: int = args.run(args)
        for warning in caught:
            if issubclass(warning.category, StoreWarning):
                print(f"warning: {warning.message}", file=sys.stderr)
            else:  # pragma: no cover - other warnings pass through untouched
                warnings.warn_explicit(
                    warning.message, warning.category, warning.filename, warning.lineno
                )
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``imagedsl plan --json | head``): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ImageDSLError as error:
        print(_format_error(error), file=sys.stderr)
        # A failed build (not a mistake in the input) says so with its own exit status.
        exit_code = getattr(error, "exit_code", EXIT_USAGE)
        return exit_code if isinstance(exit_code, int) else EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagedsl", description="Container images from Python, with exact caching."
    )
    parser.add_argument("--version", action="version", version=f"imagedsl {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    plan = commands.add_parser(
        "plan", help="show every step, its cache key, hit or miss, and why each miss misses"
    )
    plan.add_argument(
        "spec", nargs="?", metavar="FILE[:TARGET]", help="build file and target (./build.py)"
    )
    output = plan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the plan as JSON (schema 1)")
    output.add_argument("--dot", action="store_true", help="print the graph as Graphviz DOT")
    plan.add_argument(
        "--resolve",
        action="store_true",
        help="look up unpinned registry bases (HEAD on the manifest) and pin them in imagedsl.lock",
    )
    plan.add_argument(
        "--insecure", action="store_true", help="allow plain HTTP to registries off loopback"
    )
    _cache_from_option(plan)
    _common_options(plan)
    plan.set_defaults(run=run_plan)

    build = commands.add_parser("build", help="build a target with a backend")
    build.add_argument("spec", nargs="?", metavar="FILE[:TARGET]", help="build file and target")
    build.add_argument(
        "--backend", default="docker", choices=sorted(BACKENDS), help="how to build (docker)"
    )
    build.add_argument(
        "-t", "--tag", action="append", default=[], metavar="NAME", help="image name (repeatable)"
    )
    build.add_argument(
        "--output",
        metavar="DEST",
        help="oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:TAG] or docker[:TAG]",
    )
    build.add_argument(
        "--progress", default="auto", choices=("auto", "plain", "quiet"), help="output style"
    )
    build.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="id=NAME,src=PATH",
        help="a secret for RUN --mount=type=secret (src=PATH or env=VAR; repeatable)",
    )
    _registry_build_options(build)
    _common_options(build)
    build.set_defaults(run=run_build)

    _push_command(commands)

    lower = commands.add_parser("lower", help="print the Dockerfile a target lowers to")
    lower.add_argument("spec", nargs="?", metavar="FILE[:TARGET]", help="build file and target")
    lower.add_argument(
        "-o", "--output-dir", metavar="DIR", help="write the Dockerfile and its context into DIR"
    )
    _common_options(lower)
    lower.set_defaults(run=run_lower)

    targets = commands.add_parser("targets", help="list the targets of a build file")
    targets.add_argument("spec", nargs="?", metavar="FILE", help="build file (./build.py)")
    targets.set_defaults(run=run_targets)

    cache = commands.add_parser("cache", help="inspect the store")
    cache_commands = cache.add_subparsers(title="cache commands", metavar="ACTION")
    du = cache_commands.add_parser("du", help="bytes used by each part of the store")
    du.add_argument("--store", metavar="DIR", help="store directory")
    du.set_defaults(run=run_cache_du)
    return parser


def _cache_from_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-from",
        action="append",
        default=[],
        metavar="registry:REF",
        help="import a remote cache's records (and, for build, its layers) first (repeatable)",
    )


def _registry_build_options(build: argparse.ArgumentParser) -> None:
    build.add_argument(
        "--push", metavar="REF", help="push the built image to a registry (--backend oci)"
    )
    build.add_argument(
        "--cache-to",
        metavar="registry:REF",
        help="push this build's records and layers as a remote cache (--backend oci)",
    )
    _cache_from_option(build)
    build.add_argument(
        "--insecure", action="store_true", help="allow plain HTTP to registries off loopback"
    )


def _push_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = commands.add_parser("push", help="push an OCI layout or archive to a registry")
    push.add_argument("source", metavar="SRC", help="oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
    push.add_argument("reference", metavar="REF", help="HOST/NAME[:TAG]")
    push.add_argument(
        "-t",
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="another tag, or another HOST/NAME:TAG to push to (repeatable)",
    )
    push.add_argument(
        "--insecure", action="store_true", help="allow plain HTTP to registries off loopback"
    )
    push.set_defaults(run=run_push)


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", metavar="DIR", help="store directory (default: $IMAGEDSL_STORE or user cache)"
    )
    parser.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an ARG (repeatable)",
    )
    parser.add_argument("--platform", metavar="OS/ARCH", help="target platform (linux/amd64)")


def run_plan(args: argparse.Namespace) -> int:
    """``imagedsl plan``."""
    path, target = split_spec(args.spec)
    build = load_buildfile(path)
    store = Store(default_store_path(args.store))
    reporter = TerminalReporter(sys.stderr)
    build_args = _build_args(args.build_arg)
    remote_hits = import_remote_records(args.cache_from, store, insecure=args.insecure)
    plan = build.plan(
        target, store=store, build_args=build_args, platform=args.platform, reporter=reporter
    )
    if args.resolve:
        lock = resolve_bases(plan, LockFile.beside(build.path), insecure=args.insecure)
        print(
            f"pinned {len(lock.pins)} base image(s) in {display_path(lock.path)}", file=sys.stderr
        )
        plan = build.plan(
            target, store=store, build_args=build_args, platform=args.platform, reporter=reporter
        )
    plan = note_remote_hits(plan, remote_hits)
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    elif args.dot:
        sys.stdout.write(plan.to_dot())
    else:
        sys.stdout.write(format_plan(plan, display_path(path)))
    return EXIT_OK


def run_build(args: argparse.Namespace) -> int:
    """``imagedsl build``: plan, then let the chosen backend build the misses."""
    path, target = split_spec(args.spec)
    build = load_buildfile(path)
    store = Store(default_store_path(args.store))
    reporter = TerminalReporter(sys.stderr)
    build_args = _build_args(args.build_arg)

    def replan() -> Plan:
        return build.plan(
            target, store=store, build_args=build_args, platform=args.platform, reporter=reporter
        )

    request = BuildRequest(
        tags=tuple(args.tag),
        output=args.output,
        build_args=build_args,
        platform=args.platform,
        secrets=tuple(SecretSource.parse(s) for s in args.secret),
        progress=args.progress,
        replan=replan,
    )
    backend = get_backend(args.backend)
    if args.push or args.cache_to or args.cache_from:
        result = build_with_registry(args, backend, replan, request, store, reporter)
    else:
        result = backend.build(replan(), request, store=store, reporter=reporter)
    built, cached = len(result.built), len(result.cached)
    image = f": {result.image}" if result.image else ""
    steps = "step" if built == 1 else "steps"
    print(f"built {built} {steps}, {cached} cached{image}", file=sys.stderr)
    return EXIT_OK


def build_with_registry(
    args: argparse.Namespace,
    backend: Backend,
    replan: Callable[[], Plan],
    request: BuildRequest,
    store: Store,
    reporter: Reporter,
) -> BuildResult:
    """``build`` with ``--cache-from``, ``--push`` or ``--cache-to`` (the OCI backend only):
    import the caches' records, plan, fetch the layers of the hits, build, push, export."""
    from imagedsl import remote_cache
    from imagedsl.backends.oci.backend import OCIBackend
    from imagedsl.oci.descriptor import Descriptor
    from imagedsl.oci.mediatypes import LAYER_MEDIA_TYPES as MEDIA_TYPES
    from imagedsl.oci.mediatypes import OCI_MANIFEST
    from imagedsl.planner import PlanStatus
    from imagedsl.registry.client import RegistryClient
    from imagedsl.registry.push import TransferLog, push_manifest

    if not isinstance(backend, OCIBackend):
        raise BuildRequestError("--push, --cache-to and --cache-from need --backend oci")
    cache_to = args.cache_to and remote_cache.parse_cache_reference(args.cache_to, "--cache-to")
    with RegistryClient(insecure=args.insecure, progress=TransferLog(sys.stderr)) as client:
        caches = [fetch_remote_cache(client, text, store) for text in args.cache_from]
        plan = replan()
        hits = {step.key for step in plan.steps if step.status is PlanStatus.HIT}
        media_types = {MEDIA_TYPES[backend.compression]}
        for found in caches:
            if found is not None:
                remote_cache.import_layers(client, found[0], store, hits, media_types=media_types)
        outcome = backend.build_image(plan, request, store=store, reporter=reporter)
        image = outcome.image
        pushed_to: list[str] = []
        if args.push:
            manifest = Descriptor(
                media_type=OCI_MANIFEST, digest=image.manifest_digest, size=len(image.manifest)
            )
            bases = registry_bases(plan)
            for pushed in push_manifest(
                client, store, manifest, args.push, args.tag, mount_from=bases
            ):
                _print_pushed(pushed)
                pushed_to.append(pushed.reference.name)
        if cache_to:
            bundle = remote_cache.collect(store, replan(), outcome.layer_cache)
            host = cache_to.name.partition("/")[0]
            mounts = [n.partition("/")[2] for n in pushed_to if n.partition("/")[0] == host]
            exported = remote_cache.export_cache(client, store, bundle, cache_to, mount_from=mounts)
            print(
                f"cache: {len(bundle.records)} records, {len(bundle.blobs)} layers "
                f"-> {exported.reference}",
                file=sys.stderr,
            )
    return outcome.result


def registry_bases(plan: Plan) -> list[str]:
    """The repositories (``HOST/NAME``) of a plan's registry bases: a push mounts from them."""
    names = []
    for step in plan.steps:
        base = step.node.step
        if isinstance(base, FromImage) and base.reference.transport == "registry":
            names.append(base.reference.name)
    return sorted(set(names))


def fetch_remote_cache(
    client: RegistryClient, text: str, store: Store
) -> tuple[RemoteCache, frozenset[str]] | None:
    """Read one ``--cache-from`` and import its records: the cache and the keys it added.
    None (with a warning) when there is no cache there yet."""
    from imagedsl import remote_cache
    from imagedsl.registry.errors import NotFoundError

    reference = remote_cache.parse_cache_reference(text)
    try:
        cache = remote_cache.fetch_cache(client, reference, store)
    except NotFoundError:
        print(f"warning: no remote cache at {reference}; going on without it", file=sys.stderr)
        return None
    imported = remote_cache.import_records(store, cache.bundle)
    print(
        f"cache {reference}: {len(cache.bundle.records)} records, {len(imported.new)} new, "
        f"{len(cache.bundle.blobs)} layers",
        file=sys.stderr,
    )
    return cache, imported.new


def import_remote_records(texts: Sequence[str], store: Store, *, insecure: bool) -> dict[str, str]:
    """``plan --cache-from``: import each cache's records; key -> cache, for keys it added."""
    if not texts:
        return {}
    from imagedsl.registry.client import RegistryClient
    from imagedsl.registry.push import TransferLog

    added: dict[str, str] = {}
    with RegistryClient(insecure=insecure, progress=TransferLog(sys.stderr)) as client:
        for text in texts:
            found = fetch_remote_cache(client, text, store)
            if found is not None:
                added.update(dict.fromkeys(found[1], str(found[0].reference)))
    return added


def note_remote_hits(plan: Plan, added: Mapping[str, str]) -> Plan:
    """Say on each hit that a remote cache (not a local build) made it one."""
    if not added:
        return plan
    from imagedsl.planner import PlanStatus

    steps = tuple(
        attrs.evolve(step, notes=(*step.notes, f"hit from the remote cache {added[step.key]}"))
        if step.status is PlanStatus.HIT and step.key in added
        else step
        for step in plan.steps
    )
    return attrs.evolve(plan, steps=steps)


def run_push(args: argparse.Namespace) -> int:
    """``imagedsl push SRC REF``: push an OCI layout or archive; print where it went."""
    from imagedsl.registry.client import RegistryClient
    from imagedsl.registry.push import TransferLog, open_layout, push_manifest

    progress = TransferLog(sys.stderr)
    with (
        open_layout(args.source) as (blobs, manifest),
        RegistryClient(insecure=args.insecure, progress=progress) as client,
    ):
        for pushed in push_manifest(client, blobs, manifest, args.reference, args.tag):
            _print_pushed(pushed)
    return EXIT_OK


def _print_pushed(pushed: PushResult) -> None:
    """``NAME:TAG@DIGEST`` on stdout (what scripts read); every tag on stderr."""
    tags = ", ".join(pushed.tags) or "(by digest only)"
    print(f"pushed {pushed.reference.name} tags {tags}", file=sys.stderr)
    print(pushed.reference)


def run_lower(args: argparse.Namespace) -> int:
    """``imagedsl lower``: print the Dockerfile, or write it with its context (``-o DIR``)."""
    from imagedsl.backends import dockerfile

    path, target = split_spec(args.spec)
    build = load_buildfile(path)
    store = Store(default_store_path(args.store))
    plan = build.plan(
        target,
        store=store,
        build_args=_build_args(args.build_arg),
        platform=args.platform,
        reporter=TerminalReporter(sys.stderr),
    )
    if args.output_dir is None:
        sys.stdout.write(dockerfile.lower_to_dockerfile(plan).text)
    else:
        dockerfile.write_build_dir(plan, Path(args.output_dir))
    return EXIT_OK


def resolve_bases(plan: Plan, lock: LockFile, *, insecure: bool) -> LockFile:
    """Pin every registry base of ``plan`` that the build file leaves unpinned; write the lock."""
    from imagedsl.registry.client import RegistryClient

    wanted: dict[tuple[str, str], ImageReference] = {}
    for step in plan.steps:
        base = step.node.step
        image = base.reference if isinstance(base, FromImage) else None
        if image is not None and image.transport == "registry" and not image.digest:
            assert isinstance(base, FromImage)
            wanted[lock_key(base), step.node.state.platform] = image
    resolved = []
    with RegistryClient(insecure=insecure) as client:
        for (name, platform), image in sorted(wanted.items()):
            resolved.append((name, platform, client.resolve(image).digest))
    lock = lock.updated(resolved)
    lock.write()
    return lock


def run_targets(args: argparse.Namespace) -> int:
    """``imagedsl targets``: one per line, the default first."""
    path, _ = split_spec(args.spec)
    build = load_buildfile(path)
    for name in build.targets:
        print(name)
    return EXIT_OK


def run_cache_du(args: argparse.Namespace) -> int:
    """``imagedsl cache du``."""
    store = Store(default_store_path(args.store))
    usage = store.disk_usage()
    for part, size in usage.items():
        print(f"{_mib(size):>12}  {part}")
    print(f"{_mib(sum(usage.values())):>12}  total ({store.root})")
    return EXIT_OK


def format_plan(plan: Plan, buildfile: str) -> str:
    """The human table: one row per step, reasons indented under misses."""
    rows = [("WAVE", "STEP", "STATUS", "KEY", "INSTRUCTION")]
    details: dict[int, list[str]] = {}
    for i, step in enumerate(plan.steps):
        rows.append(
            (
                str(step.wave),
                f"{step.stage}[{step.index}]",
                step.status.value,
                step.key[:12],
                _truncate(step.instruction, 72),
            )
        )
        details[i + 1] = [*step.reasons, *(f"note: {n}" for n in step.notes)]
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = [f"plan for {buildfile}:{plan.target}"]
    for i, row in enumerate(rows):
        cells = [row[c].ljust(widths[c]) for c in range(4)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
        for reason in details.get(i, []):
            lines.append(" " * (sum(widths) + 8) + f"- {reason}")
    summary = plan.summary
    lines.append(
        f"{summary['hit']} hit, {summary['miss']} miss, {summary['maybe']} maybe, "
        f"{summary['config']} config"
    )
    return "\n".join(lines) + "\n"


def _build_args(pairs: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            # As docker does: --build-arg NAME takes the value from the environment.
            if name not in os.environ:
                continue
            value = os.environ[name]
        values[name] = value
    return values


def _format_error(error: ImageDSLError) -> str:
    location = error.location
    if location is None:
        return f"error: {error}"
    return f"{_display_location(location)}: {error}"


def _display_location(location: SourceLocation) -> str:
    return f"{display_path(Path(location.file))}:{location.line}"


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _truncate(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _shorten(root: str) -> str:
    return display_path(Path(root))

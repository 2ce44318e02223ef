"""The ``imagedsl`` command: argument parsing and printing; the work is :mod:`imagedsl.api`.

Each subcommand is one :class:`~imagedsl.api.BuildSession` call (or one library call) and
what it prints. Exit codes come from the error's category (:mod:`imagedsl.errors`): 0
success, 1 a failure outside the user's input, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from imagedsl import __version__
from imagedsl._terminal import (
    TerminalReporter,
    display_location,
    display_path,
    format_findings,
    format_inspect,
    format_plan,
    human_size,
    mib,
)
from imagedsl.api import (
    BuildSession,
    import_dockerfile,
    inspect_image,
    open_store,
    prune_store,
    push_image,
    verify_store,
    write_html,
)
from imagedsl.backends import BACKENDS
from imagedsl.check import Severity
from imagedsl.check.sarif import to_sarif
from imagedsl.errors import ImageDSLError, exit_code_of
from imagedsl.store import StoreWarning

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and ``python -m imagedsl``."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(next((w for w in words if not w.startswith("-")), None))
    args = parser.parse_args(words)
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
        where = "error" if error.location is None else display_location(error.location)
        print(f"{where}: {error}", file=sys.stderr)
        return exit_code_of(error)
    except OSError as error:
        # The machine refused (a full disk, a denied write, a missing directory): one line
        # with the path, exit 1, as for every failure outside the user's input.
        print(f"error: {_os_error(error)}", file=sys.stderr)
        return EXIT_FAILURE


def _os_error(error: OSError) -> str:
    """``PATH: No space left on device`` (both paths of a failed rename or link)."""
    problem = error.strerror or str(error)
    if error.filename is None:
        return problem
    paths = [os.fsdecode(error.filename)]
    if error.filename2 is not None:
        paths.append(os.fsdecode(error.filename2))
    return f"{' -> '.join(paths)}: {problem}"


# -- commands --------------------------------------------------------------------------------


def run_plan(args: argparse.Namespace) -> int:
    """``imagedsl plan``."""
    session = _session(args)
    if args.resolve:
        session.resolve_bases()
    plan = session.plan(cache_from=args.cache_from)
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    elif args.dot:
        sys.stdout.write(plan.to_dot())
    else:
        errors = [f for f in session.check(plan).active if f.severity is Severity.ERROR]
        sys.stdout.write(format_plan(plan, display_path(session.path), errors))
    return EXIT_OK


def run_check(args: argparse.Namespace) -> int:
    """``imagedsl check``: findings on stdout (text, JSON) or in a SARIF file; exit 1 when
    one reaches ``--fail-on``."""
    report = _session(args).check()
    if args.sarif:
        with open(args.sarif, "w", encoding="utf-8") as handle:
            json.dump(to_sarif(report), handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_findings(report))
    return EXIT_FAILURE if report.fails(Severity.parse(args.fail_on)) else EXIT_OK


def run_inspect(args: argparse.Namespace) -> int:
    """``imagedsl inspect IMAGE``: layers, waste and secrets as text or JSON; ``--html``."""
    report = inspect_image(
        args.image,
        store=open_store(args.store),
        platform=args.platform or "linux/amd64",
        insecure=args.insecure,
    )
    if args.html:
        plan = None
        if args.buildfile is not None:
            plan = BuildSession(args.buildfile, store=args.store).plan()
        write_html(args.html, report, plan)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_inspect(report))
    return EXIT_OK


def run_build(args: argparse.Namespace) -> int:
    """``imagedsl build``: plan, then let the chosen backend build the misses."""
    outcome = _session(args).build(
        args.backend,
        output=args.output,
        tags=args.tag,
        secrets=args.secret,
        progress=args.progress,
        push=args.push,
        cache_to=args.cache_to,
        cache_from=args.cache_from,
        seccomp=not args.no_seccomp,
    )
    for pushed in outcome.pushed:
        print(pushed.reference)  # NAME:TAG@DIGEST on stdout, for scripts
    result = outcome.result
    built, cached = len(result.built), len(result.cached)
    image = f": {result.image}" if result.image else ""
    steps = "step" if built == 1 else "steps"
    print(f"built {built} {steps}, {cached} cached{image}", file=sys.stderr)
    return EXIT_OK


def run_push(args: argparse.Namespace) -> int:
    """``imagedsl push SRC REF``: push an OCI layout or archive; print where it went."""
    reporter = TerminalReporter(sys.stderr)
    for pushed in push_image(
        args.source, args.reference, args.tag, insecure=args.insecure, reporter=reporter
    ):
        print(pushed.reference)
    return EXIT_OK


def run_lower(args: argparse.Namespace) -> int:
    """``imagedsl lower``: print the Dockerfile, or write it with its context (``-o DIR``)."""
    text = _session(args).lower(args.output_dir)
    if args.output_dir is None:
        sys.stdout.write(text)
    return EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    """``imagedsl import``: print the build.py for a Dockerfile, or write it (``-o FILE``)."""
    text = import_dockerfile(args.dockerfile, args.output)
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return EXIT_OK


def run_targets(args: argparse.Namespace) -> int:
    """``imagedsl targets``: one per line, the default first."""
    for name in BuildSession(args.spec).buildfile.targets:
        print(name)
    return EXIT_OK


def run_cache_du(args: argparse.Namespace) -> int:
    """``imagedsl cache du``."""
    store = open_store(args.store)
    usage = store.disk_usage()
    for part, size in usage.items():
        print(f"{mib(size):>12}  {part}")
    print(f"{mib(sum(usage.values())):>12}  total ({store.root})")
    return EXIT_OK


def run_cache_verify(args: argparse.Namespace) -> int:
    """``imagedsl cache verify``: exit 1 when something damaged was found (and removed)."""
    store = open_store(args.store)
    report = verify_store(store)
    for damage in report.damaged:
        print(f"removed damaged {damage.area} entry {damage.path}: {damage.problem}")
    counts = ", ".join(f"{count} {area}" for area, count in report.checked.items())
    print(
        f"checked {counts or 'nothing'} ({human_size(report.blob_bytes)} of blobs hashed) "
        f"in {store.root}: {len(report.damaged)} damaged"
    )
    return EXIT_FAILURE if report.damaged else EXIT_OK


def run_cache_prune(args: argparse.Namespace) -> int:
    """``imagedsl cache prune``."""
    from imagedsl.maintenance import parse_age, parse_size

    older_than = None if args.older_than is None else parse_age(args.older_than)
    max_size = None if args.max_size is None else parse_size(args.max_size)
    store = open_store(args.store)
    report = prune_store(store, older_than=older_than, max_size=max_size)
    parts = [
        f"{count} {kind} ({human_size(size)})" if size else f"{count} {kind}"
        for kind, (count, size) in report.removed.items()
    ]
    print(f"removed {', '.join(parts) or 'nothing'}")
    print(
        f"{human_size(report.remaining)} of blobs, snapshots and cache mounts left ({store.root})"
    )
    return EXIT_OK


def _session(args: argparse.Namespace) -> BuildSession:
    return BuildSession(
        args.spec,
        build_args=_build_args(args.build_arg),
        platform=args.platform,
        store=args.store,
        reporter=TerminalReporter(sys.stderr),
        insecure=getattr(args, "insecure", False),
        allow=getattr(args, "allow", ()),
    )


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


# -- arguments -------------------------------------------------------------------------------


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; when ``command`` names a subcommand, only that subcommand's
    arguments are declared (argparse spends more time declaring arguments than parsing)."""
    parser = argparse.ArgumentParser(
        prog="imagedsl", description="Container images from Python, with exact caching."
    )
    parser.add_argument("--version", action="version", version=f"imagedsl {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    declare = _COMMANDS.get(command or "")
    for declare_one in [declare] if declare is not None else _COMMANDS.values():
        declare_one(commands)
    return parser


def _plan_command(commands: _Commands) -> None:
    plan = commands.add_parser(
        "plan", help="show every step, its cache key, hit or miss, and why each miss misses"
    )
    _spec(plan, "build file and target (./build.py)")
    output = plan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the plan as JSON (schema 1)")
    output.add_argument("--dot", action="store_true", help="print the graph as Graphviz DOT")
    plan.add_argument(
        "--resolve",
        action="store_true",
        help="look up unpinned registry bases (HEAD on the manifest) and pin them in imagedsl.lock",
    )
    _insecure(plan)
    _cache_from(plan)
    _allow(plan)
    _common(plan)
    plan.set_defaults(run=run_plan)


def _check_command(commands: _Commands) -> None:
    check = commands.add_parser(
        "check", help="find secrets, cache-order mistakes and waste in a build, before building"
    )
    _spec(check, "build file and target (./build.py)")
    check.add_argument("--json", action="store_true", help="print the findings as JSON (schema 1)")
    check.add_argument("--sarif", metavar="FILE", help="also write the findings as SARIF 2.1.0")
    check.add_argument(
        "--fail-on",
        default="error",
        choices=("error", "warning", "info"),
        help="exit 1 when a finding is at least this severe (error)",
    )
    _common(check)
    check.set_defaults(run=run_check)


def _build_command(commands: _Commands) -> None:
    build = commands.add_parser("build", help="build a target with a backend")
    _spec(build, "build file and target")
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
    build.add_argument(
        "--push", metavar="REF", help="push the built image to a registry (--backend oci)"
    )
    build.add_argument(
        "--cache-to",
        metavar="registry:REF",
        help="push this build's records and layers as a remote cache (--backend oci)",
    )
    build.add_argument(
        "--no-seccomp",
        action="store_true",
        help="run RUN steps without a seccomp profile (--backend oci; less isolated)",
    )
    _cache_from(build)
    _insecure(build)
    _allow(build)
    _common(build)
    build.set_defaults(run=run_build)


def _inspect_command(commands: _Commands) -> None:
    inspect = commands.add_parser(
        "inspect", help="what each layer of an image costs, what is wasted, what leaked"
    )
    inspect.add_argument(
        "image",
        metavar="IMAGE",
        help="oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:TAG], docker:NAME or "
        "a registry reference",
    )
    inspect.add_argument("--json", action="store_true", help="print the report as JSON (schema 1)")
    inspect.add_argument("--html", metavar="FILE", help="also write the report as one HTML page")
    inspect.add_argument(
        "--buildfile",
        metavar="FILE[:TARGET]",
        help="for --html: draw this build file's graph, each step with its status now",
    )
    inspect.add_argument(
        "--store", metavar="DIR", help="store directory (registry images are pulled into it)"
    )
    inspect.add_argument("--platform", metavar="OS/ARCH", help="platform to pick from an index")
    _insecure(inspect)
    inspect.set_defaults(run=run_inspect)


def _push_command(commands: _Commands) -> None:
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
    _insecure(push)
    push.set_defaults(run=run_push)


def _lower_command(commands: _Commands) -> None:
    lower = commands.add_parser("lower", help="print the Dockerfile a target lowers to")
    _spec(lower, "build file and target")
    lower.add_argument(
        "-o", "--output-dir", metavar="DIR", help="write the Dockerfile and its context into DIR"
    )
    _common(lower)
    lower.set_defaults(run=run_lower)


def _import_command(commands: _Commands) -> None:
    imported = commands.add_parser("import", help="write the build.py for a Dockerfile")
    imported.add_argument(
        "dockerfile", nargs="?", default="Dockerfile", metavar="DOCKERFILE", help="./Dockerfile"
    )
    imported.add_argument("-o", "--output", metavar="FILE", help="write to FILE (not stdout)")
    imported.set_defaults(run=run_import)


def _targets_command(commands: _Commands) -> None:
    targets = commands.add_parser("targets", help="list the targets of a build file")
    targets.add_argument("spec", nargs="?", metavar="FILE", help="build file (./build.py)")
    targets.set_defaults(run=run_targets)


def _cache_command(commands: _Commands) -> None:
    cache = commands.add_parser("cache", help="inspect the store")
    cache_commands = cache.add_subparsers(title="cache commands", metavar="ACTION")
    du = cache_commands.add_parser("du", help="bytes used by each part of the store")
    du.add_argument("--store", metavar="DIR", help="store directory")
    du.set_defaults(run=run_cache_du)
    verify = cache_commands.add_parser(
        "verify", help="hash every blob and snapshot; remove what is damaged (exit 1 if any)"
    )
    verify.add_argument("--store", metavar="DIR", help="store directory")
    verify.set_defaults(run=run_cache_verify)
    prune = cache_commands.add_parser(
        "prune", help="remove what was not used lately, or the least recently used"
    )
    prune.add_argument(
        "--older-than", metavar="AGE", help="remove what was not used for AGE (30d, 12h, 90m)"
    )
    prune.add_argument(
        "--max-size",
        metavar="SIZE",
        help="then keep at most SIZE (10G, 500M) of blobs and snapshots",
    )
    prune.add_argument("--store", metavar="DIR", help="store directory")
    prune.set_defaults(run=run_cache_prune)


_COMMANDS: dict[str, Callable[[_Commands], None]] = {
    "plan": _plan_command,
    "check": _check_command,
    "build": _build_command,
    "inspect": _inspect_command,
    "push": _push_command,
    "lower": _lower_command,
    "import": _import_command,
    "targets": _targets_command,
    "cache": _cache_command,
}


def _spec(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("spec", nargs="?", metavar="FILE[:TARGET]", help=text)


def _insecure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure", action="store_true", help="allow plain HTTP to registries off loopback"
    )


def _allow(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="ENTITLEMENT",
        help="grant an entitlement, as BuildKit's --allow: network.host lets RUN steps with "
        "network='host' use the host's network (repeatable)",
    )


def _cache_from(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-from",
        action="append",
        default=[],
        metavar="registry:REF",
        help="import a remote cache's records (and, for build, its layers) first (repeatable)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
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

"""The ``imagedsl`` command: argument parsing and printing; the work is :mod:`imagedsl.api`.

Each subcommand is one :class:`~imagedsl.api.BuildSession` call (or one library call) and
what it prints. Exit codes come from the error's category (:mod:`imagedsl.errors`): 0
success, 1 a failure outside the user's input, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imagedsl import _arguments as arguments
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
from imagedsl.errors import ImageDSLError, exit_code_of
from imagedsl.store import StoreWarning

if TYPE_CHECKING:
    from imagedsl.api import BuildSession

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and ``python -m imagedsl``."""
    # A command makes many long-lived objects and few cycles: collect less often, and never
    # walk what the imports made (the CLI owns its process; the library leaves gc alone).
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    words = sys.argv[1:] if argv is None else list(argv)
    parser = arguments.parser(next((w for w in words if not w.startswith("-")), None))
    args = parser.parse_args(words)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StoreWarning)
            code: int = _RUNS[args.run](args)
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
    """``PATH: No space left on device`` (both paths of a failed rename or link); a call on a
    file descriptor (``os.setxattr(fd, ...)``) names the descriptor."""
    problem = error.strerror or str(error)
    names = [name for name in (error.filename, error.filename2) if name is not None]
    if not names:
        return problem
    shown = [f"file descriptor {n}" if isinstance(n, int) else os.fsdecode(n) for n in names]
    return f"{' -> '.join(shown)}: {problem}"


# -- commands --------------------------------------------------------------------------------


def run_plan(args: argparse.Namespace) -> int:
    """``imagedsl plan``."""
    from imagedsl.check import Severity

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
    from imagedsl.check import Severity
    from imagedsl.check.sarif import to_sarif

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
    # Only what reading an image needs: not the planner and backends behind imagedsl.api.
    from imagedsl.inspect import inspect_image
    from imagedsl.store import Store, default_store_path

    report = inspect_image(
        args.image,
        store=Store(default_store_path(args.store)),
        platform=args.platform or "linux/amd64",
        insecure=args.insecure,
    )
    if args.html:
        from imagedsl.api import BuildSession, write_html

        plan = None
        if args.buildfile is not None:
            plan = BuildSession(args.buildfile, store=args.store).plan()
        write_html(args.html, report, plan)
    if args.json:
        from imagedsl._jsontext import dumps  # json.dump's text, without its slow indenting

        sys.stdout.write(dumps(report.to_json()) + "\n")
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
    from imagedsl.api import push_image

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
    from imagedsl.api import import_dockerfile

    text = import_dockerfile(args.dockerfile, args.output)
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return EXIT_OK


def run_targets(args: argparse.Namespace) -> int:
    """``imagedsl targets``: one per line, the default first."""
    from imagedsl.api import BuildSession

    for name in BuildSession(args.spec).buildfile.targets:
        print(name)
    return EXIT_OK


def run_cache_du(args: argparse.Namespace) -> int:
    """``imagedsl cache du``."""
    from imagedsl.api import open_store

    store = open_store(args.store)
    usage = store.disk_usage()
    for part, size in usage.items():
        print(f"{mib(size):>12}  {part}")
    print(f"{mib(sum(usage.values())):>12}  total ({store.root})")
    return EXIT_OK


def run_cache_verify(args: argparse.Namespace) -> int:
    """``imagedsl cache verify``: exit 1 when something damaged was found (and removed)."""
    from imagedsl.api import open_store, verify_store

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
    from imagedsl.api import open_store, prune_store
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
    from imagedsl.api import BuildSession

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


# -- what each subcommand runs (its arguments: imagedsl/_arguments.py) -----------------------


def run_server_stop(_args: argparse.Namespace) -> int:
    """``imagedsl server stop``."""
    from imagedsl import _client, _server

    directory = _client.runtime_directory(create=False)
    asked = _server.stop_all(directory) if directory else 0
    print(f"stopped {asked} plan server{'' if asked == 1 else 's'}")
    return EXIT_OK


_RUNS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": run_build,
    "cache_du": run_cache_du,
    "cache_prune": run_cache_prune,
    "cache_verify": run_cache_verify,
    "check": run_check,
    "import": run_import,
    "inspect": run_inspect,
    "lower": run_lower,
    "plan": run_plan,
    "push": run_push,
    "server_stop": run_server_stop,
    "targets": run_targets,
}

"""The ``imagedsl`` command's arguments: one parser per subcommand, declared only for the
subcommand being run (argparse spends more time declaring arguments than parsing them).

Each subcommand sets ``run`` to its name; :mod:`imagedsl.cli` maps the name to its function.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import TypeAlias

from imagedsl import __version__

_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@functools.cache
def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; when ``command`` names a subcommand, only that subcommand's
    arguments are declared (argparse spends more time declaring arguments than parsing).
    Built once per process (parsing leaves a parser as it was): a plan server builds plan's
    and check's before it forks its children."""
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
    plan.set_defaults(run="plan")


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
    check.set_defaults(run="check")


def _build_command(commands: _Commands) -> None:
    from imagedsl.backends import BACKENDS  # here: the other commands need no backend

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
    build.set_defaults(run="build")


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
    inspect.set_defaults(run="inspect")


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
    push.set_defaults(run="push")


def _lower_command(commands: _Commands) -> None:
    lower = commands.add_parser("lower", help="print the Dockerfile a target lowers to")
    _spec(lower, "build file and target")
    lower.add_argument(
        "-o", "--output-dir", metavar="DIR", help="write the Dockerfile and its context into DIR"
    )
    _common(lower)
    lower.set_defaults(run="lower")


def _import_command(commands: _Commands) -> None:
    imported = commands.add_parser("import", help="write the build.py for a Dockerfile")
    imported.add_argument(
        "dockerfile", nargs="?", default="Dockerfile", metavar="DOCKERFILE", help="./Dockerfile"
    )
    imported.add_argument("-o", "--output", metavar="FILE", help="write to FILE (not stdout)")
    imported.set_defaults(run="import")


def _targets_command(commands: _Commands) -> None:
    targets = commands.add_parser("targets", help="list the targets of a build file")
    targets.add_argument("spec", nargs="?", metavar="FILE", help="build file (./build.py)")
    targets.set_defaults(run="targets")


def _cache_command(commands: _Commands) -> None:
    cache = commands.add_parser("cache", help="inspect the store")
    cache_commands = cache.add_subparsers(title="cache commands", metavar="ACTION")
    du = cache_commands.add_parser("du", help="bytes used by each part of the store")
    du.add_argument("--store", metavar="DIR", help="store directory")
    du.set_defaults(run="cache_du")
    verify = cache_commands.add_parser(
        "verify", help="hash every blob and snapshot; remove what is damaged (exit 1 if any)"
    )
    verify.add_argument("--store", metavar="DIR", help="store directory")
    verify.set_defaults(run="cache_verify")
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
    prune.set_defaults(run="cache_prune")


def _server_command(commands: _Commands) -> None:
    server = commands.add_parser(
        "server", help="the plan servers that keep imagedsl loaded between plans (see docs)"
    )
    actions = server.add_subparsers(title="server commands", metavar="ACTION")
    stop = actions.add_parser("stop", help="stop this user's plan servers")
    stop.set_defaults(run="server_stop")


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
    "server": _server_command,
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
    parser.add_argument(
        "--platform",
        metavar="OS/ARCH[,...]",
        help="target platform, or a comma-separated list (linux/amd64,linux/arm64): one image "
        "index (default: the build file's dsl.platforms, else this machine's)",
    )

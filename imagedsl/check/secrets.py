"""Rules on credentials: ``secret-env``, ``secret-arg`` and ``secret-file``.

ENV values live in the image config, readable by anyone who can pull the image. ARG values
enter the cache keys of the steps after them, so they are kept in the store's ledger and in
``--cache-to`` exports (and a Dockerfile build records them in the image history). Context
files copied into a layer ship with it. In every case the fix is a secret mount
(``dsl.secret``), whose value is given at build time and never enters a key, a layer or a plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from imagedsl import credentials
from imagedsl.check._context import CheckContext
from imagedsl.check.model import Finding
from imagedsl.graph import StepNode
from imagedsl.steps import Add, Arg, Env


def secret_env(ctx: CheckContext) -> Iterator[Finding]:
    """ENV values that look like credentials, by name or by format, and ENVs that copy a
    secret-looking build argument into the image."""
    declared = _DeclaredArgs(ctx)
    for node in ctx.nodes:
        step = node.step
        if not isinstance(step, Env):
            continue
        effective = dict(node.state.env)
        for name, written in step.items:
            value = effective.get(name, written)
            why = credentials.secret_pair(name, written) or credentials.secret_pair(name, value)
            references = _REFERENCE.findall(written)
            copied = [a for a in references if a in declared.before(node)] if references else []
            if why is None and any(
                credentials.secret_name(a) or credentials.secret_name(name) for a in copied
            ):
                why = "argument"
            if why is None:
                continue
            carried = "" if value == written else f" (from {written})"
            if why == "argument":
                yield ctx.finding(
                    "secret-env",
                    node,
                    f"ENV {name}={written} copies the build argument {copied[0]} into the image "
                    "config",
                    "Whatever value the build is given is then stored in the image, where "
                    "anyone who pulls it reads it. Give the step that needs it a build secret "
                    f"instead: .run(..., mounts=[dsl.secret({_secret_id(name)!r}, "
                    f"env={name!r})]), and the container its value when it runs.",
                )
                continue
            yield ctx.finding(
                "secret-env",
                node,
                f"ENV {name}={credentials.mask(value)}{carried} looks like a credential "
                f"({_why(why)})",
                "ENV values are stored in the image config, where anyone who pulls the image "
                "reads them. Give it to the step that needs it as a build secret instead: "
                f".run(..., mounts=[dsl.secret({_secret_id(name)!r}, env={name!r})]) with "
                f"`imagedsl build --secret id={_secret_id(name)},env={name}`, and to the "
                f"container when it runs (docker run -e {name}).",
            )


_REFERENCE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


class _DeclaredArgs:
    """The ARGs declared (with or without a value) before a step, along its chain from the
    FROM: kept per step and shared along the chain, so a 10,000-step chain costs one walk,
    not one walk per ENV."""

    def __init__(self, ctx: CheckContext) -> None:
        self._nodes = ctx.nodes
        self._through: dict[int, frozenset[str]] = {}

    def before(self, node: StepNode) -> frozenset[str]:
        """Those declared by the steps before ``node``."""
        return frozenset() if node.parent is None else self._up_to(node.parent)

    def _up_to(self, index: int) -> frozenset[str]:
        pending = []
        current: int | None = index
        while current is not None and current not in self._through:
            pending.append(current)
            current = self._nodes[current].parent
        declared = frozenset() if current is None else self._through[current]
        for at in reversed(pending):
            step = self._nodes[at].step
            if isinstance(step, Arg):
                declared = declared | {step.name}
            self._through[at] = declared
        return declared


def secret_arg(ctx: CheckContext) -> Iterator[Finding]:
    """ARG defaults and ``--build-arg`` values that look like credentials."""
    for node in ctx.nodes:
        step = node.step
        if not isinstance(step, Arg):
            continue
        values = []
        if step.default is not None:
            values.append(("default", step.default))
        if step.name in ctx.build_args:
            values.append(("--build-arg value", ctx.build_args[step.name]))
        for origin, value in values:
            why = credentials.secret_pair(step.name, value)
            if why is None:
                continue
            yield ctx.finding(
                "secret-arg",
                node,
                f"ARG {step.name} {origin} {credentials.mask(value)} looks like a credential "
                f"({_why(why)})",
                "ARG values enter the cache keys of the steps after it, so they are kept in "
                "the store's ledger and in --cache-to exports (and a Dockerfile build records "
                "them in the image history). Use a build secret instead: .run(..., "
                f"mounts=[dsl.secret({_secret_id(step.name)!r}, env={step.name!r})]) with "
                f"`imagedsl build --secret id={_secret_id(step.name)},env={step.name}`.",
            )


def secret_file(ctx: CheckContext) -> Iterator[Finding]:
    """Context files copied into a layer that hold credentials."""
    for node in ctx.nodes:
        for source, _, facts in ctx.copied_trees(node):
            verb = "ADD" if isinstance(node.step, Add) else "COPY"
            for path, _, kind in facts.secrets:
                pattern = path if kind != "git-directory" else ".git"
                yield ctx.finding(
                    "secret-file",
                    node,
                    f"{verb} puts {path} ({_KINDS.get(kind, kind)}) from the context "
                    f"{_context_name(source.context.root)} into a layer",
                    "Anyone with the image can read it, even if a later step deletes it. "
                    f"Leave it out of the context (dsl.context(..., ignore=[{pattern!r}])) or "
                    "of the copy (exclude=[...]); give credentials to the steps that need "
                    "them with dsl.secret mounts.",
                )


_KINDS = {
    "private-key": "a private key",
    "dotenv": "a .env file",
    "npmrc": "an .npmrc with a token",
    "yarnrc": "a .yarnrc.yml with a token",
    "pypirc": "a .pypirc with a password",
    "docker-config": "a Docker config with registry credentials",
    "aws-credentials": "AWS credentials",
    "gcp-credentials": "Google Cloud credentials",
    "azure-credentials": "Azure credentials",
    "netrc": "a .netrc with passwords",
    "git-credentials": "stored git credentials",
    "git-directory": "a git repository, with its history and config",
    "keystore": "a key store",
    "putty-key": "a PuTTY private key",
}


def _why(kind: str) -> str:
    if kind == "name":
        return "by its name"
    return f"it has the format of {kind.replace('-', ' ')}"


def _secret_id(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "secret"


def _context_name(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1] or "/"


CHECKS = (secret_env, secret_arg, secret_file)

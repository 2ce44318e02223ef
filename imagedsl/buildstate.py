"""The build state that config steps accumulate, and ``$VAR`` expansion.

How a step changes the state (ENV, ARG, WORKDIR, USER, SHELL) and how a word expands in it
are semantics every consumer must agree on: the planner hashes the state, and every backend
reads it from here.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from imagedsl._validate import clean_container_path
from imagedsl.errors import ImageDSLError
from imagedsl.steps import Arg, Env, Shell, Step, User, Workdir

DEFAULT_SHELL: Final = ("/bin/sh", "-c")
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ExpansionError(ImageDSLError):
    """A ``${...}`` expression is malformed, or ``${VAR:?message}`` hit an unset variable."""

    def __init__(self, word: str, problem: str) -> None:
        super().__init__(word, problem)
        self.word = word
        self.problem = problem

    def __str__(self) -> str:
        return f"cannot expand {self.word!r}: {self.problem}"


_VAR: Final = re.compile(
    r"\\(?P<escaped>\$)|\$(?:(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+?])(?P<word>[^}]*))?\})"
)


def expand(word: str, variables: Mapping[str, str], *, keep_unknown: bool = False) -> str:
    """Expand ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:+alt}`` like the Dockerfile.

    Only the forms the Dockerfile frontend supports; ``\\$`` stays a literal ``$``. With
    ``keep_unknown``, a reference to a variable not in ``variables`` is left as written: it
    names a variable of the base image, which only a backend that has read the base's config
    can expand (the base's key already covers its value).
    """

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["bare"] or match["braced"]
        if keep_unknown and name not in variables:
            return match.group(0)
        value = variables.get(name)
        op = match["op"]
        if op is None:
            return value or ""
        empty_counts = op.startswith(":")
        is_set = value is not None and (value != "" or not empty_counts)
        alternative = expand(match["word"], variables, keep_unknown=keep_unknown)
        if op.endswith("-"):
            return value if is_set and value is not None else alternative
        if op.endswith("+"):
            return alternative if is_set else ""
        if not is_set:
            raise ExpansionError(word, alternative or f"{name} is not set")
        return value or ""

    if "$" not in word:
        return word
    return _VAR.sub(replace, word)


@attrs.frozen(kw_only=True)
class BuildState:
    """What config steps accumulate and later steps read: the Dockerfile's implicit state.

    ``env`` and ``args`` keep declaration order; ``args`` holds only ARGs declared in this
    stage, with their effective value (override, else default; unset ARGs are absent).

    At plan time a stage ``FROM`` an image does not know the image's config (its Env,
    WorkingDir, User): planning reads no image. Such a state ``inherits``: references to
    variables it does not define stay as written, and ``workdir`` is relative to the base's
    WorkingDir (``""`` is the base's own). Keys stay exact, because the base's key covers its
    config. A backend that has read the config replays the steps on
    :meth:`from_image_config` to get concrete values.
    """

    env: tuple[tuple[str, str], ...] = ()
    args: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = ""
    shell: tuple[str, ...] = DEFAULT_SHELL
    platform: str = "linux/amd64"
    inherits: bool = False

    @classmethod
    def from_image_config(cls, config: Mapping[str, Any], platform: str) -> BuildState:
        """The state a stage starts in on a base whose OCI/Docker image config is known."""
        env = []
        for item in config.get("Env") or ():
            name, _, value = str(item).partition("=")
            env.append((name, value))
        shell = config.get("Shell")
        return cls(
            env=tuple(env),
            workdir=str(config.get("WorkingDir") or "/"),
            user=str(config.get("User") or ""),
            shell=tuple(shell) if shell else DEFAULT_SHELL,
            platform=platform,
        )

    def expand(self, word: str) -> str:
        """``$VAR`` expansion in this state (base variables kept as written if inherited)."""
        return expand(word, self.variables, keep_unknown=self.inherits)

    @property
    def variables(self) -> dict[str, str]:
        """Variables visible to ``$VAR`` expansion and RUN: ENV wins over ARG of one name."""
        merged = dict(self.args)
        merged.update(self.env)
        return merged

    def run_env(self) -> dict[str, str]:
        """The environment a RUN sees, with Docker's default PATH when the image sets none."""
        merged = self.variables
        merged.setdefault("PATH", DEFAULT_PATH)
        return merged

    def resolve_path(self, path: str) -> str:
        """Resolve a possibly relative container path against WORKDIR, keeping a trailing /.

        The result is relative only while the WORKDIR is the (unknown) base's.
        """
        expanded = self.expand(path)
        joined = posixpath.join(self.workdir, expanded)
        if joined.startswith("/"):
            cleaned = clean_container_path(joined)
        else:
            cleaned = posixpath.normpath(joined) if joined else "."
        if expanded.endswith("/") and not cleaned.endswith("/"):
            cleaned += "/"
        return cleaned

    def apply(self, step: Step, build_args: Mapping[str, str]) -> BuildState:
        """Return the state after ``step`` (the state is unchanged by filesystem steps)."""
        if isinstance(step, Env):
            env = dict(self.env)
            # One ENV expands every value with the values from before it.
            for name, value in step.items:
                env[name] = self.expand(value)
            return attrs.evolve(self, env=tuple(env.items()))
        if isinstance(step, Arg):
            args = dict(self.args)
            args.pop(step.name, None)
            if step.name in build_args:
                args[step.name] = build_args[step.name]
            elif step.default is not None:
                args[step.name] = self.expand(step.default)
            return attrs.evolve(self, args=tuple(args.items()))
        if isinstance(step, Workdir):
            resolved = self.resolve_path(step.path)
            workdir = resolved.rstrip("/") or "/" if resolved.startswith("/") else resolved
            return attrs.evolve(self, workdir="" if workdir in (".", "./") else workdir)
        if isinstance(step, User):
            return attrs.evolve(self, user=self.expand(step.user))
        if isinstance(step, Shell):
            return attrs.evolve(self, shell=step.command)
        return self

    def argv(self, command: tuple[str, ...], shell_form: bool) -> tuple[str, ...]:
        """The argv a RUN executes: SHELL + the string in shell form, as written otherwise."""
        return (*self.shell, command[0]) if shell_form else command

    def absolute_workdir(self, base_workdir: str = "/") -> str:
        """The WORKDIR as an absolute path, given the base's WorkingDir when it is inherited."""
        return clean_container_path(posixpath.join(base_workdir or "/", self.workdir or "."))


def replay(
    steps: Sequence[Step], start: BuildState, build_args: Mapping[str, str]
) -> list[BuildState]:
    """The state after each of ``steps``, from ``start`` (e.g. a base's known config)."""
    states = []
    state = start
    for step in steps:
        state = state.apply(step, build_args)
        states.append(state)
    return states

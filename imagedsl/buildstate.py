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
from imagedsl.errors import InputError
from imagedsl.steps import Arg, Env, Shell, Step, User, Workdir

DEFAULT_SHELL: Final = ("/bin/sh", "-c")
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@attrs.define
class ExpansionError(InputError):
    """A ``${...}`` expression is malformed, or ``${VAR:?message}`` hit an unset variable."""

    word: str
    problem: str

    def __str__(self) -> str:
        return f"cannot expand {self.word!r}: {self.problem}"


_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATOR: Final = re.compile(r":?[-+?]")


@attrs.frozen
class Expression:
    """One ``$NAME``, ``${NAME}`` or ``${NAME<op>word}`` of a word; ``word`` may hold further
    expressions (``${A:-${B}}``, as BuildKit nests them)."""

    text: str
    name: str
    braced: bool
    op: str | None = None
    word: str | None = None


def split_expressions(word: str) -> list[str | Expression]:
    """``word`` as literal text and the expressions imagedsl expands, in order.

    ``\\$`` is a literal ``$``; a ``$`` that starts no well-formed expression (``$1``, an
    unclosed ``${A``) is literal too. Inside ``${NAME:-word}`` the word ends at the first
    ``}`` that closes no nested expression.
    """
    pieces, _ = _split(word, 0, inside=False)
    return pieces


def _split(text: str, at: int, *, inside: bool) -> tuple[list[str | Expression], int]:
    pieces: list[str | Expression] = []
    literal: list[str] = []
    while at < len(text):
        char = text[at]
        if inside and char == "}":
            break
        if char == "\\" and text.startswith("$", at + 1):
            literal.append("$")
            at += 2
            continue
        if char == "$":
            found = _expression(text, at)
            if found is not None:
                if literal:
                    pieces.append("".join(literal))
                    literal = []
                pieces.append(found)
                at += len(found.text)
                continue
        literal.append(char)
        at += 1
    if literal:
        pieces.append("".join(literal))
    return pieces, at


def _expression(text: str, at: int) -> Expression | None:
    """The expression starting at ``text[at] == "$"``, or None (a literal ``$``)."""
    if not text.startswith("{", at + 1):
        bare = _NAME.match(text, at + 1)
        if bare is None:
            return None
        return Expression(text[at : bare.end()], bare.group(), braced=False)
    name = _NAME.match(text, at + 2)
    if name is None:
        return None
    after = name.end()
    if text.startswith("}", after):
        return Expression(text[at : after + 1], name.group(), braced=True)
    op = _OPERATOR.match(text, after)
    if op is None:
        return None
    _, end = _split(text, op.end(), inside=True)
    if end >= len(text):
        return None  # no closing brace
    word = text[op.end() : end]
    return Expression(text[at : end + 1], name.group(), braced=True, op=op.group(), word=word)


def variable_names(word: str) -> set[str]:
    """The names of every variable ``word`` refers to, nested ones included."""
    names: set[str] = set()
    for piece in split_expressions(word):
        if isinstance(piece, Expression):
            names.add(piece.name)
            if piece.word is not None:
                names |= variable_names(piece.word)
    return names


_REDUNDANT_ESCAPE: Final = re.compile(r"\\\$(?![{A-Za-z_])")


def canonical_word(word: str) -> str:
    """``word`` with each ``\\$`` that escapes nothing (it does not precede ``{`` or a name)
    written as ``$``: the same word, spelled one way (keys hold words as written)."""
    return _REDUNDANT_ESCAPE.sub("$", word) if "\\$" in word else word


def expand(word: str, variables: Mapping[str, str], *, keep_unknown: bool = False) -> str:
    """Expand ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:+alt}`` like the Dockerfile,
    nested ones too (``${A:-${B}}``).

    Only the forms the Dockerfile frontend supports; ``\\$`` stays a literal ``$``. With
    ``keep_unknown``, a reference to a variable not in ``variables`` is left as written: it
    names a variable of the base image, which only a backend that has read the base's config
    can expand (the base's key already covers its value).
    """
    if "$" not in word:
        return word
    out: list[str] = []
    for piece in split_expressions(word):
        out.append(
            piece if isinstance(piece, str) else _value(piece, word, variables, keep_unknown)
        )
    return "".join(out)


def _value(
    expression: Expression, word: str, variables: Mapping[str, str], keep_unknown: bool
) -> str:
    name = expression.name
    if keep_unknown and name not in variables:
        return canonical_word(expression.text)
    value = variables.get(name)
    op = expression.op
    if op is None:
        return value or ""
    empty_counts = op.startswith(":")
    is_set = value is not None and (value != "" or not empty_counts)
    alternative = expand(expression.word or "", variables, keep_unknown=keep_unknown)
    if op.endswith("-"):
        return value if is_set and value is not None else alternative
    if op.endswith("+"):
        return alternative if is_set else ""
    if not is_set:
        raise ExpansionError(word, alternative or f"{name} is not set")
    return value or ""


#: The platform ARGs BuildKit defines for every build (global: usable in FROM lines; in a
#: stage only once declared with ``ARG NAME``).
AUTOMATIC_ARGS: Final = (
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
)


def platform_args(target: str, build: str) -> dict[str, str]:
    """The automatic platform ARGs for canonical platforms ``target`` and ``build``."""
    values: dict[str, str] = {}
    for prefix, text in (("BUILD", build), ("TARGET", target)):
        os_name, _, rest = text.partition("/")
        arch, _, variant = rest.partition("/")
        values.update(
            {
                f"{prefix}PLATFORM": text,
                f"{prefix}OS": os_name,
                f"{prefix}ARCH": arch,
                f"{prefix}VARIANT": variant,
            }
        )
    return values


#: BuildKit's predefined proxy ARGs: a ``--build-arg`` of one (any case) reaches every RUN's
#: environment in both cases, undeclared, and stays out of cache keys and the image.
PROXY_ARGS: Final = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")


def proxy_env(build_args: Mapping[str, str]) -> dict[str, str]:
    """The environment the proxy ``build_args`` give a RUN, as BuildKit adds it last."""
    env: dict[str, str] = {}
    for name, value in build_args.items():
        if name.upper() in PROXY_ARGS and value:
            env.update({name.upper(): value, name.lower(): value})
    return env


@attrs.frozen(kw_only=True)
class ArgScope:
    """What an ``ARG`` step can take a value from, besides its own default.

    ``build_args`` are the ``--build-arg`` values (they win over everything); ``globals`` are
    the values of the global ARGs (declared before any stage, after ``--build-arg``) and of
    the automatic platform ARGs (a ``--build-arg`` overrides one, as BuildKit lets it). A stage's ``ARG NAME`` without a default takes the global's.
    """

    build_args: Mapping[str, str] = attrs.field(factory=dict)
    globals: Mapping[str, str] = attrs.field(factory=dict)
    #: The global ARGs as declared (name, default), in file order (the lowering writes them).
    declared: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def make(
        cls,
        build_args: Mapping[str, str],
        declared: Sequence[tuple[str, str | None]],
        *,
        target_platform: str,
        build_platform: str,
    ) -> ArgScope:
        """The scope of a build: ``declared`` global ARGs (name, default) in file order, each
        default expanded with the globals before it, as BuildKit expands global ARGs."""
        values = platform_args(target_platform, build_platform)
        # A --build-arg overrides an automatic ARG's value too (not the build's platform).
        values.update((name, build_args[name]) for name in AUTOMATIC_ARGS if name in build_args)
        for name, default in declared:
            if name in build_args:
                values[name] = build_args[name]
            elif default is not None:
                values[name] = expand(default, values)
            else:
                values.pop(name, None)
        return cls(build_args=dict(build_args), globals=values, declared=tuple(declared))

    def value(self, name: str, default: str | None) -> str | None:
        """An ARG's value: ``--build-arg``, else its (expanded) default, else the global's."""
        if name in self.build_args:
            return self.build_args[name]
        if default is not None:
            return default
        return self.globals.get(name)

    def expand_global(self, word: str) -> str:
        """``$VAR`` expansion in a FROM line: global ARGs and platform ARGs only."""
        return expand(word, self.globals)


def _set(pairs: tuple[tuple[str, str], ...], name: str, value: str) -> tuple[tuple[str, str], ...]:
    """BuildKit's environment write: an existing name is removed, the pair is appended."""
    return (*(pair for pair in pairs if pair[0] != name), (name, value))


def _replace(
    pairs: tuple[tuple[str, str], ...], name: str, value: str
) -> tuple[tuple[str, str], ...]:
    """The image config's Env write: an existing name keeps its place."""
    if any(pair[0] == name for pair in pairs):
        return tuple((n, value if n == name else v) for n, v in pairs)
    return (*pairs, (name, value))


@attrs.frozen(kw_only=True)
class BuildState:
    """What config steps accumulate and later steps read: the Dockerfile's implicit state.

    ``env`` is BuildKit's environment of the stage, in BuildKit's order: ENV pairs and the
    values ARGs took (an ARG without a value adds nothing), each write moving its name to the
    end. RUN sees it, ``$VAR`` expands with it, and RUN keys hash it in order (BuildKit's do).
    ``config_env`` is the image config's ``Env``: ENV only, a write keeping its name's place.
    ``workdir`` is the working directory as BuildKit keeps it: an absolute path as written
    (``/app/`` and ``/app`` differ to RUN), a relative one joined to the previous and cleaned.

    At plan time a stage ``FROM`` an image does not know the image's config (its Env,
    WorkingDir, User): planning reads no image. Such a state ``inherits``: references to
    variables it does not define stay as written, and ``workdir`` is relative to the base's
    WorkingDir (``""`` is the base's own). Keys stay exact, because the base's key covers its
    config. A backend that has read the config replays the steps on
    :meth:`from_image_config` to get concrete values.
    """

    env: tuple[tuple[str, str], ...] = ()
    config_env: tuple[tuple[str, str], ...] = ()
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
            config_env=tuple(env),
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
        """Variables visible to ``$VAR`` expansion and RUN: the environment by name."""
        return dict(self.env)

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

    def workdir_after(self, path: str) -> str:
        """The working directory ``WORKDIR path`` leaves, as BuildKit keeps it."""
        expanded = self.expand(path)
        if expanded.startswith("/"):
            return expanded
        joined = posixpath.join(self.workdir, expanded)
        if joined.startswith("/"):
            return clean_container_path(joined)
        cleaned = posixpath.normpath(joined) if joined else "."
        return "" if cleaned == "." else cleaned

    def apply(self, step: Step, scope: ArgScope) -> BuildState:
        """Return the state after ``step`` (the state is unchanged by filesystem steps)."""
        if isinstance(step, Env):
            env, config_env = self.env, self.config_env
            # One ENV expands every value with the values from before it.
            for name, value in step.items:
                expanded = self.expand(value)
                env = _set(env, name, expanded)
                config_env = _replace(config_env, name, expanded)
            return attrs.evolve(self, env=env, config_env=config_env)
        if isinstance(step, Arg):
            default = None if step.default is None else self.expand(step.default)
            taken = scope.value(step.name, default)
            if taken is None:
                return self
            return attrs.evolve(self, env=_set(self.env, step.name, taken))
        if isinstance(step, Workdir):
            return attrs.evolve(self, workdir=self.workdir_after(step.path))
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


def replay(steps: Sequence[Step], start: BuildState, scope: ArgScope) -> list[BuildState]:
    """The state after each of ``steps``, from ``start`` (e.g. a base's known config)."""
    states = []
    state = start
    for step in steps:
        state = state.apply(step, scope)
        states.append(state)
    return states

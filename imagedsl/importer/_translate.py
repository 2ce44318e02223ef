"""A parsed Dockerfile turned into the statements of a build.py.

Each Dockerfile stage becomes one variable holding a chain of DSL calls, named after the
stage; global ARGs become ``dsl.arg`` values; COPY sources become selections of one context
(the Dockerfile's directory, with its ``.dockerignore``). What a build.py cannot say exactly is
refused with the Dockerfile's line, never turned into a different build.
"""

from __future__ import annotations

import keyword
import posixpath
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from imagedsl.backends.dockerfile._words import shell_form_is_exact
from imagedsl.buildstate import DEFAULT_SHELL, expand
from imagedsl.errors import InputError
from imagedsl.importer._check import refusal
from imagedsl.importer._format import (
    Atom,
    Call,
    Chain,
    DictExpr,
    Expr,
    Link,
    ListExpr,
    string_literal,
)
from imagedsl.importer._mountopts import MountOptionError, ram_in_bytes, secret_id
from imagedsl.importer._platform import PlatformError, from_platform
from imagedsl.importer._words import (
    WordError,
    defaults_to_itself,
    has_variable,
    heredoc_text,
    in_context,
    is_git,
    is_url,
    mount_fields,
    read_word,
    split_template,
)

AUTOMATIC_ARGS: Final = frozenset(
    {
        "TARGETPLATFORM",
        "TARGETOS",
        "TARGETARCH",
        "TARGETVARIANT",
        "BUILDPLATFORM",
        "BUILDOS",
        "BUILDARCH",
        "BUILDVARIANT",
    }
)
_RESERVED: Final = frozenset({"dsl", "src", "dsl_targets", "annotations"})
_GLOB: Final = re.compile(r"[*?\[]")
_VAR: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_NAMES: Final = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_HEREDOC_WORD: Final = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2\Z")
#: BuildKit's stage names (lower-cased first): a letter, then letters, digits, ``-_.``.
_STAGE_NAME: Final = re.compile(r"[a-z][a-z0-9_.-]*\Z")
#: Instructions refused without arguments: BuildKit refuses them, or (RUN, CMD, ENTRYPOINT in
#: the shell form) would hand the shell no command.
_NEEDS_ARGUMENTS: Final = frozenset(
    {
        "ARG", "CMD", "ENTRYPOINT", "EXPOSE", "HEALTHCHECK", "LABEL", "ONBUILD", "RUN",
        "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
    }
)  # fmt: skip


@attrs.define
class DockerfileImportError(InputError):
    """A Dockerfile instruction that a build.py cannot express exactly."""

    file: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}"


class _Refused(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def stage_variable(name: str) -> str:
    """The Python name of a stage: lower-cased, ``-`` and ``.`` as ``_``."""
    return name.lower().replace("-", "_").replace(".", "_")


def _string(value: str) -> Atom:
    """A Python string literal, quoted as ruff quotes it: double quotes unless the text holds
    more double quotes than single ones."""
    return Atom(string_literal(value))


def _word(text: str, escape: str) -> str:
    try:
        return read_word(text, escape)
    except WordError as error:
        raise _Refused(str(error)) from None


@attrs.frozen
class Statement:
    """``name = value`` with the comment lines above it."""

    name: str
    value: Expr | Chain
    comments: tuple[str, ...] = ()


@attrs.define
class _Stage:
    variable: str
    name: str | None
    chain: Chain
    line: int
    shell: tuple[str, ...] = DEFAULT_SHELL
    #: The working directory where the Dockerfile says it (None: the base image's, unknown).
    workdir: str | None = None
    #: The FROM line's --platform as written, for the stages continued from this one.
    platform: str | None = None
    #: The line of the stage's first ONBUILD, if it has one.
    onbuild_line: int | None = None
    #: Whether the build.py chain holds a CMD (set here or in a stage this one continues).
    chain_cmd: bool = False
    #: Whether this Dockerfile stage has set CMD itself.
    own_cmd: bool = False


@attrs.define
class Translation:
    """What the writer needs: header comments, global ARGs, context, stages, targets."""

    directives: list[str] = attrs.Factory(list)
    globals: list[Statement] = attrs.Factory(list)
    context: Statement | None = None
    stages: list[Statement] = attrs.Factory(list)
    targets: Statement | None = None
    trailing: list[str] = attrs.Factory(list)


class Translator:
    """Turns parsed commands (with their comments) into statements."""

    def __init__(
        self,
        file: str,
        context_dir: Path,
        context_path: str,
        escape: str,
        ignore: Sequence[str] | None,
    ) -> None:
        self.file = file
        self.context_dir = context_dir
        self.context_path = context_path
        self.escape = escape
        self.ignore = ignore
        self.global_args: dict[str, str] = {}  # ARG name -> Python name
        self.global_defaults: dict[str, str] = {}  # ARG name -> its default, expanded
        self.stages: list[_Stage] = []
        self.by_name: dict[str, _Stage] = {}
        self.uses_context = False
        self.taken: set[str] = set(_RESERVED)
        self.later_stages: set[str] = set()  # names of stages not yet reached
        self.images: dict[str, str] = {}  # image reference (COPY --from=image) -> variable
        self._statements: list[Statement] = []
        self.current = _Stage("", None, Chain(Atom("")), 0)
        self._pending_stage_comments: list[str] = []

    # -- names ------------------------------------------------------------------------------

    def _fresh(self, wanted: str) -> str:
        name = wanted
        if not name.isidentifier() or keyword.iskeyword(name):
            name = f"stage_{name}" if f"stage_{name}".isidentifier() else "stage"
        base, n = name, 2
        while name in self.taken:
            name = f"{base}_{n}"
            n += 1
        self.taken.add(name)
        return name

    # -- the whole file ---------------------------------------------------------------------

    def translate(self, commands: Sequence[Any], comments: dict[int, list[str]]) -> Translation:
        result = Translation()
        for command in commands:
            if command.cmd == "FROM" and len(command.value) == 3:
                self.later_stages.add(command.value[2].lower())
        current: _Stage | None = None
        pending: list[str] = []
        for command in commands:
            pending.extend(comments.get(command.start_line, []))
            try:
                if command.cmd in _NEEDS_ARGUMENTS and not command.value and not command.json:
                    raise _Refused(f"{command.cmd} without arguments")
                if command.cmd == "FROM":
                    if current is not None:
                        self._finish(current)
                    current = self._from(command)
                    self.current = current
                    self._pending_stage_comments = pending
                    pending = []
                elif current is None:
                    if command.cmd != "ARG":
                        raise _Refused(f"{command.cmd} before the first FROM")
                    result.globals.extend(self._global_args(command, pending))
                    pending = []
                else:
                    link_comments = tuple(pending)
                    pending = []
                    for call in self._instruction(command):
                        problem = refusal(call, method=True)
                        if problem is not None:
                            raise _Refused(problem)
                        current.chain = Chain(
                            current.chain.head, (*current.chain.links, Link(call, link_comments))
                        )
                        link_comments = ()
            except _Refused as refused:
                raise DockerfileImportError(
                    self.file, command.start_line, refused.problem
                ) from None
        if current is None:
            raise DockerfileImportError(self.file, 1, "no FROM instruction")
        self._finish(current)
        if current.name is None:
            # The last stage is the default target: name it, as a Dockerfile's has no name.
            self.taken.discard(current.variable)
            current.variable = self._fresh("image")
            self._statements[-1] = attrs.evolve(self._statements[-1], name=current.variable)
        result.trailing = [*pending, *comments.get(-1, [])]
        result.stages = self._statements
        if self.uses_context:
            args: list[Expr | tuple[str, Expr]] = [_string(self.context_path)]
            if self.ignore:
                args.append(("ignore", ListExpr(tuple(_string(p) for p in self.ignore))))
            result.context = Statement("src", Call("dsl.context", tuple(args)))
        names = [self.stages[-1].variable]
        names += [s.variable for s in self.stages[:-1] if s.name is not None]
        result.targets = Statement(
            "dsl_targets", Call("dsl.targets", tuple(_string(n) for n in names))
        )
        return result

    def _finish(self, stage: _Stage) -> None:
        # Only finished stages can be named by later instructions (BuildKit refuses a loop).
        self.by_name[str(len(self.stages))] = stage
        if stage.name is not None:
            self.by_name[stage.name] = stage
        self.stages.append(stage)
        chain = stage.chain
        value: Expr | Chain = chain
        if not chain.links and isinstance(chain.head, Atom):
            value = Call("dsl.image", (chain.head,))  # FROM <stage> and nothing else
        self._statements.append(
            Statement(stage.variable, value, tuple(self._pending_stage_comments))
        )

    # -- global ARGs and FROM ---------------------------------------------------------------

    def _global_args(self, command: Any, comments: list[str]) -> list[Statement]:
        out: list[Statement] = []
        for i, item in enumerate(command.value):
            name, eq, default = item.partition("=")
            if name in AUTOMATIC_ARGS:
                if eq and not defaults_to_itself(name, default):
                    raise _Refused(f"ARG {name} is set by the build from its platform")
                continue  # declaring an automatic ARG globally changes nothing
            # BuildKit takes any name (``ARG BASE # note`` declares "#" too); one that no
            # ``$NAME`` can read still passes its default to an ARG of that name in a stage.
            python = self._fresh(name if name.isidentifier() else re.sub(r"\W", "_", f"ARG_{name}"))
            self.global_args[name] = python
            if eq:
                self.global_defaults[name] = expand(
                    _word(default, self.escape), self.global_defaults
                )
            else:
                self.global_defaults.pop(name, None)
            args: list[Expr | tuple[str, Expr]] = [_string(name)]
            if eq:
                args.append(_string(_word(default, self.escape)))
            out.append(
                Statement(python, Call("dsl.arg", tuple(args)), tuple(comments) if i == 0 else ())
            )
        return out

    def _template(self, value: str) -> Atom:
        """A string naming global ARGs as an f-string of their Python names."""
        pieces: list[str] = []
        last = 0
        formatted = False
        for match in _VAR.finditer(value):
            name = match.group(1) or match.group(2)
            start = match.start()
            if start > 0 and value[start - 1] == "\\":
                continue
            if name in self.global_args:
                python = self.global_args[name]
            elif name in AUTOMATIC_ARGS:
                python = f"dsl.{name}"
            else:
                continue
            literal = value[last:start]
            pieces.append(literal.replace("{", "{{").replace("}", "}}"))
            pieces.append("{" + python + "}")
            last = match.end()
            formatted = True
        if not formatted:
            return _string(value)
        pieces.append(value[last:].replace("{", "{{").replace("}", "}}"))
        text = "".join(pieces)
        return Atom(string_literal(text, "f"))

    def _from(self, command: Any) -> _Stage:
        flags = _flags(command.flags, {"platform"})
        words = list(command.value)
        name: str | None = None
        if len(words) == 3 and words[1].lower() == "as":
            name = words[2].lower()
            words = words[:1]
        if len(words) != 1:
            raise _Refused("FROM takes an image and an optional AS name")
        if name is not None:
            if not _STAGE_NAME.match(name):
                raise _Refused(
                    f"stage name {command.value[2]!r}: BuildKit refuses it too (a letter "
                    "first, then letters, digits, '-', '_' or '.')"
                )
            if name in self.by_name:
                raise _Refused(f"a second stage named {name!r}: BuildKit refuses it too")
            self.later_stages.discard(name)
        ref = _word(words[0], self.escape)
        if has_variable(ref) and not self._without_undeclared(ref):
            raise _Refused(
                f"FROM {words[0]}: BuildKit expands FROM with the global ARGs only (declared "
                "before the first FROM), so the image name is empty"
            )
        platform = flags.get("platform")
        kwargs: list[tuple[str, Expr]] = []
        if platform is not None:
            try:
                platform = from_platform(_word(platform, self.escape))
            except PlatformError as error:
                raise _Refused(str(error)) from None
            kwargs.append(("platform", _string(platform)))
        head: Expr
        if ref != ref.lower() and ref.lower() in self.by_name and not has_variable(ref):
            raise _Refused(
                f"FROM {ref}: BuildKit looks a FROM up among the stages as written (stage "
                f"names are lower case), so it reads an image, and refuses upper case in one"
            )
        parent = self.by_name.get(ref.lower())
        if parent is not None and platform is not None and platform == parent.platform:
            kwargs = []  # the stage is already built for this platform: the flag changes nothing
        if parent is not None and parent.onbuild_line is not None:
            raise _Refused(
                f"FROM {ref}: BuildKit runs the ONBUILD triggers of that stage (line "
                f"{parent.onbuild_line}) here first and drops them from this image; a build.py "
                "that continues the stage keeps them unrun (write the instructions out instead)"
            )
        if ref.lower() in self.by_name and not kwargs:
            head = Atom(self.by_name[ref.lower()].variable)
        elif ref.lower() in self.by_name:
            raise _Refused("FROM --platform of another stage: the stage has its own platform")
        elif has_variable(ref) and self._names_a_stage(ref):
            if kwargs:
                raise _Refused("FROM --platform of another stage: the stage has its own platform")
            head = Call("dsl.from_stage", (_string(self._stage_template(ref)),))
        elif ref == "scratch":
            head = Call("dsl.scratch", tuple(kwargs))
        else:
            head = Call("dsl.image", (self._template(ref), *kwargs))
            problem = refusal(head, method=False)
            if problem is not None:
                raise _Refused(problem)
        last_guess = name or f"stage_{len(self.stages)}"
        variable = self._fresh(stage_variable(last_guess))
        shell = parent.shell if parent is not None else DEFAULT_SHELL
        # BuildKit resolves a relative mount target against the working directory: known
        # here for scratch ("/") and for a stage continued from one whose WORKDIR is known.
        workdir = parent.workdir if parent is not None else "/" if ref == "scratch" else None
        stage = _Stage(variable, name, Chain(head), command.start_line, shell, workdir)
        stage.platform = parent.platform if parent is not None else platform
        if parent is not None:
            stage.chain_cmd = parent.chain_cmd
        elif isinstance(head, Call) and head.func == "dsl.from_stage":
            stage.chain_cmd = any(s.chain_cmd for s in self.stages)  # any stage it may name
        return stage

    def _names_a_stage(self, template: str) -> bool:
        """Whether BuildKit may read FROM ``template`` as a stage: it expands the global ARGs,
        then looks the value up among the stages. A global ARG with a default takes it; one
        without (or a platform ARG) may hold anything, given when planned."""
        pattern: list[str] = []
        for literal, expression in split_template(template):
            pattern.append(re.escape(literal.lower()))
            if not expression:
                continue
            names = set(_NAMES.findall(expression))
            unknown = {n for n in names if n not in self.global_defaults}
            if unknown & (self.global_args.keys() | AUTOMATIC_ARGS):
                pattern.append(".*")
            else:  # the defaults decide it (an undeclared name expands to nothing)
                pattern.append(re.escape(expand(expression, self.global_defaults).lower()))
        return any(s.name and re.fullmatch("".join(pattern), s.name) for s in self.stages)

    def _without_undeclared(self, template: str) -> str:
        """``template`` without the variables BuildKit expands to nothing in a FROM line: those
        neither global ARGs nor platform ARGs (an ARG of an earlier stage is not global)."""

        def kept(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            declared = name in self.global_args or name in AUTOMATIC_ARGS
            escaped = match.start() > 0 and template[match.start() - 1] == "\\"
            return match.group(0) if declared or escaped else ""

        return _VAR.sub(kept, template)

    def _stage_template(self, template: str) -> str:
        """A FROM naming a stage by ARGs, its literal text named as stages are named here."""
        out: list[str] = []
        for literal, expression in split_template(template):
            out.append(stage_variable(literal))
            simple = _VAR.fullmatch(expression)
            out.append("${" + (simple[1] or simple[2]) + "}" if simple else expression)
        return "".join(out)

    # -- instructions -----------------------------------------------------------------------

    def _instruction(self, command: Any) -> list[Call]:
        handler = getattr(self, f"_i_{command.cmd.lower()}", None)
        if handler is None:
            raise _Refused(f"{command.cmd} has no equivalent in a build.py")
        calls: list[Call] = handler(command)
        return calls

    def _no_flags(self, command: Any) -> None:
        if command.flags:
            raise _Refused(f"{command.cmd} {command.flags[0]}: unknown flag")

    def _i_run(self, command: Any) -> list[Call]:
        mounts: list[Expr] = []
        network: str | None = None
        for flag in command.flags:
            key, _, value = flag[2:].partition("=")
            if key == "mount":
                mounts.append(self._mount(value))
            elif key == "network":
                if value not in ("default", "none", "host"):
                    raise _Refused(f"RUN --network={value}: not default, none or host")
                network = value
            else:
                raise _Refused(f"RUN --{key} has no equivalent in a build.py")
        kwargs: list[tuple[str, Expr]] = []
        if mounts:
            kwargs.append(("mounts", ListExpr(tuple(mounts))))
        if network is not None and network != "default":
            kwargs.append(("network", _string(network)))
        return [Call("run", (self._command_arg(command), *kwargs))]

    def _command_arg(self, command: Any) -> Expr:
        if command.heredocs:
            return self._script(command)
        if command.json:
            shell_form = self._as_shell_form(command.value, self.current.shell)
            if shell_form is not None:
                return _string(shell_form)
            return ListExpr(tuple(_string(v) for v in command.value))
        return _string(command.value[0])

    @staticmethod
    def _as_shell_form(argv: Sequence[str], shell: Sequence[str]) -> str | None:
        """The shell-form command a JSON form spells, when no shell form could: the lowering
        writes such a command (say, one with a line break) as SHELL + [command]."""
        spelled = len(argv) == len(shell) + 1 and tuple(argv[:-1]) == tuple(shell)
        if spelled and not shell_form_is_exact(argv[-1]):
            return str(argv[-1])
        return None

    def _script(self, command: Any) -> Expr:
        if command.json or len(command.value) != 1:
            raise _Refused("RUN with a heredoc in the JSON form: BuildKit refuses it too")
        match = _HEREDOC_WORD.match(command.value[0].strip())
        if match is None or len(command.heredocs) != 1:
            # `RUN cat <<EOF > file`: BuildKit hands the shell the line, then each heredoc's
            # text and its delimiter, and the shell reads the heredocs itself.
            bodies = (f"\n{h.content}{h.name}" for h in command.heredocs)
            return _string(command.value[0] + "".join(bodies))
        content = _heredoc_content(command, match)
        if content.startswith("#!"):
            raise _Refused("RUN <<EOF starting with #!: BuildKit runs it as a file, not a script")
        normal = textwrap.dedent(content).lstrip("\n")
        if normal != content or not content.endswith("\n"):
            return _string(content)  # a shell-form string keys and runs the same
        return Call("dsl.script", (_string(content),))

    def _mount(self, spec: str) -> Expr:
        fields: dict[str, str] = {}
        for part in mount_fields(spec):
            key, eq, value = part.partition("=")
            if "$" in value:
                # BuildKit expands these with the stage's ARG and ENV values; a build.py's
                # mount options are plain values.
                raise _Refused(f"--mount option {part}: a variable in a mount option")
            fields[key.strip().lower()] = value if eq else "true"
        kind = fields.pop("type", "bind")
        target = fields.pop("target", None) or fields.pop("dst", None)
        target = target or fields.pop("destination", None)
        if target is not None or kind == "bind":
            target = self._mount_target(target or "")
        kwargs: list[tuple[str, Expr]] = []

        def take_int(key: str, name: str, base: int = 10) -> None:
            if key in fields:
                text = fields.pop(key)
                try:
                    value = int(text, base)
                except ValueError:
                    raise _Refused(f"--mount option {key}={text}: not a number") from None
                kwargs.append((name, Atom(f"0o{value:o}" if base == 8 else str(value))))

        def take_bool(key: str, name: str, *aliases: str) -> None:
            for alias in (key, *aliases):
                if alias in fields and fields.pop(alias).lower() in ("true", "1", ""):
                    kwargs.append((name, Atom("True")))

        if kind == "cache":
            if target is None:
                raise _Refused("--mount=type=cache needs a target")
            if "from" in fields:
                # BuildKit seeds the cache from that stage or image's `source` directory.
                raise _Refused(
                    f"--mount=type=cache,from={fields['from']}: a cache seeded from a stage or "
                    "image has no equivalent in a build.py (bind-mount it, or copy it in)"
                )
            if "id" in fields:
                kwargs.append(("id", _string(fields.pop("id"))))
            if "sharing" in fields:
                kwargs.append(("sharing", _string(fields.pop("sharing"))))
            take_int("mode", "mode", 8)
            take_int("uid", "uid")
            take_int("gid", "gid")
            take_bool("readonly", "readonly", "ro")
            self._leftover(kind, fields)
            return Call("dsl.cache", (_string(target), *kwargs))
        if kind == "secret":
            try:
                name = secret_id(fields, target)
            except MountOptionError as error:
                raise _Refused(str(error)) from None
            if target is not None:
                kwargs.append(("target", _string(target)))
            if "env" in fields:
                kwargs.append(("env", _string(fields.pop("env"))))
            take_bool("required", "required")
            take_int("mode", "mode", 8)
            take_int("uid", "uid")
            take_int("gid", "gid")
            self._leftover(kind, fields)
            return Call("dsl.secret", (_string(name), *kwargs))
        if kind == "tmpfs":
            if target is None:
                raise _Refused("--mount=type=tmpfs needs a target")
            try:
                size = ram_in_bytes(fields.pop("size", "0"))
            except MountOptionError as error:
                raise _Refused(str(error)) from None
            if size:  # BuildKit sets no limit for size=0
                kwargs.append(("size", Atom(str(size))))
            self._leftover(kind, fields)
            return Call("dsl.tmpfs", (_string(target), *kwargs))
        if kind == "bind":
            if target is None:
                raise _Refused("--mount=type=bind needs a target")
            source = fields.pop("source", None) or fields.pop("src", None) or "."
            # A bind mount is read-only unless it says otherwise: `readonly=false` is `rw`.
            for alias in ("readonly", "ro"):
                if fields.pop(alias, "true").lower() in ("false", "0"):
                    fields["readwrite"] = "true"
            take_bool("readwrite", "readwrite", "rw")
            if "from" in fields:
                stage = self._source_ref(fields.pop("from"), "--mount from")
                origin: Expr = Call(f"{stage}.path", (_string(_stage_path(source)),))
            else:
                origin = self._context_source([source], "RUN --mount")
            self._leftover(kind, fields)
            return Call("dsl.bind", (origin, _string(target), *kwargs))
        raise _Refused(f"--mount=type={kind} has no equivalent in a build.py")

    def _leftover(self, kind: str, fields: dict[str, str]) -> None:
        if fields:
            raise _Refused(f"--mount=type={kind}: option {sorted(fields)[0]!r} is not supported")

    def _mount_target(self, target: str) -> str:
        """A mount's target as an absolute path: BuildKit joins a relative one (or none, for
        a bind mount) to the working directory of the RUN."""
        if target.startswith("/"):
            return target
        workdir = self.current.workdir
        if workdir is None:
            raise _Refused(
                f"--mount target {target or '(none)'!r} is relative to a working directory "
                "set by the base image: write an absolute target"
            )
        return posixpath.normpath(posixpath.join("/", workdir, target))

    def _source_ref(self, name: str, what: str) -> str:
        """The variable that ``--from=name`` names: an earlier stage, or else an image
        (BuildKit reads a name that is no stage's as an image reference)."""
        stage = self.by_name.get(name.lower())
        if stage is not None:
            return stage.variable
        if self.current.name is not None and name.lower() == self.current.name:
            raise _Refused(f"{what}={name}: the stage copies from itself (BuildKit refuses it too)")
        if name.lower() in self.later_stages or name.isdigit():
            raise _Refused(f"{what}={name}: not an earlier stage of this Dockerfile")
        if "$" in name:
            raise _Refused(
                f"{what}={name}: BuildKit does not expand variables in --from (it refuses them, "
                "or reads the name as written); name the image in a stage: "
                "FROM ${VAR} AS name, then --from=name"
            )
        variable = self.images.get(name)
        if variable is None:
            last = name.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
            variable = self._fresh(stage_variable(last) + "_image")
            self.images[name] = variable
            # Written before the stage that uses it (the stage's own statement comes later).
            self._statements.append(Statement(variable, Call("dsl.image", (_string(name),))))
        return variable

    def _context_source(self, sources: Sequence[str], what: str) -> Expr:
        """Context files as a selection; a path with ``$VAR`` stays as written (the planner
        expands it with the stage's ARG and ENV values, as BuildKit does)."""
        del what
        self.uses_context = True
        sources = [in_context(s) for s in sources]
        if len(sources) > 1:
            return Call("src.select", tuple(_string(s) for s in sources))
        source = sources[0]
        clean = source.strip("/") or "."
        if clean in (".", "./"):
            return Atom("src")
        if has_variable(source):
            # What the path names is known once expanded: a directory by its slash only.
            return Call("src.dir" if source.endswith("/") else "src.select", (_string(clean),))
        if _GLOB.search(source):
            return Call("src.glob", (_string(source),))
        path = self.context_dir / clean.replace("\\$", "$")
        if path.is_dir() or source.endswith("/"):
            return Call("src.dir", (_string(clean),))
        if path.is_file():
            return Call("src.file", (_string(clean),))
        return Call("src.select", (_string(source),))

    def _copy_like(self, command: Any, add: bool) -> list[Call]:
        known = {"from", "chown", "chmod", "link", "exclude", "checksum", "parents"}
        flags = _flags(command.flags, known, repeatable={"exclude"})
        words = list(command.value)
        if len(words) < 2:
            raise _Refused(f"{command.cmd} needs a source and a destination")
        # BuildKit passes every path through its word lexer, in the JSON form too (quotes
        # and backslashes are removed after the JSON is decoded).
        dest = _word(words[-1], self.escape)
        _no_windows_path(dest)
        raw_sources = words[:-1]
        kwargs: list[tuple[str, Expr]] = []
        if "chown" in flags:
            kwargs.append(("chown", _string(_word(str(flags["chown"]), self.escape))))
        if "chmod" in flags:
            chmod = str(flags["chmod"])
            if not re.fullmatch(r"[0-7]{1,5}", chmod) or int(chmod, 8) > 0o7777:
                raise _Refused(
                    f"{command.cmd} --chmod={chmod}: a build.py takes an octal mode (BuildKit "
                    "1.14 applies a symbolic one to each file's own mode)"
                )
            kwargs.append(("chmod", Atom(f"0o{int(chmod, 8):03o}")))
        if flags.get("link") in ("", "true"):
            kwargs.append(("link", Atom("True")))
        if flags.get("parents") in ("", "true"):
            if add:
                raise _Refused("ADD --parents has no equivalent in a build.py")
            kwargs.append(("parents", Atom("True")))
        excludes = flags.get("exclude")
        if excludes:
            kwargs.append(("exclude", ListExpr(tuple(_string(e) for e in excludes))))
        method = "add" if add else "copy"
        if command.heredocs:
            if "checksum" in flags:
                raise _Refused("ADD --checksum of a heredoc: BuildKit refuses it too (no URL)")
            return [self._inline(command, raw_sources, dest, kwargs)]
        sources = [_word(s, self.escape) for s in raw_sources]
        if not add and any(is_url(s) or is_git(s) for s in sources):
            raise _Refused("COPY of a URL: BuildKit refuses it too (ADD downloads)")
        if any(is_git(s) for s in sources):
            raise _Refused(f"{command.cmd} of a git repository has no equivalent in a build.py")
        if "checksum" in flags:
            if len(sources) == 1 and has_variable(sources[0]):
                raise _Refused(f"ADD --checksum of {sources[0]}: a build.py writes its URL out")
            if len(sources) != 1 or not is_url(sources[0]):
                raise _Refused("ADD --checksum takes one URL")
            source: Expr = Call(
                "dsl.url", (_string(sources[0]), ("checksum", _string(str(flags["checksum"]))))
            )
            return [Call(method, (source, _string(dest), *kwargs))]
        if any(is_url(s) for s in sources):
            raise _Refused(f"{command.cmd} of a URL without --checksum: pin it with a checksum")
        if "from" in flags:
            if add:
                raise _Refused("ADD --from: BuildKit refuses it too (no such flag); use COPY")
            stage = self._source_ref(str(flags["from"]), f"{command.cmd} --from")
            paths = [_stage_path(s) for s in sources]
            into_directory = len(paths) > 1 or any(
                _GLOB.search(p) and not has_variable(p) for p in paths
            )
            if into_directory and not (dest.endswith("/") or dest == "."):
                what = "several sources" if len(paths) > 1 else "a wildcard source"
                raise _Refused(
                    f"COPY --from with {what} to {dest!r}: BuildKit copies each source onto "
                    "it in turn (a file overwrites the one before, a directory after a file "
                    "fails); end the destination with / to copy into a directory"
                )
            if len(paths) > 1:
                source = Call(f"{stage}.paths", tuple(_string(p) for p in paths))
            elif paths[0] == "/":
                source = Atom(stage)
            else:
                source = Call(f"{stage}.path", (_string(paths[0]),))
            return [Call(method, (source, _string(dest), *kwargs))]
        if len(sources) > 1 and not (dest.endswith("/") or dest.rstrip("/") in (".", "..")):
            raise _Refused(
                f"{command.cmd} of several sources to {dest!r}: BuildKit copies each onto it in "
                "turn unless it is a directory already; end it with / to copy into a directory"
            )
        source = self._context_source(sources, command.cmd)
        return [Call(method, (source, _string(dest), *kwargs))]

    def _inline(
        self,
        command: Any,
        sources: Sequence[str],
        dest: str,
        kwargs: list[tuple[str, Expr]],
    ) -> Call:
        # ADD <<EOF writes the file as COPY <<EOF does (BuildKit unpacks no heredoc).
        match = _HEREDOC_WORD.match(sources[0]) if len(sources) == 1 else None
        if match is None or len(command.heredocs) != 1:
            raise _Refused(f"{command.cmd} with heredocs: only `{command.cmd} <<EOF /file`")
        content = _heredoc_content(command, match)
        if not match.group(2):  # unquoted: BuildKit reads escapes and expands variables
            try:
                content = heredoc_text(content)
            except WordError as error:
                raise _Refused(
                    f"{command.cmd} <<EOF {error}, and an inline file is written as is: write "
                    "the value in, or quote the delimiter (<<'EOF') to keep the text unread"
                ) from None
        mode = 0o644
        rest: list[tuple[str, Expr]] = []
        for name, value in kwargs:
            if name == "chmod" and isinstance(value, Atom):
                mode = int(value.text, 8)
            elif name in ("chown", "link"):
                rest.append((name, value))
            else:
                raise _Refused(f"{command.cmd} <<EOF with --{name}")
        inline_args: list[Expr | tuple[str, Expr]] = [_string(content)]
        if mode != 0o644:
            inline_args.append(("mode", Atom(f"0o{mode:o}")))
        return Call("copy", (Call("dsl.inline", tuple(inline_args)), _string(dest), *rest))

    def _i_copy(self, command: Any) -> list[Call]:
        return self._copy_like(command, add=False)

    def _i_add(self, command: Any) -> list[Call]:
        return self._copy_like(command, add=True)

    def _i_env(self, command: Any) -> list[Call]:
        self._no_flags(command)
        return [Call("env", self._pairs(command.value))]

    def _i_label(self, command: Any) -> list[Call]:
        self._no_flags(command)
        return [Call("label", self._pairs(command.value))]

    def _pairs(self, values: Sequence[str]) -> tuple[Expr | tuple[str, Expr], ...]:
        pairs = [
            (_word(values[i], self.escape), _word(values[i + 1], self.escape))
            for i in range(0, len(values) - 1, 2)
        ]
        # A name given twice keeps its place with its last value, as BuildKit sets them in
        # turn (each word expanded with the values from before the instruction).
        pairs = list(dict(pairs).items())
        names = [k for k, _ in pairs]
        if all(k.isidentifier() and not keyword.iskeyword(k) for k in names):
            return tuple((k, _string(v)) for k, v in pairs)
        return (DictExpr(tuple((_string(k), _string(v)) for k, v in pairs)),)

    def _i_arg(self, command: Any) -> list[Call]:
        self._no_flags(command)
        calls: list[Call] = []
        for item in command.value:
            name, eq, default = item.partition("=")
            if eq:
                calls.append(Call("arg", (_string(name), _string(_word(default, self.escape)))))
            elif name in self.global_args:
                calls.append(Call("arg", (Atom(self.global_args[name]),)))
            elif name in AUTOMATIC_ARGS:
                calls.append(Call("arg", (Atom(f"dsl.{name}"),)))
            else:
                calls.append(Call("arg", (_string(name),)))
        return calls

    def _i_workdir(self, command: Any) -> list[Call]:
        self._no_flags(command)
        path = _word(command.value[0], self.escape)
        _no_windows_path(path)
        current = self.current.workdir
        if has_variable(path):
            self.current.workdir = None
        elif path.startswith("/"):
            self.current.workdir = path
        elif current is not None:
            self.current.workdir = posixpath.join(current, path)
        return [Call("workdir", (_string(path),))]

    def _i_user(self, command: Any) -> list[Call]:
        self._no_flags(command)
        user = _word(command.value[0], self.escape)
        name, sep, group = user.partition(":")
        if name.isdigit() and (not sep or group.isdigit()):
            args: tuple[Expr, ...] = (Atom(str(int(name))),)
            if sep:
                args += (Atom(str(int(group))),)
            if str(int(name)) == name and (not sep or str(int(group)) == group):
                return [Call("user", args)]
        if sep and ":" not in group and name and group and "${" not in name:  # ${U:-x}
            return [Call("user", (_string(name), _string(group)))]
        return [Call("user", (_string(user),))]

    def _i_expose(self, command: Any) -> list[Call]:
        self._no_flags(command)
        ports: list[Expr] = []
        for word in command.value:
            port = _word(word, self.escape)
            if not has_variable(port):
                number, slash, protocol = port.partition("/")
                # BuildKit reads "80/TCP" as 80/tcp, and exposes the container's port of a
                # publishing spec ("8080:80", "127.0.0.1:8080:80").
                number = number.rpartition(":")[2]
                port = number + slash + protocol.lower()
            ports.append(Atom(port) if port.isdigit() and port == str(int(port)) else _string(port))
        return [Call("expose", tuple(ports))]

    def _i_volume(self, command: Any) -> list[Call]:
        self._no_flags(command)
        paths = [_word(v, self.escape) for v in command.value]  # JSON form too, as BuildKit
        for path in paths:
            if not path.startswith(("/", "$")):
                raise _Refused(f"VOLUME {path}: a build.py's VOLUME takes absolute paths")
        return [Call("volume", tuple(_string(p) for p in paths))]

    def _exec_or_shell(self, command: Any, method: str) -> list[Call]:
        self._no_flags(command)
        if command.json:
            shell_form = self._as_shell_form(command.value, self.current.shell)
            if shell_form is not None:
                return [Call(method, (_string(shell_form),))]
            if len(command.value) == 0:
                return [Call(method)]
            if len(command.value) == 1:
                return [Call(method, (ListExpr((_string(command.value[0]),)),))]
            return [Call(method, tuple(_string(v) for v in command.value))]
        return [Call(method, (_string(command.value[0]),))]

    def _i_cmd(self, command: Any) -> list[Call]:
        self.current.chain_cmd = self.current.own_cmd = True
        return self._exec_or_shell(command, "cmd")

    def _i_entrypoint(self, command: Any) -> list[Call]:
        calls = self._exec_or_shell(command, "entrypoint")
        if self.current.chain_cmd and not self.current.own_cmd:
            # BuildKit drops a CMD this Dockerfile stage did not set; the build.py chain
            # continues an earlier stage's, which an ENTRYPOINT keeps: reset it first.
            self.current.chain_cmd = False
            return [Call("cmd"), *calls]
        return calls

    def _i_shell(self, command: Any) -> list[Call]:
        self._no_flags(command)
        if not command.json:
            raise _Refused("SHELL takes a JSON array")
        self.current.shell = tuple(command.value)
        return [Call("shell", tuple(_string(v) for v in command.value))]

    def _i_stopsignal(self, command: Any) -> list[Call]:
        self._no_flags(command)
        # BuildKit keeps the signal as written ("sigterm", "TERM") once it has checked it.
        return [Call("stopsignal", (_string(_word(command.value[0], self.escape)),))]

    def _i_maintainer(self, command: Any) -> list[Call]:
        # BuildKit keeps the rest of the line as written (no variable expands) as ``author``.
        self._no_flags(command)
        name = str(command.value[0]) if command.value else ""
        if not name:
            raise _Refused("MAINTAINER needs a name: BuildKit refuses it too")
        if name.endswith("\\"):
            raise _Refused(
                "MAINTAINER ending with a backslash: no Dockerfile written back holds it"
            )
        return [Call("author", (_string(name),))]

    def _i_onbuild(self, command: Any) -> list[Call]:
        text = command.original.strip()
        text = text[len("ONBUILD") :].strip()
        if "\n" in text:
            raise _Refused("ONBUILD with a heredoc has no equivalent in a build.py")
        if self.current.onbuild_line is None:
            self.current.onbuild_line = command.start_line
        return [Call("onbuild", (_string(text),))]

    def _i_healthcheck(self, command: Any) -> list[Call]:
        values = list(command.value)
        if values and values[0].upper() == "NONE":
            if command.flags:
                raise _Refused("HEALTHCHECK NONE takes no flags")
            return [Call("healthcheck", (Atom("None"),))]
        flags = _flags(command.flags, {"interval", "timeout", "start-period", "retries"})
        kwargs: list[tuple[str, Expr]] = []
        for key in ("interval", "timeout", "start-period"):
            duration = str(flags.get(key, ""))
            if duration.strip("0") == "":
                continue  # BuildKit reads an empty or zero duration as the default (none given)
            kwargs.append((key.replace("-", "_"), _string(duration)))
        if "retries" in flags:
            retries = str(flags["retries"])
            if not re.fullmatch(r"\+?[0-9]+", retries):
                raise _Refused(f"HEALTHCHECK --retries={retries}: BuildKit refuses it too")
            kwargs.append(("retries", Atom(str(int(retries)))))
        if values and values[0].upper() != "CMD":
            raise _Refused(f"HEALTHCHECK {values[0]}: not CMD or NONE; BuildKit refuses it too")
        test = values[1:]
        if not test:
            raise _Refused("HEALTHCHECK without CMD and a command: BuildKit refuses it too")
        # The JSON form stays a list even when it spells a shell's argv: the config says
        # CMD (an argv) for it, CMD-SHELL (run by the image's shell) for the shell form.
        first = ListExpr(tuple(_string(v) for v in test)) if command.json else _string(test[0])
        return [Call("healthcheck", (first, *kwargs))]


def _heredoc_content(command: Any, word: re.Match[str]) -> str:
    """A heredoc's text as BuildKit uses it: ``<<-EOF`` strips each line's leading tabs."""
    content: str = command.heredocs[0].content
    return re.sub(r"(?m)^\t+", "", content) if word.group(1) == "-" else content


def _no_windows_path(path: str, *, drive_relative: bool = False) -> None:
    """Refuse ``C:\\app`` (and ``C:app`` where ``drive_relative``): on Linux, BuildKit
    would read it as a relative path, which no Windows Dockerfile means."""
    if re.match(r"[A-Za-z]:" if drive_relative else r"[A-Za-z]:[\\/]", path):
        raise _Refused(f"{path}: a Windows path has no equivalent in a build.py")


def _stage_path(path: str) -> str:
    """A path inside another stage or image: BuildKit reads a relative one from its root."""
    _no_windows_path(path, drive_relative=True)
    return path if path.startswith("/") else "/" + path.removeprefix("./").removeprefix(".")


def _flags(
    flags: Sequence[str],
    known: set[str],
    repeatable: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag in flags:
        key, eq, value = flag[2:].partition("=")
        if key not in known:
            raise _Refused(f"--{key} has no equivalent in a build.py")
        if key in repeatable:
            out.setdefault(key, []).append(value)
        else:
            out[key] = value if eq else ""
    return out

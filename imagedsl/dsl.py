"""The user-facing DSL: stages are immutable values, each method returns a longer stage.

A :class:`Stage` is a step plus the stage it extends, so stages made from one prefix share it
structurally (and equal prefixes are equal values, which is how the planner builds them once).
Arguments are checked when a step is made; a mistake raises a
:class:`~imagedsl.errors.StepArgumentError` that carries the line of the build file.
"""

from __future__ import annotations

import functools
import os
import re
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

import attrs

from imagedsl._declarations import note as note_declaration
from imagedsl._validate import (
    caller_location,
    check_abs_path,
    check_bool,
    check_chmod,
    check_choice,
    check_duration,
    check_env_name,
    check_int,
    check_owner,
    check_platform,
    check_stage_path,
    check_str,
    check_str_seq,
    check_trigger,
    check_user,
    env_items,
    has_variable,
    is_template,
    parse_label_items,
    parse_port,
    parse_signal,
)
from imagedsl.buildstate import AUTOMATIC_ARGS, expand
from imagedsl.check.catalogue import ALLOWABLE
from imagedsl.contexts import Context, ContextSource, glob_regex, make_context
from imagedsl.errors import ImageDSLError, StepArgumentError
from imagedsl.oci.platform import canonical_platforms
from imagedsl.oci.reference import parse_reference
from imagedsl.steps import (
    GLOB_CHARS,
    NETWORK_MODES,
    SHARING_MODES,
    Add,
    Arg,
    Author,
    BindMount,
    CacheMount,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    FromImage,
    FromScratch,
    FromStage,
    Healthcheck,
    InlineFile,
    Label,
    LayerSpec,
    Mount,
    OnBuild,
    Run,
    Script,
    SecretMount,
    Shell,
    StagePath,
    Step,
    StopSignal,
    TmpfsMount,
    UrlSource,
    User,
    Volume,
    Workdir,
    check_stage_copy_dest,
)

if TYPE_CHECKING:
    from imagedsl.errors import SourceLocation

P = ParamSpec("P")
R = TypeVar("R")

_STAGE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")


def _located(method: Callable[P, R]) -> Callable[P, R]:
    """Attach the caller's build-file line to any error the wrapped constructor raises."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except ImageDSLError as error:
            raise error.with_location(caller_location()) from None

    return wrapper


@attrs.frozen(cache_hash=True)
class StageRef:
    """A stage named lazily (``dsl.stage("builder")``), resolved when the build is planned.

    Lets stages refer to stages defined later in the file; a loop of such references is
    reported as a :class:`~imagedsl.errors.CycleError`.
    """

    name: str

    def path(self, path: str) -> StagePath:
        """A path inside the named stage, for ``copy`` and ``bind`` (``$VAR`` expands in a
        copy, with the copying stage's ARG and ENV values)."""
        return StagePath(self, check_stage_path("path", "path", path))

    @_located
    def paths(self, *paths: str) -> StagePath:
        """Several paths inside the named stage for one ``copy`` (see :meth:`Stage.paths`)."""
        return _stage_paths(self, paths)


@attrs.frozen(eq=False)
class Stage:
    """An image being described: a step, and the stage it extends (None for a FROM).

    Equality and hashing walk the ``parent`` chain in a loop, not by recursion (as attrs'
    generated methods would), so chains of any depth can be compared and hashed; a stage's
    hash is computed once and kept.
    """

    parent: Stage | None
    step: Step
    #: Rule IDs of ``imagedsl check`` that this step allows (``.allow(...)``); not part of
    #: what is built, so not part of equality.
    allowed: frozenset[str] = attrs.field(default=frozenset(), eq=False, repr=False)
    _hash: int | None = attrs.field(default=None, init=False, repr=False)

    def __hash__(self) -> int:
        cached = self._hash
        if cached is not None:
            return cached
        pending: list[Stage] = []
        node: Stage | None = self
        while node is not None and node._hash is None:
            pending.append(node)
            node = node.parent
        value = hash(None) if node is None or node._hash is None else node._hash
        for stage in reversed(pending):  # from the oldest unhashed ancestor down to self
            value = hash((value, stage.step))
            object.__setattr__(stage, "_hash", value)
        return value

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        mine: Stage | None = self
        theirs: Stage | None = other
        while mine is not theirs:
            if mine is None or theirs is None or hash(mine) != hash(theirs):
                return False
            if mine.step != theirs.step:
                return False
            mine, theirs = mine.parent, theirs.parent
        return True

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    # -- structure ---------------------------------------------------------------------------

    def chain(self) -> list[Stage]:
        """Every stage from the FROM to this one, in order."""
        out: list[Stage] = []
        node: Stage | None = self
        while node is not None:
            out.append(node)
            node = node.parent
        out.reverse()
        return out

    def steps(self) -> tuple[Step, ...]:
        """The steps from FROM to here, in order."""
        return tuple(stage.step for stage in self.chain())

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps())

    def __len__(self) -> int:
        return len(self.chain())

    def _then(self, step: Step) -> Stage:
        return Stage(self, step)

    def path(self, path: str) -> StagePath:
        """A path inside this stage, for ``copy`` (``COPY --from``) and ``bind`` mounts
        (``$VAR`` expands in a copy, with the copying stage's ARG and ENV values)."""
        return StagePath(self, check_stage_path("path", "path", path))

    @_located
    def paths(self, *paths: str) -> StagePath:
        """Several paths inside this stage for one ``copy`` (``COPY --from=stage a b dest/``:
        one layer, the paths copied in order, each as ``path`` copies it; a path with ``*``,
        ``?`` or ``[`` is a wildcard pattern, as in a Dockerfile). The destination must end
        with ``/``."""
        return _stage_paths(self, paths)

    @_located
    def allow(self, *rules: str) -> Stage:
        """Let this stage's last step break ``imagedsl check`` rules, by ID or category:
        ``.run("apt-get install -y gcc").allow("package-cache")``. The same step, with the
        findings of those rules listed as suppressed; nothing built changes."""
        if not rules:
            raise StepArgumentError("allow", "rules", "must name at least one rule")
        for rule in rules:
            check_str("allow", "rules", rule)
            if rule not in ALLOWABLE:
                known = ", ".join(sorted(ALLOWABLE))
                raise StepArgumentError(
                    "allow", "rules", f"names no rule: {rule!r}; rules: {known}"
                )
        return Stage(self.parent, self.step, self.allowed | frozenset(rules))

    # -- filesystem steps --------------------------------------------------------------------

    @_located
    def run(
        self,
        command: str | Sequence[str] | Script,
        *,
        mounts: Sequence[Mount] = (),
        network: str = "default",
    ) -> Stage:
        """``RUN``: a string runs through the stage's SHELL; a list is executed as is;
        ``dsl.script(...)`` (``RUN <<EOF``) runs a multi-line script through the SHELL."""
        heredoc = isinstance(command, Script)
        if isinstance(command, Script):
            argv: tuple[str, ...] = (command.text,)
            shell_form = True
        elif isinstance(command, str):
            argv = (check_str("RUN", "command", command),)
            shell_form = True
        else:
            argv = check_str_seq("RUN", "command", command, empty=True)
            if not argv:
                raise StepArgumentError("RUN", "command", "must not be an empty list")
            shell_form = False
        checked_mounts = _check_mounts(mounts)
        check_choice("RUN", "network", network, NETWORK_MODES)
        return self._then(
            Run(
                command=argv,
                shell_form=shell_form,
                mounts=checked_mounts,
                network=network,
                heredoc=heredoc,
                location=caller_location(),
            )
        )

    @_located
    def copy(
        self,
        source: ContextSource | Context | StagePath | Stage | StageRef | InlineFile,
        dest: str,
        *,
        chown: str | None = None,
        chmod: str | int | None = None,
        link: bool = False,
        parents: bool = False,
        exclude: Sequence[str] = (),
        layers: str | Sequence[Sequence[str]] | None = None,
    ) -> Stage:
        """``COPY``: from the context (``src.file(...)``, ``src.dir(...)``, ``src``), a stage,
        or a file written here (``dsl.inline(...)``, ``COPY <<EOF``).

        A directory's contents are copied into ``dest``; a file goes to ``dest`` (into it when
        ``dest`` ends with ``/``). ``exclude`` takes ``.dockerignore`` patterns relative to
        the copied directory. With ``link=True`` the layer does not depend on earlier layers.
        With ``parents=True`` (``COPY --parents``) context files keep their path in the
        context under ``dest`` (``src.file("a/b.txt")`` to ``/app/`` is ``/app/a/b.txt``).

        ``layers`` splits a context COPY into several layers, each with its own key, so an
        edit rebuilds (and re-uploads) one small layer: ``"auto"`` puts dependency manifests
        and lock files in one layer, large files in a few, and spreads the rest over up to 32
        layers by path; or give groups of ``.dockerignore`` patterns (relative to ``dest``),
        one layer each, with everything unmatched in a last layer. The default (None) is one
        layer, or ``"auto"`` when the selected files hold 64 MiB or more; ``"single"`` is
        always one layer.
        """
        from imagedsl._ignore import IgnoreRules

        checked_dest = check_str("COPY", "dest", dest)
        excludes = check_str_seq("COPY", "exclude", exclude)
        IgnoreRules.from_lines(excludes)
        copy_source: ContextSource | StagePath | InlineFile
        copy_source = source if isinstance(source, InlineFile) else _copy_source("COPY", source)
        layer_spec = None if layers is None else _check_layers(layers)
        if layer_spec not in (None, "single") and not isinstance(copy_source, ContextSource):
            raise StepArgumentError(
                "COPY", "layers", "splits only copies from the build context, not from a stage"
            )
        if check_bool("COPY", "parents", parents) and not isinstance(copy_source, ContextSource):
            raise StepArgumentError(
                "COPY", "parents", "keeps the paths of build context files only"
            )
        if isinstance(copy_source, StagePath):
            check_stage_copy_dest("COPY", copy_source, checked_dest)
        if isinstance(copy_source, InlineFile):
            if excludes:
                raise StepArgumentError("COPY", "exclude", "has nothing to leave out of dsl.inline")
            if checked_dest.endswith("/"):
                raise StepArgumentError(
                    "COPY", "dest", f"must name the file dsl.inline writes, got {dest!r}"
                )
        return self._then(
            Copy(
                source=copy_source,
                dest=checked_dest,
                chown=None if chown is None else check_owner("COPY", "chown", chown),
                chmod=None if chmod is None else check_chmod("COPY", "chmod", chmod),
                link=check_bool("COPY", "link", link),
                parents=parents,
                exclude=excludes,
                layers=layer_spec,
                location=caller_location(),
            )
        )

    @_located
    def add(
        self,
        source: ContextSource | Context | UrlSource,
        dest: str,
        *,
        chown: str | None = None,
        chmod: str | int | None = None,
        link: bool = False,
    ) -> Stage:
        """``ADD``: local tar archives are unpacked into ``dest``; URLs need ``dsl.url``."""
        if isinstance(source, Context):
            source = source.as_source()
        if not isinstance(source, ContextSource | UrlSource):
            raise StepArgumentError(
                "ADD",
                "source",
                f"must be context files or dsl.url(...), not {type(source).__name__}",
            )
        return self._then(
            Add(
                source=source,
                dest=check_str("ADD", "dest", dest),
                chown=None if chown is None else check_owner("ADD", "chown", chown),
                chmod=None if chmod is None else check_chmod("ADD", "chmod", chmod),
                link=check_bool("ADD", "link", link),
                location=caller_location(),
            )
        )

    @_located
    def workdir(self, path: str) -> Stage:
        """``WORKDIR``: relative paths resolve against the current one; it is created."""
        return self._then(
            Workdir(path=check_str("WORKDIR", "path", path), location=caller_location())
        )

    # -- config steps ------------------------------------------------------------------------

    @_located
    def env(self, values: Mapping[str, str] | None = None, /, **more: str) -> Stage:
        """``ENV``: ``.env(PORT="8080")`` or ``.env({"NAME": "value"})``; ``$VAR`` expands."""
        merged = {**(values or {}), **more}
        return self._then(Env(items=env_items("ENV", merged), location=caller_location()))

    @_located
    def arg(self, name: str | GlobalArg, default: str | None = None) -> Stage:
        """``ARG``: its value (``--build-arg``, else ``default``, else the global ARG's of that
        name) is in the environment of later steps; ``ARG NAME`` with no value adds nothing."""
        if isinstance(name, GlobalArg):
            name = name.name
        check_env_name("ARG", "name", name)
        if default is not None:
            check_str("ARG", "default", default, empty=True)
        return self._then(Arg(name=name, default=default, location=caller_location()))

    @_located
    def user(self, user: str | int, group: str | int | None = None) -> Stage:
        """``USER``: a name or uid, and optionally a group name or gid: ``.user(1000)``,
        ``.user(1000, 1000)``, ``.user("app", "app")`` (``.user("app:app")`` also works)."""
        return self._then(User(user=check_user("USER", user, group), location=caller_location()))

    @_located
    def label(self, values: Mapping[str, str] | None = None, /, **more: str) -> Stage:
        """``LABEL``: keys with dots go in a mapping (``{"org.opencontainers.image.source": ...}``)."""
        merged = {**(values or {}), **more}
        return self._then(
            Label(items=parse_label_items("LABEL", merged), location=caller_location())
        )

    @_located
    def expose(self, *ports: int | str) -> Stage:
        """``EXPOSE``: ``8080``, ``"53/udp"`` or ``"8000-8010/tcp"``."""
        if not ports:
            raise StepArgumentError("EXPOSE", "ports", "must name at least one port")
        normalised = tuple(parse_port("EXPOSE", p) for p in ports)
        return self._then(Expose(ports=normalised, location=caller_location()))

    @_located
    def volume(self, *paths: str) -> Stage:
        """``VOLUME``: absolute container paths, or paths that start with a variable
        (``"$DATA_DIR"``, expanded as in a Dockerfile)."""
        if not paths:
            raise StepArgumentError("VOLUME", "paths", "must name at least one path")
        checked = tuple(
            check_str("VOLUME", "paths", p)
            if isinstance(p, str) and p.startswith("$")
            else check_abs_path("VOLUME", "paths", p)
            for p in paths
        )
        return self._then(Volume(paths=checked, location=caller_location()))

    @_located
    def entrypoint(self, *command: str | Sequence[str], shell: bool | None = None) -> Stage:
        """``ENTRYPOINT``: one string is shell form (``.entrypoint("exec app")``), several
        strings or a list are exec form (``.entrypoint("python", "-m", "app")``,
        ``.entrypoint(["app"])``), nothing resets it (``ENTRYPOINT []``). ``shell=False``
        makes one string exec form."""
        argv, shell_form = _command("ENTRYPOINT", command, shell, reset=True)
        return self._then(
            Entrypoint(command=argv, shell_form=shell_form, location=caller_location())
        )

    @_located
    def cmd(self, *command: str | Sequence[str], shell: bool | None = None) -> Stage:
        """``CMD``: one string is shell form (``.cmd("node server.js")``), several strings
        or a list are exec form (``.cmd("node", "server.js")``, ``.cmd(["node"])``), nothing
        resets it (``CMD []``). ``shell=False`` makes one string exec form."""
        argv, shell_form = _command("CMD", command, shell, reset=True)
        return self._then(Cmd(command=argv, shell_form=shell_form, location=caller_location()))

    @_located
    def onbuild(self, instruction: str) -> Stage:
        """``ONBUILD``: a Dockerfile instruction (``"RUN make"``) stored in the image config;
        a later build ``FROM`` this image runs it first (this build does not)."""
        return self._then(
            OnBuild(instruction=check_trigger("ONBUILD", instruction), location=caller_location())
        )

    @_located
    def healthcheck(
        self,
        *test: str | Sequence[str] | None,
        shell: bool | None = None,
        interval: str | float | None = None,
        timeout: str | float | None = None,
        start_period: str | float | None = None,
        retries: int | None = None,
    ) -> Stage:
        """``HEALTHCHECK CMD ...``; ``healthcheck(None)`` is ``HEALTHCHECK NONE``."""
        if test == (None,):
            return self._then(Healthcheck(test=None, location=caller_location()))
        if None in test:
            raise StepArgumentError("HEALTHCHECK", "test", "None (HEALTHCHECK NONE) stands alone")
        commands = [t for t in test if t is not None]
        argv, shell_form = _command("HEALTHCHECK", commands, shell, reset=False)
        step = "HEALTHCHECK"
        return self._then(
            Healthcheck(
                test=argv,
                shell_form=shell_form,
                interval=None if interval is None else check_duration(step, "interval", interval),
                timeout=None if timeout is None else check_duration(step, "timeout", timeout),
                start_period=None
                if start_period is None
                else check_duration(step, "start_period", start_period),
                retries=None
                if retries is None
                else check_int(step, "retries", retries, low=0, high=1_000_000),
                location=caller_location(),
            )
        )

    @_located
    def shell(self, *command: str) -> Stage:
        """``SHELL``: the argv prefix for shell-form RUN, CMD and ENTRYPOINT."""
        argv = check_str_seq("SHELL", "command", command, empty=True)
        if not argv:
            raise StepArgumentError("SHELL", "command", "must not be empty")
        return self._then(Shell(command=argv, location=caller_location()))

    @_located
    def stopsignal(self, signal: str | int) -> Stage:
        """``STOPSIGNAL``: ``"SIGTERM"``, ``"TERM"`` or a number; ``"$SIG"`` expands with the
        stage's ARG and ENV values, and must then be one of those."""
        if isinstance(signal, str) and is_template(signal):
            checked = check_str("STOPSIGNAL", "signal", signal)
        else:
            checked = parse_signal("STOPSIGNAL", signal)
        return self._then(StopSignal(signal=checked, location=caller_location()))

    @_located
    def author(self, name: str) -> Stage:
        """``MAINTAINER name``: the image config's ``author`` (the base image's until set),
        kept as written: no ``$VAR`` expands, as BuildKit expands none in MAINTAINER."""
        text = check_str("MAINTAINER", "name", name)
        if text != text.strip() or "\n" in text or "\r" in text:
            raise StepArgumentError(
                "MAINTAINER",
                "name",
                f"must be one line without blanks around it (a Dockerfile line), got {name!r}",
            )
        if text.endswith("\\"):
            raise StepArgumentError(
                "MAINTAINER",
                "name",
                f"must not end with a backslash (a Dockerfile continues the line), got {name!r}",
            )
        return self._then(Author(name=text, location=caller_location()))


# -- constructors ----------------------------------------------------------------------------


@_located
def image(ref: str | Stage, *, platform: str | None = None) -> Stage:
    """``FROM ref``: a registry name (``python:3.12-slim``, pinned with ``@sha256:...``), a
    local source (``oci:DIR:TAG``, ``oci-archive:FILE``, ``docker-archive:FILE``,
    ``docker-daemon:NAME``), or another stage to continue from."""
    if isinstance(ref, Stage):
        if platform is not None:
            raise StepArgumentError("FROM", "platform", "cannot be set when FROM is a stage")
        return ref
    text = check_str("FROM", "ref", ref)
    checked = None if platform is None else check_platform("FROM", "platform", platform)
    if is_template(text):
        # Global ARGs in the reference: parsed once the planner has expanded them.
        step = FromImage(
            reference=None, template=text, platform=checked, location=caller_location()
        )
    else:
        reference = parse_reference(text, step="FROM")
        step = FromImage(reference=reference, platform=checked, location=caller_location())
    return Stage(None, step)


@_located
def scratch(*, platform: str | None = None) -> Stage:
    """``FROM scratch``: an empty filesystem."""
    checked = None if platform is None else check_platform("FROM", "platform", platform)
    return Stage(None, FromScratch(platform=checked, location=caller_location()))


@_located
def context(
    path: str | os.PathLike[str] = ".",
    *,
    ignore: Sequence[str] = (),
    dockerignore: bool = False,
) -> Context:
    """A build context; a relative ``path`` is taken from the directory of the calling file."""
    return make_context(path, ignore=ignore, dockerignore=dockerignore, location=caller_location())


@attrs.frozen
class GlobalArg:
    """A global ``ARG`` (declared before any stage in a Dockerfile): made by :func:`arg` at
    module level, collected by the loader in file order, overridden by ``--build-arg``.

    Its value expands ``${NAME}`` in image references, ``platform=`` and stage names; a stage
    sees it only after ``.arg(NAME)``. ``str(arg)`` is ``${NAME}``, so f-strings make templates.
    """

    name: str
    default: str | None = None
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)

    def __str__(self) -> str:
        return f"${{{self.name}}}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


@_located
def arg(name: str, default: str | None = None) -> GlobalArg:
    """A global ARG: ``GO_VERSION = dsl.arg("GO_VERSION", "1.22")`` at module level, then
    ``dsl.image(f"golang:{GO_VERSION}-alpine")``; ``--build-arg GO_VERSION=...`` overrides it."""
    check_env_name("ARG", "name", name)
    if name in AUTOMATIC_ARGS:
        raise StepArgumentError("ARG", "name", f"{name} is set by the build (its platform)")
    if default is not None:
        check_str("ARG", "default", default, empty=True)
    return GlobalArg(name, default, location=caller_location())


#: The automatic platform ARGs, as global ARGs (their values come from the build's platforms).
BUILDPLATFORM: Final = GlobalArg("BUILDPLATFORM")
BUILDOS: Final = GlobalArg("BUILDOS")
BUILDARCH: Final = GlobalArg("BUILDARCH")
BUILDVARIANT: Final = GlobalArg("BUILDVARIANT")
TARGETPLATFORM: Final = GlobalArg("TARGETPLATFORM")
TARGETOS: Final = GlobalArg("TARGETOS")
TARGETARCH: Final = GlobalArg("TARGETARCH")
TARGETVARIANT: Final = GlobalArg("TARGETVARIANT")


@_located
def stage(name: str) -> StageRef:
    """A stage by name, resolved when planned (for references to later stages). The name may
    name global ARGs (``"build_${TARGETOS}"``), expanded when planned."""
    check_str("stage", "name", name)
    if not is_template(name) and not _STAGE_NAME.match(name):
        raise StepArgumentError("stage", "name", f"is not a valid stage name: {name!r}")
    return StageRef(name)


@_located
def from_stage(name: str) -> Stage:
    """``FROM <name>`` for a stage chosen by global ARGs: ``dsl.from_stage("build_${TARGETOS}")``
    continues the named stage the expanded name picks (for a stage known by value, chain on
    the value itself)."""
    return Stage(None, FromStage(ref=stage(name), location=caller_location()))


@_located
def url(address: str, *, checksum: str) -> UrlSource:
    """A remote file for ``add``, pinned by its ``sha256:`` checksum."""
    return UrlSource(url=address, checksum=checksum)


@_located
def script(text: str) -> Script:
    """A shell script for ``run`` (``RUN <<EOF``): dedented, leading blank lines dropped,
    ending with a line break. It runs through the stage's SHELL, as the Dockerfile's
    heredoc does; a script starting with ``#!`` is refused (copy it with ``dsl.inline`` and
    run the file)."""
    check_str("script", "text", text)
    body = textwrap.dedent(text).lstrip("\n")
    if not body.strip():
        raise StepArgumentError("script", "text", "must hold a command")
    if body.startswith("#!"):
        raise StepArgumentError(
            "script",
            "text",
            "starts with '#!': BuildKit runs such a heredoc as a file, not through the shell; "
            "write it with .copy(dsl.inline(text, mode=0o755), PATH) and run PATH",
        )
    return Script(body if body.endswith("\n") else body + "\n")


@_located
def inline(content: str | bytes, *, mode: int = 0o644) -> InlineFile:
    """A file written in the build file, for ``copy`` (``COPY <<EOF /path``): text (UTF-8)
    or bytes, with ``mode`` (default 0o644)."""
    if isinstance(content, str):
        check_str("inline", "content", content, empty=True)
        try:
            data = content.encode("utf-8")
        except UnicodeEncodeError:
            raise StepArgumentError("inline", "content", "is not valid Unicode") from None
    elif isinstance(content, bytes):
        data = content
    else:
        raise StepArgumentError(
            "inline", "content", f"must be str or bytes, not {type(content).__name__}"
        )
    return InlineFile(content=data, mode=check_int("inline", "mode", mode, low=0, high=0o777))


@_located
def cache(
    target: str,
    *,
    id: str | None = None,
    sharing: str = "shared",
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    readonly: bool = False,
) -> CacheMount:
    """``--mount=type=cache``: kept across builds by ``id`` (default: the target path)."""
    checked_target = check_abs_path("cache", "target", target)
    return CacheMount(
        target=checked_target,
        id=checked_target if id is None else check_str("cache", "id", id),
        sharing=check_choice("cache", "sharing", sharing, SHARING_MODES),
        mode=check_int("cache", "mode", mode, low=0, high=0o7777),
        uid=check_int("cache", "uid", uid, low=0, high=2**32 - 1),
        gid=check_int("cache", "gid", gid, low=0, high=2**32 - 1),
        readonly=check_bool("cache", "readonly", readonly),
    )


@_located
def secret(
    id: str,
    *,
    target: str | None = None,
    env: str | None = None,
    required: bool = False,
    mode: int = 0o400,
    uid: int = 0,
    gid: int = 0,
) -> SecretMount:
    """``--mount=type=secret``: a file (default ``/run/secrets/<id>``) or an env variable.

    The secret's value is given at build time and never enters a key, a layer or a plan.
    """
    check_str("secret", "id", id)
    if target is None and env is None:
        target = f"/run/secrets/{id}"
    return SecretMount(
        id=id,
        target=None if target is None else check_abs_path("secret", "target", target),
        env=None if env is None else check_env_name("secret", "env", env),
        required=check_bool("secret", "required", required),
        mode=check_int("secret", "mode", mode, low=0, high=0o7777),
        uid=check_int("secret", "uid", uid, low=0, high=2**32 - 1),
        gid=check_int("secret", "gid", gid, low=0, high=2**32 - 1),
    )


@_located
def bind(
    source: ContextSource | Context | StagePath | Stage | StageRef,
    target: str,
    *,
    readwrite: bool = False,
) -> BindMount:
    """``--mount=type=bind``: context files or a stage path; keyed by their content."""
    checked = _copy_source("bind", source)
    if isinstance(checked, StagePath) and checked.more:
        raise StepArgumentError("bind", "source", "mounts one path of a stage, not several")
    if checked.templated:
        paths = checked.describe_paths() if isinstance(checked, ContextSource) else [checked.path]
        if any(has_variable(p) for p in paths):
            raise StepArgumentError(
                "bind", "source", "must not hold variables (only COPY and ADD sources expand them)"
            )
        literal = functools.partial(expand, variables={})  # ``\$``: a literal ``$``
        checked = (
            checked.expanded(literal, "bind")
            if isinstance(checked, ContextSource)
            else checked.expanded(literal)
        )
    return BindMount(
        target=check_abs_path("bind", "target", target),
        source=checked,
        readwrite=check_bool("bind", "readwrite", readwrite),
    )


@_located
def tmpfs(target: str, *, size: int | None = None) -> TmpfsMount:
    """``--mount=type=tmpfs``: an empty in-memory directory (``size`` in bytes)."""
    return TmpfsMount(
        target=check_abs_path("tmpfs", "target", target),
        size=None if size is None else check_int("tmpfs", "size", size, low=1, high=2**63 - 1),
    )


@attrs.frozen
class Targets:
    """What ``dsl.targets(...)`` declares: the buildable stages by name, default first."""

    stages: tuple[tuple[str, Stage | StageRef], ...]
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@_located
def targets(*stages: str | StageRef, **named: Stage) -> Targets:
    """Declare the targets of a build file; the first one is the default.

    ``dsl.targets("app", "test")`` names module-level stages; ``dsl.targets(app=make_app())``
    names stages that are not module-level variables.
    """
    declared: list[tuple[str, Stage | StageRef]] = []
    for item in stages:
        ref = item if isinstance(item, StageRef) else stage(check_str("targets", "stages", item))
        declared.append((ref.name, ref))
    for name, value in named.items():
        if not isinstance(value, Stage):
            raise StepArgumentError("targets", name, f"must be a stage, not {type(value).__name__}")
        declared.append((name, value))
    if not declared:
        raise StepArgumentError("targets", "stages", "must name at least one target")
    names = [name for name, _ in declared]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StepArgumentError("targets", "stages", f"names a target twice: {duplicates}")
    made = Targets(tuple(declared), caller_location())
    note_declaration(made)  # a bare dsl.targets(...) call counts too
    return made


@attrs.frozen
class Platforms:
    """What ``dsl.platforms(...)`` declares: the platforms a build makes when ``--platform``
    is not given, for the targets named (empty: every target)."""

    platforms: tuple[str, ...]
    targets: tuple[str, ...] = ()
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@_located
def platforms(*names: str, targets: Sequence[str | StageRef] = ()) -> Platforms:
    """Declare default target platforms: ``dsl.platforms("linux/amd64", "linux/arm64")``
    builds both (one image index) unless ``--platform`` says otherwise; ``targets=["app"]``
    limits the default to those targets. Platforms are checked and normalised as BuildKit's
    ``--platform`` is (``linux/aarch64`` is ``linux/arm64``); one declaration per target."""
    if not names:
        raise StepArgumentError("platforms", "platforms", "must name at least one platform")
    try:
        chosen = canonical_platforms([check_str("platforms", "platforms", n) for n in names])
    except ValueError as error:
        raise StepArgumentError("platforms", "platforms", str(error)) from None
    if isinstance(targets, str):
        targets = [targets]
    named = tuple(
        t.name if isinstance(t, StageRef) else check_str("platforms", "targets", t) for t in targets
    )
    made = Platforms(chosen, named, caller_location())
    note_declaration(made)  # a bare call declares as an assigned one does
    return made


# -- helpers ---------------------------------------------------------------------------------


def _stage_paths(stage: Stage | StageRef, paths: Sequence[str]) -> StagePath:
    if not paths:
        raise StepArgumentError("paths", "paths", "must name at least one path")
    checked = [check_stage_path("paths", f"paths[{i}]", p) for i, p in enumerate(paths)]
    for i, path in enumerate(checked):
        if not is_template(path) and GLOB_CHARS.search(path):
            try:
                glob_regex(path)  # refuse a malformed pattern where it was written
            except StepArgumentError as error:
                raise StepArgumentError("paths", f"paths[{i}]", error.problem) from None
    return StagePath(stage, checked[0], tuple(checked[1:]))


def _copy_source(
    step: str, source: ContextSource | Context | StagePath | Stage | StageRef
) -> ContextSource | StagePath:
    if isinstance(source, Context):
        return source.as_source()
    if isinstance(source, Stage | StageRef):
        return StagePath(source, "/")
    if isinstance(source, ContextSource | StagePath):
        return source
    raise StepArgumentError(
        step,
        "source",
        "must be context files (src.file/dir/glob), a context, a stage or stage.path(...), "
        f"not {type(source).__name__}",
    )


def _check_layers(layers: object) -> LayerSpec:
    if layers in ("auto", "single"):
        return str(layers)
    if isinstance(layers, str | bytes) or not isinstance(layers, Sequence) or not layers:
        raise StepArgumentError(
            "COPY", "layers", "must be 'auto', 'single' or a non-empty list of lists of patterns"
        )
    from imagedsl._ignore import IgnoreRules

    groups = []
    for i, group in enumerate(layers):
        patterns = check_str_seq("COPY", f"layers[{i}]", group)
        if not patterns:
            raise StepArgumentError("COPY", f"layers[{i}]", "must hold at least one pattern")
        IgnoreRules.from_lines(patterns)
        groups.append(patterns)
    return tuple(groups)


def _command(
    step: str, command: Sequence[str | Sequence[str]], shell: bool | None, *, reset: bool
) -> tuple[tuple[str, ...], bool]:
    """(argv, shell form) of a CMD, ENTRYPOINT or HEALTHCHECK: one string is shell form,
    several strings or one list are exec form, nothing (or an empty list) is a reset."""
    if shell is not None:
        check_bool(step, "shell", shell)
    if len(command) == 1 and not isinstance(command[0], str):
        if shell:
            raise StepArgumentError(step, "command", "is a list: exec form, not shell=True")
        argv = check_str_seq(step, "command", command[0], empty=True)
        shell_form = False
    else:
        argv = check_str_seq(step, "command", command, empty=True)
        shell_form = len(argv) == 1 if shell is None else shell
        if shell_form and argv and not argv[0]:
            raise StepArgumentError(step, "command", "is an empty shell command")
    if not argv:
        if not reset:
            raise StepArgumentError(step, "command", "must not be empty")
        if shell:
            raise StepArgumentError(step, "command", "is empty: a reset has no shell form")
        return (), False
    if shell_form and len(argv) != 1:
        raise StepArgumentError(step, "command", "takes one string with shell=True")
    return argv, shell_form


def _check_mounts(mounts: object) -> tuple[Mount, ...]:
    if isinstance(mounts, str | bytes) or not isinstance(mounts, Sequence):
        raise StepArgumentError("RUN", "mounts", "must be a list of dsl.cache/secret/bind/tmpfs")
    checked: list[Mount] = []
    targets_seen: set[str] = set()
    for i, mount in enumerate(mounts):
        if not isinstance(mount, CacheMount | SecretMount | BindMount | TmpfsMount):
            raise StepArgumentError(
                "RUN",
                f"mounts[{i}]",
                f"must be dsl.cache/secret/bind/tmpfs, not {type(mount).__name__}",
            )
        target = mount.target
        if target is not None:
            if target in targets_seen:
                raise StepArgumentError("RUN", f"mounts[{i}]", f"mounts {target} twice")
            targets_seen.add(target)
        checked.append(mount)
    return tuple(checked)

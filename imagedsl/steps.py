"""Frozen step and mount values: one class per Dockerfile instruction.

Steps are plain data. They validate their arguments when made (so a wrong type is reported at
the line of ``build.py`` that made it, see :mod:`imagedsl._validate`) and know nothing about
keys, graphs or backends. How steps change the build state lives in :mod:`imagedsl.buildstate`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Final, TypeAlias

import attrs

from imagedsl._validate import check_str
from imagedsl.errors import SourceLocation, StepArgumentError
from imagedsl.oci.reference import ImageReference

if TYPE_CHECKING:
    from imagedsl.context import ContextSource
    from imagedsl.dsl import Stage, StageRef


_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}\Z")


# -- sources ---------------------------------------------------------------------------------


@attrs.frozen
class StagePath:
    """A path inside another stage's filesystem, for ``COPY --from`` and bind mounts."""

    stage: Stage | StageRef
    path: str


@attrs.frozen(kw_only=True)
class UrlSource:
    """A remote file for ``ADD``, pinned by checksum so its key never depends on the network."""

    url: str
    checksum: str

    def __attrs_post_init__(self) -> None:
        check_str("ADD", "url", self.url)
        if not self.url.startswith(("https://", "http://")):
            raise StepArgumentError("ADD", "url", f"must be an http(s) URL, got {self.url!r}")
        if not _DIGEST.match(self.checksum):
            raise StepArgumentError(
                "ADD", "checksum", f"must be 'sha256:<64 hex>', got {self.checksum!r}"
            )


# -- mounts ----------------------------------------------------------------------------------

SHARING_MODES: Final = ("shared", "private", "locked")


@attrs.frozen(kw_only=True)
class CacheMount:
    """``RUN --mount=type=cache``: a directory kept across builds, never part of any key."""

    type: ClassVar[str] = "cache"
    target: str
    id: str
    sharing: str = "shared"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    readonly: bool = False


@attrs.frozen(kw_only=True)
class SecretMount:
    """``RUN --mount=type=secret``: the value is given at build time and is never hashed."""

    type: ClassVar[str] = "secret"
    id: str
    target: str | None = None
    env: str | None = None
    required: bool = False
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


@attrs.frozen(kw_only=True)
class BindMount:
    """``RUN --mount=type=bind``: files from the context or another stage, by content."""

    type: ClassVar[str] = "bind"
    target: str
    source: ContextSource | StagePath
    readwrite: bool = False


@attrs.frozen(kw_only=True)
class TmpfsMount:
    """``RUN --mount=type=tmpfs``: an empty in-memory directory."""

    type: ClassVar[str] = "tmpfs"
    target: str
    size: int | None = None


Mount: TypeAlias = CacheMount | SecretMount | BindMount | TmpfsMount
#: How a COPY is split into layers: "auto", or ordered groups of .dockerignore-style patterns.
LayerSpec: TypeAlias = str | tuple[tuple[str, ...], ...]
NETWORK_MODES: Final = ("default", "none", "host")

# -- steps -----------------------------------------------------------------------------------
# Every step carries ``location`` (where build.py made it), excluded from equality: moving a
# line must not change what is built.


@attrs.frozen(kw_only=True)
class FromImage:
    """``FROM image``."""

    kind: ClassVar[str] = "from"
    #: The image, parsed; None while ``template`` still holds ``$VAR``s (the planner expands
    #: them with the global ARGs and gives the step its reference).
    reference: ImageReference | None
    #: The reference as written, when it names global ARGs (``golang:${GO_VERSION}-alpine``).
    template: str | None = None
    #: The platform as written (``linux/arm64``, ``$BUILDPLATFORM``); None: the build's.
    platform: str | None = None
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def image(self) -> ImageReference:
        """The parsed reference (the planner's steps always have one)."""
        if self.reference is None:
            raise ValueError(f"FROM {self.template}: the reference is not expanded yet")
        return self.reference


@attrs.frozen(kw_only=True)
class FromStage:
    """``FROM <stage>`` where the stage's name is a template (``build_${TARGETOS}``): the
    planner expands it with the global ARGs and continues that stage (no layer, no work)."""

    kind: ClassVar[str] = "from-stage"
    ref: StageRef
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class FromScratch:
    """``FROM scratch``: an empty filesystem."""

    kind: ClassVar[str] = "scratch"
    platform: str | None = None
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Run:
    """``RUN``: ``command`` is the argv (exec form) or a single shell string (shell form)."""

    kind: ClassVar[str] = "run"
    command: tuple[str, ...]
    shell_form: bool
    mounts: tuple[Mount, ...] = ()
    network: str = "default"
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Copy:
    """``COPY`` from the build context or (``StagePath``) from another stage."""

    kind: ClassVar[str] = "copy"
    source: ContextSource | StagePath
    dest: str
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    exclude: tuple[str, ...] = ()
    #: Split into several layers: "auto", or groups of patterns (the rest is one more layer).
    layers: LayerSpec | None = None
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Add:
    """``ADD``: a local archive (unpacked) or file, or a URL pinned by checksum."""

    kind: ClassVar[str] = "add"
    source: ContextSource | UrlSource
    dest: str
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Workdir:
    """``WORKDIR``: sets the directory and creates it (a filesystem change, as in BuildKit)."""

    kind: ClassVar[str] = "workdir"
    path: str
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Env:
    """``ENV``."""

    kind: ClassVar[str] = "env"
    items: tuple[tuple[str, str], ...]
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Arg:
    """``ARG``: a build-time variable, overridable with ``--build-arg``."""

    kind: ClassVar[str] = "arg"
    name: str
    default: str | None = None
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class User:
    """``USER``."""

    kind: ClassVar[str] = "user"
    user: str
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Label:
    """``LABEL``."""

    kind: ClassVar[str] = "label"
    items: tuple[tuple[str, str], ...]
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Expose:
    """``EXPOSE``: ports normalised to ``PORT/proto``."""

    kind: ClassVar[str] = "expose"
    ports: tuple[str, ...]
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Volume:
    """``VOLUME``."""

    kind: ClassVar[str] = "volume"
    paths: tuple[str, ...]
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Entrypoint:
    """``ENTRYPOINT`` (exec form, or one shell string with ``shell_form``)."""

    kind: ClassVar[str] = "entrypoint"
    command: tuple[str, ...]
    shell_form: bool = False
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Cmd:
    """``CMD`` (exec form, or one shell string with ``shell_form``)."""

    kind: ClassVar[str] = "cmd"
    command: tuple[str, ...]
    shell_form: bool = False
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Healthcheck:
    """``HEALTHCHECK``; ``test=None`` is ``HEALTHCHECK NONE`` (disable the base's check)."""

    kind: ClassVar[str] = "healthcheck"
    test: tuple[str, ...] | None
    shell_form: bool = False
    interval: str | None = None
    timeout: str | None = None
    start_period: str | None = None
    retries: int | None = None
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Shell:
    """``SHELL``: the argv prefix for shell-form commands."""

    kind: ClassVar[str] = "shell"
    command: tuple[str, ...]
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class StopSignal:
    """``STOPSIGNAL``."""

    kind: ClassVar[str] = "stopsignal"
    signal: str
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


Base: TypeAlias = FromImage | FromScratch
ConfigStep: TypeAlias = (
    Env
    | Arg
    | User
    | Label
    | Expose
    | Volume
    | Entrypoint
    | Cmd
    | Healthcheck
    | Shell
    | StopSignal
    | FromStage
)
LayerStep: TypeAlias = Run | Copy | Add | Workdir
Step: TypeAlias = Base | LayerStep | ConfigStep

#: Steps that change the filesystem (and so get a parent key and, when built, a layer).
LAYER_KINDS: Final = frozenset({"run", "copy", "add", "workdir"})
BASE_KINDS: Final = frozenset({"from", "scratch"})


StageNamer: TypeAlias = "Callable[[Stage | StageRef], str]"


def _default_stage_name(stage: Stage | StageRef) -> str:
    return getattr(stage, "name", None) or "<stage>"


def describe(step: Step, stage_name: StageNamer = _default_stage_name) -> str:
    """A one-line, Dockerfile-like description for tables and messages."""
    match step:
        case FromImage():
            return (
                f"FROM {step.reference.familiar if step.reference is not None else step.template}"
            )
        case FromScratch():
            return "FROM scratch"
        case FromStage():
            return f"FROM {step.ref.name}"
        case Run():
            return "RUN " + (step.command[0] if step.shell_form else _json_list(step.command))
        case Copy() | Add():
            name = "COPY" if isinstance(step, Copy) else "ADD"
            return f"{name} {describe_source(step.source, stage_name)} {step.dest}"
        case Workdir():
            return f"WORKDIR {step.path}"
        case Env():
            return "ENV " + " ".join(f"{k}={_quote(v)}" for k, v in step.items)
        case Arg():
            default = "" if step.default is None else f"={_quote(step.default)}"
            return f"ARG {step.name}{default}"
        case User():
            return f"USER {step.user}"
        case Label():
            return "LABEL " + " ".join(f"{k}={_quote(v)}" for k, v in step.items)
        case Expose():
            return "EXPOSE " + " ".join(step.ports)
        case Volume():
            return "VOLUME " + _json_list(step.paths)
        case Entrypoint() | Cmd():
            name = "ENTRYPOINT" if isinstance(step, Entrypoint) else "CMD"
            body = step.command[0] if step.shell_form else _json_list(step.command)
            return f"{name} {body}"
        case Healthcheck():
            if step.test is None:
                return "HEALTHCHECK NONE"
            body = step.test[0] if step.shell_form else _json_list(step.test)
            return f"HEALTHCHECK CMD {body}"
        case Shell():
            return "SHELL " + _json_list(step.command)
        case StopSignal():
            return f"STOPSIGNAL {step.signal}"
    raise AssertionError(step)  # pragma: no cover - the match is exhaustive


def describe_source(
    source: ContextSource | StagePath | UrlSource, stage_name: StageNamer = _default_stage_name
) -> str:
    """How a COPY/ADD source reads in a table: context paths, ``--from=stage path`` or a URL."""
    if isinstance(source, StagePath):
        return f"--from={stage_name(source.stage)} {source.path}"
    if isinstance(source, UrlSource):
        return source.url
    return " ".join(source.describe_paths())


def _quote(value: str) -> str:
    if value and re.fullmatch(r"[\w./:@%+,-]+", value):
        return value
    import json

    return json.dumps(value, ensure_ascii=False)


def _json_list(items: Sequence[str]) -> str:
    import json

    return json.dumps(list(items), ensure_ascii=False)

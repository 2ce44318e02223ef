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

if TYPE_CHECKING:
    from imagedsl.context import ContextSource
    from imagedsl.dsl import Stage, StageRef


# -- image references ------------------------------------------------------------------------

_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}\Z")
_REPO_COMPONENT: Final = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG: Final = re.compile(r"[\w][\w.-]{0,127}\Z")
DEFAULT_REGISTRY: Final = "docker.io"
TRANSPORTS: Final = ("registry", "oci", "oci-archive", "docker-archive", "docker-daemon")


@attrs.frozen(kw_only=True)
class ImageReference:
    """A base image: where it comes from and, when pinned, its manifest digest.

    ``transport`` is ``registry`` for names like ``python:3.12`` (normalised as Docker does:
    ``docker.io/library/python:3.12``), or one of the local sources the OCI backend reads:
    ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:TAG]``,
    ``docker-daemon:NAME[:TAG]``.
    """

    transport: str
    name: str
    tag: str | None
    digest: str | None

    @property
    def pinned(self) -> bool:
        """Whether the reference names one exact manifest."""
        return self.digest is not None

    def __str__(self) -> str:
        text = self.name if self.transport == "registry" else f"{self.transport}:{self.name}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def familiar(self) -> str:
        """The short form Docker users type (``python:3.12``), for Dockerfiles and tables."""
        if self.transport != "registry":
            return str(self)
        name = self.name.removeprefix(f"{DEFAULT_REGISTRY}/").removeprefix("library/")
        text = name + (f":{self.tag}" if self.tag else "")
        return text + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str, *, step: str = "image", argument: str = "ref") -> ImageReference:
    """Parse and normalise an image reference the way Docker's reference library does."""
    check_str(step, argument, text)
    transport, sep, rest = text.partition(":")
    if sep and transport in TRANSPORTS and transport != "registry":
        return _parse_local_reference(transport, rest, step, argument)
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise StepArgumentError(step, argument, f"has an invalid digest {digest!r}")
    name, tag = text, None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = text.rsplit(":", 1)
        if not _TAG.match(tag):
            raise StepArgumentError(step, argument, f"has an invalid tag {tag!r}")
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, path = parts[0], parts[1:]
    else:
        registry, path = DEFAULT_REGISTRY, parts
        if len(path) == 1:
            path = ["library", *path]
    for component in path:
        if not _REPO_COMPONENT.match(component):
            raise StepArgumentError(
                step, argument, f"has an invalid repository name component {component!r}"
            )
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(
        transport="registry", name="/".join([registry, *path]), tag=tag, digest=digest
    )


def _parse_local_reference(transport: str, rest: str, step: str, argument: str) -> ImageReference:
    if not rest:
        raise StepArgumentError(step, argument, f"needs a path after {transport + ':'!r}")
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise StepArgumentError(step, argument, f"has an invalid digest {digest!r}")
    name, tag = rest, None
    if transport == "docker-daemon":
        name, _, tag_text = (
            rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "")
        )
        tag = tag_text or "latest"
    elif ":" in rest:
        name, tag = rest.rsplit(":", 1)
        tag = tag or None
    return ImageReference(transport=transport, name=name, tag=tag, digest=digest)


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
    reference: ImageReference
    platform: str | None = None
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
    Env | Arg | User | Label | Expose | Volume | Entrypoint | Cmd | Healthcheck | Shell | StopSignal
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
            return f"FROM {step.reference.familiar}"
        case FromScratch():
            return "FROM scratch"
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

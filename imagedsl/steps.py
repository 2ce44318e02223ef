"""Frozen step and mount values: one class per Dockerfile instruction.

Steps are plain data. They validate their arguments when made (so a wrong type is reported at
the line of ``build.py`` that made it, see :mod:`imagedsl._validate`) and know nothing about
keys, graphs or backends. How steps change the build state lives in :mod:`imagedsl.buildstate`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Final, TypeAlias

import attrs

from imagedsl._validate import check_str, clean_container_path, is_template
from imagedsl.errors import SourceLocation, StepArgumentError
from imagedsl.oci.reference import ImageReference

if TYPE_CHECKING:
    from imagedsl.contexts import ContextSource
    from imagedsl.dsl import Stage, StageRef


_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}\Z")


# -- sources ---------------------------------------------------------------------------------


#: What makes a path a wildcard pattern to BuildKit's COPY (``*``, ``?``, ``[``).
GLOB_CHARS: Final = re.compile(r"[*?\[]")


@attrs.frozen
class StagePath:
    """A path inside another stage's filesystem, for ``COPY --from`` and bind mounts; ``more``
    holds the further paths of one ``COPY --from=stage a b c dest/`` (``stage.paths(...)``),
    copied in order into one layer.

    A path holding ``$VAR``/``${VAR}`` is kept as written; the planner expands it with the
    copying stage's ARG and ENV values (:meth:`expanded`), as BuildKit does. In a copy, a path
    with ``*``, ``?`` or ``[`` is a wildcard pattern, as in a Dockerfile.
    """

    stage: Stage | StageRef
    path: str
    more: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path, in the order the copy reads them."""
        return (self.path, *self.more)

    @property
    def templated(self) -> bool:
        """Whether the planner still has to expand a path."""
        return any(is_template(path) for path in self.paths)

    @property
    def into_directory(self) -> bool:
        """Whether the copy can only place into a directory: several paths, or a wildcard
        (BuildKit copies each source onto the destination in turn, so anything but a
        directory would be overwritten or refused; imagedsl asks for a ``/`` instead)."""
        return bool(self.more) or any(
            GLOB_CHARS.search(path) for path in self.paths if not is_template(path)
        )

    def expanded(self, expand: Callable[[str], str]) -> StagePath:
        """The paths expanded by ``expand``, read from the stage's root and cleaned."""
        if not self.templated:
            return self
        done = [
            clean_container_path("/" + expand(path)) if is_template(path) else path
            for path in self.paths
        ]
        return attrs.evolve(self, path=done[0], more=tuple(done[1:]))


def check_stage_copy_dest(step: str, source: StagePath, dest: str) -> None:
    """Several stage paths, or a wildcard, copy into a directory: ``dest`` must say so with a
    trailing ``/`` (or be ``.``). BuildKit copies each source onto ``dest`` in turn, so without
    it a file overwrites the one before and a directory after a file is refused."""
    if source.into_directory and not (dest.endswith("/") or dest == "."):
        what = "several paths" if source.more else "a wildcard path"
        raise StepArgumentError(
            step,
            "dest",
            f"must end with '/' to copy {what} of a stage ({' '.join(source.paths)}) into "
            f"it, got {dest!r}: BuildKit copies each source onto {dest!r} in turn",
        )


@attrs.frozen(kw_only=True)
class UrlSource:
    """A remote file for ``ADD``, pinned by checksum so its key never depends on the network."""

    url: str
    checksum: str

    def __attrs_post_init__(self) -> None:
        check_str("ADD", "url", self.url)
        if not self.url.startswith(("https://", "http://")):
            raise StepArgumentError("ADD", "url", f"must be an http(s) URL, got {self.url!r}")
        if any(c.isspace() for c in self.url) or not self.url.isprintable():
            raise StepArgumentError("ADD", "url", f"must not contain blanks, got {self.url!r}")
        if not _DIGEST.match(self.checksum):
            raise StepArgumentError(
                "ADD", "checksum", f"must be 'sha256:<64 hex>', got {self.checksum!r}"
            )

    @property
    def file_name(self) -> str:
        """The name ``ADD URL DIR/`` gives the file, as BuildKit names it: the last element
        of the URL's path, or ``__unnamed__`` when the path has none."""
        from urllib.parse import unquote, urlsplit

        path = unquote(urlsplit(self.url).path).rstrip("/")
        name = posixpath.basename(path)
        return name if name not in ("", ".", "..") else "__unnamed__"


#: The name a file written in build.py takes when its COPY lands in an existing directory
#: (BuildKit names a heredoc file after its delimiter).
INLINE_FILE_NAME: Final = "EOF"


@attrs.frozen(kw_only=True)
class InlineFile:
    """A file written in ``build.py`` (``COPY <<EOF /file``): its bytes and its mode."""

    content: bytes = attrs.field(repr=False)
    mode: int = 0o644

    @property
    def digest(self) -> str:
        """The blake3 of the content, as a tree entry holds it."""
        import blake3

        return blake3.blake3(self.content).hexdigest()

    def describe(self) -> str:
        """How the plan shows it: the heredoc marker and the size."""
        return f"<<EOF({len(self.content)} bytes, {self.mode:04o})"


@attrs.frozen
class Script:
    """A shell script for ``RUN`` (``RUN <<EOF``), dedented, ending with a line break."""

    text: str


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
    """``RUN``: ``command`` is the argv (exec form) or a single shell string (shell form).

    ``heredoc`` marks a script given with ``dsl.script`` (``RUN <<EOF``): it runs exactly as
    the same string in shell form does (the stage's SHELL with the script as its last
    argument), so it changes only how the step is written, never its key.
    """

    kind: ClassVar[str] = "run"
    command: tuple[str, ...]
    shell_form: bool
    mounts: tuple[Mount, ...] = ()
    network: str = "default"
    heredoc: bool = False
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Copy:
    """``COPY`` from the build context, from another stage (``StagePath``), or of a file
    written in ``build.py`` (``InlineFile``, ``COPY <<EOF``).

    ``parents`` (``COPY --parents``) places context files at their path in the context,
    under ``dest``, instead of flattening them into it.
    """

    kind: ClassVar[str] = "copy"
    source: ContextSource | StagePath | InlineFile
    dest: str
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
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
    """``ENTRYPOINT`` (exec form, or one shell string with ``shell_form``); an empty
    ``command`` is ``ENTRYPOINT []``, which resets it."""

    kind: ClassVar[str] = "entrypoint"
    command: tuple[str, ...]
    shell_form: bool = False
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Cmd:
    """``CMD`` (exec form, or one shell string with ``shell_form``); an empty ``command`` is
    ``CMD []``, which resets it."""

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
class OnBuild:
    """``ONBUILD``: a Dockerfile instruction stored in the image config's ``OnBuild``, run by
    a later build that starts ``FROM`` this image (not by this build)."""

    kind: ClassVar[str] = "onbuild"
    instruction: str
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Author:
    """``MAINTAINER``: the image config's ``author`` (the instruction is deprecated, the field
    is not; BuildKit keeps the text as written, without expanding variables)."""

    kind: ClassVar[str] = "author"
    name: str
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
    | Author
    | FromStage
    | OnBuild
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
    """A one-line, Dockerfile-like description for tables and messages, with every flag."""
    match step:
        case FromImage():
            platform = f"--platform={step.platform} " if step.platform else ""
            name = step.reference.familiar if step.reference is not None else step.template
            return f"FROM {platform}{name}"
        case FromScratch():
            platform = f"--platform={step.platform} " if step.platform else ""
            return f"FROM {platform}scratch"
        case FromStage():
            return f"FROM {step.ref.name}"
        case Run():
            flags = [describe_mount(m, stage_name) for m in step.mounts]
            if step.network != "default":
                flags.append(f"--network={step.network}")
            if step.heredoc:
                lines = step.command[0].splitlines()
                first = lines[0] if lines else ""
                body = f"<<EOF {first}" + (" …" if len(lines) > 1 else "")
            else:
                body = step.command[0] if step.shell_form else _json_list(step.command)
            return " ".join(["RUN", *flags, body])
        case Copy() | Add():
            return _describe_copy(step, stage_name)
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
            options = [
                f"--{flag}={value}"
                for flag, value in (
                    ("interval", step.interval),
                    ("timeout", step.timeout),
                    ("start-period", step.start_period),
                    ("retries", step.retries),
                )
                if value is not None
            ]
            body = step.test[0] if step.shell_form else _json_list(step.test)
            return " ".join(["HEALTHCHECK", *options, "CMD", body])
        case Shell():
            return "SHELL " + _json_list(step.command)
        case StopSignal():
            return f"STOPSIGNAL {step.signal}"
        case Author():
            return f"MAINTAINER {step.name}"
        case OnBuild():
            return f"ONBUILD {step.instruction}"
    raise AssertionError(step)  # pragma: no cover - the match is exhaustive


def _describe_copy(step: Copy | Add, stage_name: StageNamer) -> str:
    name = "COPY" if isinstance(step, Copy) else "ADD"
    flags: list[str] = []
    source = step.source
    if isinstance(source, StagePath):
        flags.append(f"--from={stage_name(source.stage)}")
    if isinstance(source, UrlSource):
        flags.append(f"--checksum={source.checksum}")
    if step.chown is not None:
        flags.append(f"--chown={step.chown}")
    if step.chmod is not None:
        flags.append(f"--chmod={step.chmod}")
    if step.link:
        flags.append("--link")
    if isinstance(step, Copy):
        if step.parents:
            flags.append("--parents")
        flags.extend(f"--exclude={pattern}" for pattern in step.exclude)
    return " ".join([name, *flags, _source_words(source), step.dest])


def _source_words(source: ContextSource | StagePath | UrlSource | InlineFile) -> str:
    if isinstance(source, StagePath):
        return " ".join(source.paths)
    if isinstance(source, UrlSource):
        return source.url
    if isinstance(source, InlineFile):
        return "<<EOF"
    return " ".join(source.describe_paths())


def describe_source(
    source: ContextSource | StagePath | UrlSource | InlineFile,
    stage_name: StageNamer = _default_stage_name,
) -> str:
    """How a COPY/ADD source reads in a table: context paths, ``--from=stage path``, a URL,
    or ``<<EOF`` for a file written in ``build.py``."""
    if isinstance(source, StagePath):
        return f"--from={stage_name(source.stage)} {_source_words(source)}"
    return _source_words(source)


def describe_mount(mount: Mount, stage_name: StageNamer = _default_stage_name) -> str:
    """A RUN mount as its ``--mount=`` flag (options at their defaults left out)."""
    if isinstance(mount, CacheMount):
        options = ["type=cache", f"target={mount.target}"]
        options += [f"id={mount.id}"] if mount.id != mount.target else []
        options += [f"sharing={mount.sharing}"] if mount.sharing != "shared" else []
        options += [f"mode={mount.mode:04o}"] if mount.mode != 0o755 else []
        options += [f"uid={mount.uid}"] if mount.uid else []
        options += [f"gid={mount.gid}"] if mount.gid else []
        options += ["ro"] if mount.readonly else []
    elif isinstance(mount, SecretMount):
        options = ["type=secret", f"id={mount.id}"]
        if mount.target is not None and mount.target != f"/run/secrets/{mount.id}":
            options.append(f"target={mount.target}")
        options += [f"env={mount.env}"] if mount.env is not None else []
        options += ["required=true"] if mount.required else []
        options += [f"mode={mount.mode:04o}"] if mount.mode != 0o400 else []
        options += [f"uid={mount.uid}"] if mount.uid else []
        options += [f"gid={mount.gid}"] if mount.gid else []
    elif isinstance(mount, BindMount):
        options = ["type=bind"]
        if isinstance(mount.source, StagePath):
            options += [f"from={stage_name(mount.source.stage)}", f"source={mount.source.path}"]
        else:
            options.append(f"source={'+'.join(mount.source.describe_paths())}")
        options.append(f"target={mount.target}")
        options += ["rw"] if mount.readwrite else []
    else:
        options = ["type=tmpfs", f"target={mount.target}"]
        options += [f"size={mount.size}"] if mount.size is not None else []
    return "--mount=" + ",".join(options)


def _quote(value: str) -> str:
    """A value as a Dockerfile writes it, in double quotes unless it needs none: ``"`` and
    a literal backslash escaped, ``\\$`` (a literal ``$``) kept, as BuildKit reads them
    inside double quotes; control characters as JSON writes them."""
    if value and re.fullmatch(r"[\w./:@%+,-]+", value):
        return value
    import json

    pieces = value.split("\\$")
    quoted = ("\\$").join(json.dumps(p, ensure_ascii=False)[1:-1] for p in pieces)
    return f'"{quoted}"'


def _json_list(items: Sequence[str]) -> str:
    import json

    return json.dumps(list(items), ensure_ascii=False)

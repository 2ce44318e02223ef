"""Frozen step and mount values: one class per Dockerfile instruction.

Steps are plain data. They validate their arguments when made (so a wrong type is reported at
the line of ``build.py`` that made it) and know nothing about keys, graphs or backends. The
few semantics that every consumer must agree on (how a step changes the build state: env,
workdir, user, shell, args; ``$VAR`` expansion) live here too, so that the planner and every
backend read them from one place.
"""

from __future__ import annotations

import posixpath
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

import attrs

from imagedsl.errors import ImageDSLError, SourceLocation, StepArgumentError
from imagedsl.oci.reference import ImageReference

if TYPE_CHECKING:
    from imagedsl.context import ContextSource
    from imagedsl.dsl import Stage, StageRef

_PACKAGE_DIR: Final = str(Path(__file__).resolve().parent)


def caller_location() -> SourceLocation | None:
    """Return the first stack frame outside the imagedsl package: the user's line."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_PACKAGE_DIR):
            return SourceLocation(filename, frame.f_lineno)
        frame = frame.f_back  # type: ignore[assignment]
    return None


# -- argument checks -------------------------------------------------------------------------


def check_str(step: str, argument: str, value: object, *, empty: bool = False) -> str:
    """Refuse anything but a string (and, unless allowed, an empty one)."""
    if not isinstance(value, str):
        raise StepArgumentError(step, argument, f"must be a str, not {type(value).__name__}")
    if not empty and not value:
        raise StepArgumentError(step, argument, "must not be empty")
    if "\x00" in value:
        raise StepArgumentError(step, argument, "must not contain NUL characters")
    return value


def check_str_seq(step: str, argument: str, value: object) -> tuple[str, ...]:
    """Refuse anything but a non-string sequence of non-empty strings."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise StepArgumentError(step, argument, "must be a list of str")
    return tuple(check_str(step, f"{argument}[{i}]", item) for i, item in enumerate(value))


def check_bool(step: str, argument: str, value: object) -> bool:
    """Refuse anything but a real bool (``1`` or ``"yes"`` are mistakes, not flags)."""
    if not isinstance(value, bool):
        raise StepArgumentError(step, argument, f"must be a bool, not {type(value).__name__}")
    return value


def check_int(step: str, argument: str, value: object, *, low: int, high: int) -> int:
    """Refuse non-integers and integers out of ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise StepArgumentError(step, argument, f"must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise StepArgumentError(step, argument, f"must be between {low} and {high}, got {value}")
    return value


def check_choice(step: str, argument: str, value: object, choices: Sequence[str]) -> str:
    """Refuse a value outside ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise StepArgumentError(step, argument, f"must be one of {allowed}, got {value!r}")
    return str(value)


def check_abs_path(step: str, argument: str, value: object) -> str:
    """Refuse a non-absolute container path; return it cleaned (no ``..`` above root)."""
    path = check_str(step, argument, value)
    if not path.startswith("/"):
        raise StepArgumentError(step, argument, f"must be an absolute path, got {path!r}")
    return clean_container_path(path)


def clean_container_path(path: str) -> str:
    """Normalise a container path like Go's ``path.Clean`` (``..`` cannot climb above /)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LABEL_KEY: Final = re.compile(r"[^\s=\"]+\Z")
_PORT: Final = re.compile(r"(?P<low>\d{1,5})(?:-(?P<high>\d{1,5}))?(?:/(?P<proto>tcp|udp|sctp))?\Z")
_PLATFORM: Final = re.compile(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?\Z")
_OWNER: Final = re.compile(r"[^\s:]+(?::[^\s:]+)?\Z")
_CHMOD: Final = re.compile(r"[0-7]{3,4}\Z")
_SIGNAL: Final = re.compile(r"(?:SIG)?[A-Z][A-Z0-9+-]*\Z|\d{1,2}\Z")
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+\Z")


def check_env_name(step: str, argument: str, value: object) -> str:
    """Refuse a name that a shell could not export."""
    name = check_str(step, argument, value)
    if not _ENV_NAME.match(name):
        raise StepArgumentError(step, argument, f"is not a valid variable name: {name!r}")
    return name


def check_platform(step: str, argument: str, value: object) -> str:
    """Refuse a platform that is not ``os/arch[/variant]``."""
    platform = check_str(step, argument, value)
    if not _PLATFORM.match(platform):
        raise StepArgumentError(
            step, argument, f"must look like 'linux/amd64' or 'linux/arm/v7', got {platform!r}"
        )
    return platform


def check_owner(step: str, argument: str, value: object) -> str:
    """Refuse an owner that is not ``user`` or ``user:group`` (names or ids)."""
    owner = check_str(step, argument, value)
    if not _OWNER.match(owner):
        raise StepArgumentError(step, argument, f"must be 'user' or 'user:group', got {owner!r}")
    return owner


def check_chmod(step: str, argument: str, value: object) -> str:
    """Accept an int mode (``0o755``) or octal digits (``"755"``); return four octal digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0o7777:
            raise StepArgumentError(step, argument, f"must be a mode up to 0o7777, got {value:#o}")
        return f"{value:04o}"
    text = check_str(step, argument, value)
    if not _CHMOD.match(text):
        raise StepArgumentError(step, argument, f"must be octal digits like '755', got {text!r}")
    return text.rjust(4, "0")


def check_duration(step: str, argument: str, value: object) -> str:
    """Accept seconds (int/float) or a Go duration ("30s", "1m30s"); return the Go form."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise StepArgumentError(step, argument, f"must not be negative, got {value}")
        return f"{value:g}s"
    text = check_str(step, argument, value)
    if not _DURATION.match(text):
        raise StepArgumentError(step, argument, f"must be a duration like '30s', got {text!r}")
    return text


def _check_mapping(step: str, argument: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise StepArgumentError(step, argument, "must be a mapping of str to str")
    return value


def env_items(step: str, values: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """Check ``ENV``/``LABEL``-like pairs, keeping the user's order."""
    pairs = []
    for name, value in _check_mapping(step, "values", values).items():
        pairs.append((check_env_name(step, "name", name), check_str(step, name, value, empty=True)))
    if not pairs:
        raise StepArgumentError(step, "values", "must name at least one variable")
    return tuple(pairs)


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


def parse_port(step: str, value: object) -> str:
    """Normalise ``8080``, ``"8080"``, ``"53/udp"``, ``"8000-8010/tcp"`` to ``PORT/proto``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = check_str(step, "ports", value)
    match = _PORT.match(text)
    if not match:
        raise StepArgumentError(step, "ports", f"must look like 8080 or '53/udp', got {text!r}")
    low = int(match["low"])
    high = int(match["high"]) if match["high"] else low
    if not 1 <= low <= high <= 65535:
        raise StepArgumentError(step, "ports", f"must be in 1..65535 (low <= high), got {text!r}")
    span = f"{low}-{high}" if high != low else str(low)
    return f"{span}/{match['proto'] or 'tcp'}"


def parse_signal(step: str, value: object) -> str:
    """Accept ``"SIGTERM"``, ``"TERM"`` or a number; return Docker's spelling."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = check_str(step, "signal", value)
    if not _SIGNAL.match(text):
        raise StepArgumentError(step, "signal", f"must be a signal name or number, got {text!r}")
    if text.isdigit():
        if not 1 <= int(text) <= 64:
            raise StepArgumentError(step, "signal", f"must be in 1..64, got {text}")
        return text
    return text if text.startswith("SIG") else f"SIG{text}"


def parse_label_items(step: str, values: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """Check LABEL pairs: keys are free-form (``org.opencontainers.image.source``)."""
    pairs = []
    for key, value in _check_mapping(step, "labels", values).items():
        key_text = check_str(step, "label key", key)
        if not _LABEL_KEY.match(key_text):
            raise StepArgumentError(step, "label key", f"has spaces, '=' or quotes: {key!r}")
        pairs.append((key_text, check_str(step, key_text, value, empty=True)))
    if not pairs:
        raise StepArgumentError(step, "labels", "must name at least one label")
    return tuple(pairs)


# -- build state and variable expansion ------------------------------------------------------

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

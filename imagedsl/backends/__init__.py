"""Backends make a plan real. Each implements :class:`Backend`; the CLI picks one by name.

A backend receives the plan (computed without running anything), the store, and a
:class:`BuildRequest`; it builds the missing steps, records every step it completed through
:func:`imagedsl.planner.record_step` (so the next plan shows hits), and records nothing for a
step that did not complete.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from imagedsl.errors import InputError, SourceLocation

if TYPE_CHECKING:
    from pathlib import Path

    from imagedsl.oci.descriptor import Descriptor
    from imagedsl.planner import Plan
    from imagedsl.reporting import Reporter
    from imagedsl.steps import Step
    from imagedsl.store import Store

#: What a build may be allowed beyond the sandbox (BuildKit's names): ``network.host`` lets a
#: RUN with ``network="host"`` use the host's network namespace.
NETWORK_HOST: Final = "network.host"
ENTITLEMENTS: Final = (NETWORK_HOST,)


@attrs.frozen(kw_only=True)
class SecretSource:
    """Where a secret's value comes from at build time: a file or an environment variable.

    Only the id and the source's *name* are kept; the value is read by the backend when it
    runs the step and is never hashed, logged or recorded.
    """

    id: str
    path: str | None = None
    env: str | None = None

    @classmethod
    def parse(cls, text: str) -> SecretSource:
        """Parse Docker's ``id=NAME,src=PATH`` / ``id=NAME,env=VAR`` form."""
        fields: dict[str, str] = {}
        for part in text.split(","):
            name, sep, value = part.partition("=")
            if not sep or not value:
                raise BuildRequestError(f"--secret {text!r}: expected key=value pairs")
            fields[name.strip()] = value.strip()
        secret_id = fields.pop("id", None)
        if secret_id is None:
            raise BuildRequestError(f"--secret {text!r}: needs id=NAME")
        path = fields.pop("src", None) or fields.pop("source", None)
        env = fields.pop("env", None)
        fields.pop("type", None)
        if fields:
            raise BuildRequestError(f"--secret {text!r}: unknown keys {sorted(fields)}")
        if path is None and env is None:
            env = secret_id  # docker's default: an env variable of the same name
        return cls(id=secret_id, path=path, env=env)

    @property
    def host_path(self) -> str | None:
        """The file's path with ``~`` expanded, made absolute (None for an ``env=`` secret)."""
        return None if self.path is None else os.path.abspath(os.path.expanduser(self.path))

    def read(self) -> bytes:
        """The secret's value; a source that cannot give one is a :class:`SecretError`
        (a missing or unreadable file, a directory, an unset variable, a value over the
        500 KiB BuildKit accepts)."""
        if self.path is not None:
            path = self.host_path
            assert path is not None
            try:
                with open(path, "rb") as handle:
                    value = handle.read(MAX_SECRET_SIZE + 1)
            except FileNotFoundError:
                raise SecretError(self.id, f"no such file {self.path}") from None
            except IsADirectoryError:
                raise SecretError(self.id, f"{self.path} is a directory, not a file") from None
            except OSError as error:
                raise SecretError(self.id, f"cannot read {self.path}: {error.strerror}") from None
        else:
            assert self.env is not None
            text = os.environ.get(self.env)
            if text is None:
                raise SecretError(self.id, f"environment variable {self.env} is not set")
            value = text.encode()
        if len(value) > MAX_SECRET_SIZE:
            raise SecretError(self.id, "its value is larger than 500 KiB (BuildKit's limit)")
        return value


#: The largest secret value (BuildKit's limit).
MAX_SECRET_SIZE: Final = 500 << 10


@attrs.define
class BuildRequestError(InputError):
    """A build was asked for in a way that cannot work (bad option, missing tool)."""

    message: str

    def __str__(self) -> str:
        return self.message


@attrs.define
class SecretError(BuildRequestError):
    """A secret given to the build cannot be read: a missing or unreadable file, a
    directory, an unset environment variable. Both backends refuse it before building."""

    message: str = attrs.field(init=False, repr=False)
    id: str
    problem: str

    def __attrs_post_init__(self) -> None:
        self.message = f"--secret id={self.id}: {self.problem}"


def read_secrets(secrets: Sequence[SecretSource]) -> dict[str, bytes]:
    """Every given secret's value by id (:class:`SecretError` for the first that cannot be
    read): what both backends check before building, and what their output masks."""
    return {secret.id: secret.read() for secret in secrets}


@attrs.define
class UnknownEntitlementError(InputError):
    """``--allow`` named something that is not an entitlement."""

    name: str

    def __str__(self) -> str:
        return f"--allow {self.name}: unknown entitlement; entitlements: {', '.join(ENTITLEMENTS)}"


@attrs.define
class EntitlementError(InputError):
    """A step needs an entitlement the build was not given (``--allow``)."""

    entitlement: str
    stage: str
    instruction: str
    location: SourceLocation | None = None

    def __str__(self) -> str:
        return (
            f"{self.stage}: {self.instruction} needs the {self.entitlement} entitlement: "
            f"build with --allow {self.entitlement} (BuildSession(allow=...)) to let it "
            f"use the host's network"
        )


def check_entitlement_names(names: Iterable[str]) -> frozenset[str]:
    """The entitlements asked for, as a set; :class:`UnknownEntitlementError` for a typo."""
    for name in names:
        if name not in ENTITLEMENTS:
            raise UnknownEntitlementError(name)
    return frozenset(names)


def required_entitlement(step: Step) -> str | None:
    """The entitlement ``step`` needs to run (``network.host`` for a RUN on the host's
    network), or None."""
    from imagedsl.steps import Run

    if isinstance(step, Run) and step.network == "host":
        return NETWORK_HOST
    return None


def check_entitlements(plan: Plan, allow: Collection[str]) -> None:
    """Refuse a plan with a step that needs an entitlement not in ``allow`` (as BuildKit
    refuses it, whether or not the step is cached)."""
    for planned in plan.steps:
        needed = required_entitlement(planned.node.step)
        if needed is not None and needed not in allow:
            raise EntitlementError(
                needed, f"{planned.stage}[{planned.index}]", planned.instruction, planned.location
            )


@attrs.frozen(kw_only=True)
class BuildRequest:
    """What the user asked of a build, beyond the plan itself."""

    tags: tuple[str, ...] = ()
    #: Backend-specific output destination (``oci:DIR[:TAG]``, ``docker[:TAG]``, ...).
    output: str | None = None
    build_args: Mapping[str, str] = attrs.field(factory=dict)
    platform: str | None = None
    secrets: tuple[SecretSource, ...] = ()
    progress: str = "auto"
    #: Entitlements granted to the build (``network.host``), as BuildKit's ``--allow``.
    allow: frozenset[str] = frozenset()
    #: False: RUN steps run without a seccomp profile (the OCI backend's ``--no-seccomp``;
    #: BuildKit always applies its own).
    seccomp: bool = True
    #: The image will be pushed from the store (``--push``): a backend whose images live in an
    #: engine brings a multi-platform build's images and index into the store.
    push: bool = False


@attrs.frozen(kw_only=True)
class BuildResult:
    """What a build produced: per-step outcome and the image it made."""

    built: tuple[str, ...] = ()
    cached: tuple[str, ...] = ()
    image: str | None = None
    digest: str | None = None
    #: The image manifest, when the backend wrote the image into the store (it can be pushed).
    manifest: Descriptor | None = None
    #: The layer-cache entries the build read or wrote: (step key, entry file). What a
    #: remote cache exports (:mod:`imagedsl.remote_cache`).
    layer_cache: tuple[tuple[str, Path], ...] = ()


class Backend(Protocol):
    """Makes the missing steps of a plan real.

    A backend that writes images into the store (their blobs, so they can be pushed and their
    layers shared through a remote cache) names the media types of the layers it writes in
    ``layer_media_types``; one whose images live elsewhere (an engine) leaves it empty.
    """

    name: str

    @property
    def layer_media_types(self) -> frozenset[str]:
        """The media types of the layers the backend writes into the store (empty: none)."""

    def build(
        self, plan: Plan, request: BuildRequest, *, store: Store, reporter: Reporter
    ) -> BuildResult:
        """Build ``plan``'s target and record what was built."""
        ...

    def build_platforms(
        self,
        plan_for: Callable[[str], Plan],
        platforms: Sequence[str],
        request: BuildRequest,
        *,
        store: Store,
        reporter: Reporter,
    ) -> BuildResult:
        """Build the target for each of ``platforms`` (each planned by ``plan_for`` when its
        turn comes, so steps the platforms share are built once) as one image index."""
        ...


#: Backend name -> "module:attribute" of a zero-argument factory, imported only when used.
BACKENDS: Final[Mapping[str, str]] = {
    "docker": "imagedsl.backends.dockerfile.buildkit:DockerfileBackend",
    "oci": "imagedsl.backends.oci.backend:OCIBackend",
}


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name; a clear error names the ones that exist."""
    target = BACKENDS.get(name)
    if target is None:
        raise BuildRequestError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}")
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    factory: Callable[[], Backend] = getattr(module, attribute)
    return factory()

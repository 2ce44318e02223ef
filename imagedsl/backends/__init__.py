"""Backends make a plan real. Each implements :class:`Backend`; the CLI picks one by name.

A backend receives the plan (computed without running anything), the store, and a
:class:`BuildRequest`; it builds the missing steps, records every step it completed through
:func:`imagedsl.planner.record_step` (so the next plan shows hits), and records nothing for a
step that did not complete.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from imagedsl.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    from imagedsl.oci.descriptor import Descriptor
    from imagedsl.planner import Plan
    from imagedsl.reporting import Reporter
    from imagedsl.store import Store


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

    def read(self) -> bytes | None:
        """The secret's value, or None when its source does not exist."""
        if self.path is not None:
            try:
                with open(os.path.expanduser(self.path), "rb") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None
        assert self.env is not None
        value = os.environ.get(self.env)
        return None if value is None else value.encode()


@attrs.define
class BuildRequestError(InputError):
    """A build was asked for in a way that cannot work (bad option, missing tool)."""

    message: str

    def __str__(self) -> str:
        return self.message


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
    layer_media_types: frozenset[str]

    def build(
        self, plan: Plan, request: BuildRequest, *, store: Store, reporter: Reporter
    ) -> BuildResult:
        """Build ``plan``'s target and record what was built."""
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

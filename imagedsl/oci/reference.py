"""Image references: where a base image comes from, parsed and normalised as Docker does.

A registry name (``python:3.12``) normalises to ``docker.io/library/python:3.12``; the local
sources the OCI backend reads are written ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
``docker-archive:FILE[:TAG]`` and ``docker-daemon:NAME[:TAG]``. Any of them may be pinned with
``@sha256:<hex>``.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from imagedsl.errors import StepArgumentError
from imagedsl.oci.digest import is_sha256

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
    _check_text(step, argument, text)
    transport, sep, rest = text.partition(":")
    if sep and transport in TRANSPORTS and transport != "registry":
        return _parse_local_reference(transport, rest, step, argument)
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not is_sha256(digest):
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
        if not is_sha256(digest):
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


#: OCI's grammar of ``org.opencontainers.image.ref.name`` (image-layout's annotations).
_REF_NAME: Final = re.compile(
    r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*"
)


def is_ref_name(text: str) -> bool:
    """Whether ``text`` may be an OCI layout's ``ref.name`` (a tag such as ``1.0`` or
    ``app:1.0``; no spaces, nothing but letters and digits at either end)."""
    return _REF_NAME.fullmatch(text) is not None


def portable_name(reference: ImageReference) -> str | None:
    """The name an image is known by wherever it is built: a registry reference's normalised
    name and tag (``docker.io/library/python:3.12``), an engine image's likewise; None for a
    layout or an archive, whose reference is a path on this machine."""
    if reference.transport == "docker-daemon":
        try:
            reference = parse_reference(f"{reference.name}:{reference.tag or 'latest'}")
        except StepArgumentError:
            return None
    if reference.transport != "registry":
        return None
    return reference.name + (f":{reference.tag}" if reference.tag else "")


def name_of_tag(tag: object) -> str | None:
    """The normalised name of a Docker ``RepoTags`` entry or a containerd image name."""
    if not isinstance(tag, str) or not tag:
        return None
    try:
        return portable_name(parse_reference(tag))
    except StepArgumentError:
        return None


def normalise_tag(tag: str) -> str:
    """``name`` -> ``name:latest`` (what Docker's RepoTags hold)."""
    last = tag.rsplit("/", 1)[-1]
    return tag if ":" in last or "@" in last else f"{tag}:latest"


def _check_text(step: str, argument: str, value: object) -> str:
    # The checks of imagedsl.steps.check_str, which sits above this module.
    if not isinstance(value, str):
        raise StepArgumentError(step, argument, f"must be a str, not {type(value).__name__}")
    if not value:
        raise StepArgumentError(step, argument, "must not be empty")
    if "\x00" in value:
        raise StepArgumentError(step, argument, "must not contain NUL characters")
    return value

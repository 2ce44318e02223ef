"""Cache keys: canonical preimages and their blake3 digests. The one module that owns them.

A key is ``blake3(DOMAIN || canonical(preimage))`` in hex, where the preimage is a small JSON
object with sorted keys holding everything that can change a step's output, and nothing that
cannot (see docs/cache-keys.md for the table). The preimage is stored beside the key in the
ledger, so two keys can always be diffed to explain a miss.

Secret values, cache-mount contents, mtimes, owners and checkout paths never enter a preimage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import blake3

from imagedsl.buildstate import BuildState, canonical_word
from imagedsl.steps import (
    BindMount,
    CacheMount,
    ConfigStep,
    FromImage,
    FromScratch,
    FromStage,
    Healthcheck,
    Mount,
    SecretMount,
    Step,
    TmpfsMount,
)

KEY_VERSION: Final = 2
_DOMAIN: Final = b"imagedsl.key.v1\0"
Preimage = dict[str, Any]


def canonical(value: Mapping[str, Any]) -> bytes:
    """The one byte form of a preimage: sorted keys, no spaces, ASCII (lone surrogates escape)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def key_of(preimage: Mapping[str, Any]) -> str:
    """The 64-hex-digit key of a preimage."""
    return blake3.blake3(_DOMAIN + canonical(preimage)).hexdigest()


def is_key(text: object) -> bool:
    """Whether ``text`` looks like a key (64 lowercase hex digits)."""
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _preimage(kind: str, **fields: Any) -> Preimage:
    return {"v": KEY_VERSION, "kind": kind, **fields}


def base_preimage(step: FromImage | FromScratch, platform: str, digest: str | None) -> Preimage:
    """FROM: the base's content identity (``digest``), or its name while that is unknown.

    ``digest`` is the image's config digest (the engine's image ID), or the manifest digest a
    reference is pinned to; None means unpinned, keyed by the normalised name and tag.
    """
    if isinstance(step, FromScratch):
        return _preimage("scratch", platform=platform)
    if digest is not None:
        # Known by content, the name is only a label: a retag to the same image, or another
        # name for it (a registry name, docker-daemon:, a layout), must not miss.
        return _preimage("from", ref=None, digest=digest, platform=platform)
    reference = step.image
    name = f"{reference.transport}:{reference.name}"
    if reference.tag is not None:
        name += f":{reference.tag}"
    return _preimage("from", ref=name, digest=None, platform=platform)


def run_preimage(
    *,
    parent: str,
    argv: Sequence[str],
    state: BuildState,
    mounts: Sequence[Preimage],
    network: str,
    source_date_epoch: int = 0,
) -> Preimage:
    """RUN: everything the process can observe except secret values and cache contents.

    The environment is a list in BuildKit's order (ENV and ARG values, each write moved to
    the end): BuildKit keys a RUN on that list, so reordering it rebuilds there and here.
    """
    return _preimage(
        "run",
        parent=parent,
        argv=list(argv),
        env=[list(pair) for pair in state.env],
        workdir=state.workdir,
        user=state.user,
        mounts=list(mounts),
        network=network,
        platform=state.platform,
        # In the RUN's environment (as BuildKit passes it), and what it writes depends on it.
        source_date_epoch=source_date_epoch,
    )


def mount_preimage(mount: Mount, content: str | None) -> Preimage:
    """A mount's spec; for bind mounts ``content`` is the digest of what is mounted."""
    if isinstance(mount, CacheMount):
        return {
            "type": "cache",
            "target": mount.target,
            "id": mount.id,
            "sharing": mount.sharing,
            "mode": mount.mode,
            "uid": mount.uid,
            "gid": mount.gid,
            "readonly": mount.readonly,
        }
    if isinstance(mount, SecretMount):
        # The id names the secret; its value is deliberately absent.
        return {
            "type": "secret",
            "id": mount.id,
            "target": mount.target,
            "env": mount.env,
            "required": mount.required,
            "mode": mount.mode,
            "uid": mount.uid,
            "gid": mount.gid,
        }
    if isinstance(mount, BindMount):
        return {
            "type": "bind",
            "target": mount.target,
            "readwrite": mount.readwrite,
            "content": content,
        }
    assert isinstance(mount, TmpfsMount)
    return {"type": "tmpfs", "target": mount.target, "size": mount.size}


def copy_preimage(
    *,
    kind: str,
    parent: str | None,
    dest: str,
    chown: str | None,
    chmod: str | None,
    exclude: Sequence[str],
    tree: str,
    name: str | None = None,
) -> Preimage:
    """COPY/ADD by content: ``tree`` is the digest of exactly the files placed.

    A COPY from a stage whose output digest is known gets this same form, so an upstream
    rebuild that yields identical bytes keeps every downstream key (early cutoff).
    ``parent`` is None for ``link=True``: the layer does not depend on what is below it.
    ``name``: the file's own name, for one file copied to a file name (BuildKit's COPY key
    holds each source's last path element, and that file keeps the name when the
    destination turns out to be a directory); no other copy has it in its preimage.
    """
    named = {} if name is None else {"name": name}
    return _preimage(
        kind,
        parent=parent,
        dest=dest,
        chown=chown,
        chmod=chmod,
        exclude=list(exclude),
        tree=tree,
        **named,
    )


def copy_from_stage_preimage(
    *,
    parent: str | None,
    dest: str,
    chown: str | None,
    chmod: str | None,
    exclude: Sequence[str],
    source: str,
    paths: Sequence[str],
) -> Preimage:
    """COPY --from before the source is built: the source stage's key and its paths, in
    order (BuildKit copies them in order: a later one may overwrite an earlier one). One
    path is keyed as ``path``, as it always was; several as ``paths``."""
    where: dict[str, Any] = {"path": paths[0]} if len(paths) == 1 else {"paths": list(paths)}
    return _preimage(
        "copy-from",
        parent=parent,
        dest=dest,
        chown=chown,
        chmod=chmod,
        exclude=list(exclude),
        source=source,
        **where,
    )


def add_url_preimage(
    *,
    parent: str | None,
    dest: str,
    chown: str | None,
    chmod: str | None,
    checksum: str,
    name: str,
) -> Preimage:
    """ADD of a URL: the pinned checksum, never the URL's live content; ``name`` is the file
    name the URL gives (what a destination directory receives)."""
    return _preimage(
        "add-url",
        parent=parent,
        dest=dest,
        chown=chown,
        chmod=chmod,
        checksum=checksum,
        name=name,
    )


def trigger_preimage(*, parent: str, base: str, instruction: str) -> Preimage:
    """A base image's ONBUILD trigger, run by a build FROM it: the key before it (the FROM,
    or the trigger before), the base's manifest digest (its config and layers: all a trigger
    can read) and the trigger's text."""
    return _preimage("onbuild-trigger", parent=parent, base=base, instruction=instruction)


def layers_preimage(parts: Sequence[str]) -> Preimage:
    """The filesystem after a COPY split into layers: all its layers' keys, in order."""
    return _preimage("layers", parts=list(parts))


def workdir_preimage(*, parent: str, path: str, user: str) -> Preimage:
    """WORKDIR creates its directory (owned per USER), so it is a filesystem step."""
    return _preimage("workdir", parent=parent, path=path, user=user)


def config_preimage(*, parent: str, step: ConfigStep | Step, state: BuildState) -> Preimage:
    """Config-only steps: no layer, but a key so every step of a plan is identified."""
    fields: dict[str, Any] = {}
    words = step.kind in _EXPANDED_KINDS
    for name in attrs.fields(type(step)):
        if name.name == "location":
            continue
        value = getattr(step, name.name)
        fields[name.name] = _jsonable(value, words=words)
    if isinstance(step, Healthcheck) and step.test is None:
        fields["test"] = None
    if isinstance(step, FromStage):
        fields["ref"] = step.ref.name  # as written; the stage it picked is the parent
    # The state after the step (expanded ENV values, effective ARG values) is what counts.
    fields["state"] = {
        "env": [list(pair) for pair in state.env],
        "config_env": [list(pair) for pair in state.config_env],
        "workdir": state.workdir,
        "user": state.user,
        "shell": list(state.shell),
    }
    return _preimage(step.kind, parent=parent, **fields)


#: Steps whose strings are words the Dockerfile expands, keyed as :func:`canonical_word`
#: spells them (``ENV A=\\$`` is ``ENV A=$``, whichever a build file or a Dockerfile wrote).
_EXPANDED_KINDS: Final = frozenset(
    {"env", "arg", "label", "user", "expose", "volume", "stopsignal"}
)


def _jsonable(value: Any, *, words: bool = False) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v, words=words) for v in value]
    if words and isinstance(value, str):
        return canonical_word(value)
    return value

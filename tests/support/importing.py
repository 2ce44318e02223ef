"""Dockerfiles reduced to what BuildKit builds from them, to compare a Dockerfile with the one
``imagedsl lower`` writes for its import (issue 12's round trip).

Both files are parsed by BuildKit's own parser (the ``dockerfile`` package); words are read by
the independent lexer model of ``buildkit_words``. A target becomes the flat list of the
instructions that build it (a ``FROM <stage>`` is replaced by that stage's list, so where the
lowering cuts stages does not matter), each as a tuple that ignores spelling: quoting, how ENV
pairs share a line, ``EXPOSE 80`` vs ``80/tcp``, flag order, a mount option's default value.
What the lowering writes differently by design is reduced to what it means: a COPY or ADD from
the build context reads a directory named by the digest of what it copies (the staged files
hold the ``--exclude``/``--parents`` selection), so its sources compare as ``<context>`` (the
engine builds check that the files are the same: every step CACHED); ``ADD --checksum URL``
is fetched at lowering time and copied from the context.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import dockerfile

from imagedsl.importer._translate import stage_variable
from tests.support.buildkit_words import read_word

#: The platform the comparisons plan for (the template ``FROM build-${TARGETOS}`` picks by it).
PLATFORM_ARGS = {
    "TARGETPLATFORM": "linux/amd64",
    "TARGETOS": "linux",
    "TARGETARCH": "amd64",
    "TARGETVARIANT": "",
    "BUILDPLATFORM": "linux/amd64",
    "BUILDOS": "linux",
    "BUILDARCH": "amd64",
    "BUILDVARIANT": "",
}
_MOUNT_DEFAULTS = {
    "type": "bind",
    "required": "false",
    "readonly": "false",
    "readwrite": "false",
    "sharing": "shared",
}
_MOUNT_ALIASES = {"dst": "target", "destination": "target", "src": "source", "ro": "readonly"}


class _Marked(Mapping[str, str]):
    """Every variable reads as a marker of its name, so ``$X`` and a literal ``$X`` differ."""

    def __getitem__(self, key: str) -> str:
        return f"<${key}>"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __contains__(self, key: object) -> bool:
        return True


_ENV = _Marked()


def _read(text: str, escape: str = "\\") -> str:
    if escape != "\\":
        # The model reads backslash escapes: spell the file's escapes that way first.
        text = re.sub(rf"\\|{re.escape(escape)}(.)", lambda m: "\\" + (m[1] or "\\"), text)
    word: str = read_word(text, _ENV)
    return word


def _ref(reference: str) -> str:
    last = reference.rsplit("/", 1)[-1]
    return reference if ":" in last or "@" in last else f"{reference}:latest"


def _mount(spec: str) -> tuple[tuple[str, str], ...]:
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        key = _MOUNT_ALIASES.get(key.lower(), key.lower())
        fields[key] = value if eq else "true"
    fields = {k: v for k, v in fields.items() if _MOUNT_DEFAULTS.get(k) != v.lower()}
    if fields.get("type", "bind") == "bind" and "from" not in fields:
        fields["source"] = "<context>"
    if "mode" in fields:
        fields["mode"] = str(int(fields["mode"], 8))
    return tuple(sorted(fields.items()))


def _flags(flags: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for flag in flags:
        key, eq, value = flag[2:].partition("=")
        out[key] = value if eq else "true"
    return out


def _instruction(command: Any, stages: Mapping[str, str], escape: str) -> list[tuple[Any, ...]]:
    cmd = command.cmd

    def _word(text: str) -> str:
        return _read(text, escape)

    flags = _flags(command.flags)
    if cmd in ("ENV", "LABEL"):
        values = command.value
        return [(cmd, _word(values[i]), _word(values[i + 1])) for i in range(0, len(values), 2)]
    if cmd == "ARG":
        out: list[tuple[Any, ...]] = []
        for item in command.value:
            name, eq, default = item.partition("=")
            out.append(("ARG", name, _word(default) if eq else None))
        return out
    if cmd == "RUN":
        mounts = sorted(
            _mount(v) for k, v in (f[2:].partition("=")[::2] for f in command.flags) if k == "mount"
        )
        network = flags.get("network", "default")
        if command.heredocs:
            body: tuple[Any, ...] = ("shell", command.heredocs[0].content)
        elif command.json:
            body = ("exec", tuple(command.value))
        else:
            body = ("shell", command.value[0])
        return [("RUN", tuple(mounts), network, body)]
    if cmd in ("COPY", "ADD"):
        dest = command.value[-1] if command.json else _word(command.value[-1])
        chmod = int(flags["chmod"], 8) if "chmod" in flags else None
        common = (
            _word(flags["chown"]) if "chown" in flags else None,
            chmod,
            flags.get("link", "false") == "true",
            dest,
        )
        if command.heredocs:
            return [(cmd, "inline", command.heredocs[0].content, *common)]
        if "checksum" in flags:
            return [("COPY", "<context>", *common)]
        if "from" in flags:
            source = stages.get(flags["from"].lower(), flags["from"])
            return [(cmd, "from", source, tuple(command.value[:-1]), *common)]
        return [(cmd, "<context>", *common)]
    if cmd == "EXPOSE":
        ports = tuple(p if "/" in p else f"{p}/tcp" for p in (_word(v) for v in command.value))
        return [("EXPOSE", ports)]
    if cmd == "VOLUME":
        return [("VOLUME", tuple(command.value if command.json else map(_word, command.value)))]
    if cmd in ("USER", "WORKDIR", "STOPSIGNAL"):
        return [(cmd, _word(command.value[0]))]
    if cmd == "ONBUILD":
        return [("ONBUILD", command.original.strip()[len("ONBUILD") :].strip())]
    return [(cmd, command.json, tuple(command.value), tuple(sorted(flags.items())))]


def _stages(commands: Any) -> tuple[dict[str, str], list[tuple[str, Any, list[Any]]]]:
    globals_: dict[str, str] = dict(PLATFORM_ARGS)
    stages: list[tuple[str, Any, list[Any]]] = []
    for command in commands:
        if command.cmd == "FROM":
            words = command.value
            name = words[2].lower() if len(words) == 3 else None
            stages.append((name or "", command, []))
        elif not stages:
            for item in command.value:
                key, _, default = item.partition("=")
                globals_.setdefault(key, _read(default))
        else:
            stages[-1][2].append(command)
    names: list[str] = []
    for index, (name, _, _) in enumerate(stages):
        if name:
            names.append(stage_variable(name))
        else:
            names.append("image" if index == len(stages) - 1 else f"stage_{index}")
    return globals_, [(n, f, c) for n, (_, f, c) in zip(names, stages, strict=True)]


def _expand(text: str, values: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: values.get(m[1], ""), text)


def flatten(text: str, target: str | None = None) -> list[tuple[Any, ...]]:
    """The instructions that build ``target`` (default: the last stage), normalised."""
    escape = "`" if re.match(r"#\s*escape\s*=\s*`", text) else "\\"
    globals_, stages = _stages(dockerfile.parse_string(text))
    by_name = {name: (frm, body) for name, frm, body in stages}
    aliases: dict[str, str] = {}
    for index, (name, frm, _) in enumerate(stages):
        aliases[str(index)] = name
        if len(frm.value) == 3:
            aliases[frm.value[2].lower()] = name

    def walk(name: str) -> list[tuple[Any, ...]]:
        frm, body = by_name[name]
        ref = _expand(frm.value[0], globals_).lower()
        parent = aliases.get(ref) or (
            stage_variable(ref) if stage_variable(ref) in by_name else None
        )
        if parent is not None and parent != name:
            head = walk(parent)
        else:
            platform = _flags(frm.flags).get("platform")
            head = [("FROM", _ref(frm.value[0]), platform)]
        return head + [i for c in body for i in _instruction(c, aliases, escape)]

    return walk(target or stages[-1][0])


def targets(text: str) -> list[str]:
    """The targets as the importer names them: the last stage (the default), then the named."""
    _, stages = _stages(dockerfile.parse_string(text))
    named = [n for n, frm, _ in stages[:-1] if len(frm.value) == 3]
    return [stages[-1][0], *named]

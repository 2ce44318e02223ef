"""The corpus: Dockerfiles in the styles real projects use, each with the build.py that says
the same thing (tests/resources/corpus/NAME/).

- :func:`canonical` reads a Dockerfile with BuildKit's own parser (the ``dockerfile``
  package) into a form two Dockerfiles that build the same thing share: a target is the
  chain of its instructions, with every ``FROM <stage>`` and ``--from=<stage>`` replaced by
  that stage's own form (so stage names, and where a lowering cut stages, do not matter), the
  digest-named context directories of a lowered Dockerfile read back as the paths they hold
  (from the comment above each COPY), and spellings BuildKit reads alike made alike
  (``EXPOSE 80`` is ``80/tcp``, quotes, ``--chmod=0644``, a cache mount's default id).
- :func:`local_bases` points a corpus build file at local bases while it is loaded: no public
  registry is reachable here, so public images become the busybox-based stand-in toolchain
  image (tests/resources/toolchains) or the Debian Python base the tests make.
- :func:`ensure_toolchain_image` builds that stand-in image once per machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dockerfile

import imagedsl as dsl
from tests.support.docker import DockerEngine

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
CORPUS = RESOURCES / "corpus"
TOOLCHAINS = RESOURCES / "toolchains"
TOOLCHAIN_LABEL = "org.imagedsl.test.toolchains-sha256"

#: Public images the corpus names, by the local stand-in that builds in their place: "tools"
#: (busybox and stand-in toolchains) or "python" (Debian with a real python3).
PUBLIC_BASES: Sequence[tuple[str, str]] = (
    (r"python:\S*", "tools"),
    (r"local/debian-python\S*", "python"),
    (
        r"(?:golang|rust|maven|gradle|eclipse-temurin|node|alpine|debian|ubuntu|busybox|nginx"
        r"|ruby|php|composer|gcr\.io/distroless/[a-z0-9-]+|mcr\.microsoft\.com/dotnet/[a-z]+)"
        r"(?::[^\s@]*)?(?:@sha256:[0-9a-f]{64})?",
        "tools",
    ),
)

#: Default values of the automatic platform ARGs (linux/amd64), for resolving stage names.
PLATFORM_ARGS: Mapping[str, str] = {
    "TARGETPLATFORM": "linux/amd64",
    "TARGETOS": "linux",
    "TARGETARCH": "amd64",
    "TARGETVARIANT": "",
    "BUILDPLATFORM": "linux/amd64",
    "BUILDOS": "linux",
    "BUILDARCH": "amd64",
    "BUILDVARIANT": "",
}

_DIGEST_DIR = re.compile(r"[0-9a-f]{16}(?:/(?P<rest>.*))?\Z")
_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?[-+][^}]*)?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# -- the stand-in bases ------------------------------------------------------------------------


def toolchain_digest() -> str:
    """A digest of tests/resources/toolchains (what the stand-in image is made of)."""
    hasher = hashlib.sha256()
    for path in sorted(TOOLCHAINS.rglob("*")):
        if path.is_file():
            hasher.update(str(path.relative_to(TOOLCHAINS)).encode() + b"\0")
            hasher.update(oct(path.stat().st_mode & 0o111).encode() + b"\0")
            hasher.update(path.read_bytes() + b"\0")
    return hasher.hexdigest()


def ensure_toolchain_image(engine: DockerEngine, busybox: str) -> str:
    """The stand-in toolchain image, built from tests/resources/toolchains when the engine
    has none made from the same files."""
    digest = toolchain_digest()
    tag = f"imagedsl-test/toolchains:{digest[:12]}"
    found = engine.run("image", "inspect", "--format", "{{json .Config.Labels}}", tag, check=False)
    if (
        found.returncode == 0
        and (json.loads(found.stdout or "null") or {}).get(TOOLCHAIN_LABEL) == digest
    ):
        return tag
    with tempfile.TemporaryDirectory(prefix="imagedsl-toolchains-") as scratch:
        context = Path(scratch)
        for path in TOOLCHAINS.rglob("*"):
            target = context / path.relative_to(TOOLCHAINS)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
                target.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)
        engine.build(
            context,
            "--tag", tag,
            "--build-arg", f"BUSYBOX={busybox}",
            "--label", f"{TOOLCHAIN_LABEL}={digest}",
        )  # fmt: skip
    return tag


def local_base(reference: str, bases: Mapping[str, str]) -> str:
    """The local stand-in for a public image reference (``bases`` maps "tools" and "python"
    to references), or the reference itself when it names no public image."""
    for pattern, kind in PUBLIC_BASES:
        if re.fullmatch(pattern, reference):
            return bases[kind]
    return reference


@contextlib.contextmanager
def local_bases(bases: Mapping[str, str]) -> Iterator[None]:
    """While loading a corpus build.py: ``dsl.image`` and global ``dsl.arg`` defaults that
    name public images name their local stand-ins instead."""
    image, arg = dsl.image, dsl.arg

    def local_image(ref: Any, **options: Any) -> Any:
        return image(local_base(ref, bases) if isinstance(ref, str) else ref, **options)

    def local_arg(name: str, default: str | None = None) -> Any:
        return arg(name, None if default is None else local_base(default, bases))

    dsl.image, dsl.arg = local_image, local_arg
    try:
        yield
    finally:
        dsl.image, dsl.arg = image, arg


# -- the canonical form of a Dockerfile ----------------------------------------------------------


def canonical(text: str, target: str | None = None) -> list[str]:
    """The target's instructions (default: the last stage), as lines that two Dockerfiles
    building the same thing share (see the module docstring)."""
    return _Reader(text).target_lines(target)


class _Reader:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.global_args: list[tuple[str, str | None]] = []
        self.stages: list[tuple[str, list[Any]]] = []
        for command in dockerfile.parse_string(text):
            if command.cmd.upper() == "FROM":
                name = ""
                if len(command.value) >= 3 and command.value[-2].upper() == "AS":
                    name = command.value[-1].lower()
                self.stages.append((name, [command]))
            elif not self.stages:
                if command.cmd.upper() == "ARG":
                    for item in command.value:
                        key, eq, value = item.partition("=")
                        self.global_args.append((key, _unquote(value) if eq else None))
            else:
                self.stages[-1][1].append(command)
        self.variables = {**PLATFORM_ARGS, **{k: v or "" for k, v in self.global_args}}

    def target_lines(self, target: str | None) -> list[str]:
        globals_line = "ARGS " + " ".join(
            f"{k}={v}" if v is not None else k for k, v in sorted(self.global_args)
        )
        index = len(self.stages) - 1 if target is None else self._stage_index(target)
        assert index is not None, f"no stage {target!r}"
        return [globals_line, *self._stage(index, "")]

    def _stage_index(self, name: str) -> int | None:
        expanded = self._expand(name).lower()
        for index, (stage_name, _) in enumerate(self.stages):
            if stage_name == expanded:
                return index
        if expanded.isdigit() and int(expanded) < len(self.stages):
            return int(expanded)
        return None

    def _expand(self, word: str) -> str:
        return _VARIABLE.sub(
            lambda m: self.variables.get(m["braced"] or m["bare"], m.group(0)), word
        )

    def _stage(self, index: int, indent: str) -> list[str]:
        _, commands = self.stages[index]
        head, *rest = commands
        reference = head.value[0]
        platform = [f for f in head.flags if f.startswith("--platform=")]
        parent = self._stage_index(reference) if reference.lower() != "scratch" else None
        if parent is not None and parent < index:
            out = self._stage(parent, indent)
        else:
            out = [indent + " ".join(["FROM", *platform, _image(reference)])]
        for command in rest:
            out.extend(self._instruction(command, indent))
        return out

    def _from_stage(self, reference: str, indent: str) -> list[str]:
        index = self._stage_index(reference)
        if index is None:  # an image: the same as a stage that is only FROM it
            return [f"{indent}  FROM {_image(reference)}"]
        return self._stage(index, indent + "  ")

    def _instruction(self, command: Any, indent: str) -> list[str]:
        name = command.cmd.upper()
        flags: list[str] = []
        nested: list[str] = []
        for flag in command.flags:
            key, _, value = flag.partition("=")
            if key == "--from":
                nested.extend(self._from_stage(value, indent))
                flags.append("--from=<stage>")
            elif key == "--mount":
                mount, stage = _mount(value)
                if stage is not None:
                    nested.extend(self._from_stage(stage, indent))
                flags.append(f"--mount={mount}")
            elif key == "--chmod":
                flags.append(f"--chmod={value.lstrip('0') or '0'}")
            else:
                flags.append(flag)
        values = list(command.value)
        if name in ("COPY", "ADD") and "--from=<stage>" not in flags:
            values = self._context_sources(command, values, flags)
        elif name == "COPY":
            values = [*(_path(v) for v in values[:-1]), values[-1]]
        elif name in ("ENV", "LABEL"):
            values = [_unquote(v) for v in values]
        elif name == "ARG":
            values = [
                f"{k}={_unquote(v)}" if eq else k
                for k, eq, v in (item.partition("=") for item in values)
            ]
        elif name == "EXPOSE":
            values = [v if "/" in v else f"{v}/tcp" for v in values]
        form = "json " if command.json and name in ("RUN", "CMD", "ENTRYPOINT", "SHELL") else ""
        heredocs = []
        for heredoc in command.heredocs:
            # Quoting the delimiter stops expansion: it matters only if the text has any.
            literal = "$" not in heredoc.content and "\\" not in heredoc.content
            values = [
                "<<" if literal and re.fullmatch(r"<<-?['\"]?\w+['\"]?", v) else v for v in values
            ]
            values = [re.sub(r"\A<<-?(['\"]?)\w+\1\Z", r"<<\1", v) for v in values]
            heredocs.append(f"{indent}  <<{json.dumps(heredoc.content)}")
        line = indent + " ".join([name, *sorted(flags), f"{form}{json.dumps(values)}"])
        return [*nested, line, *heredocs]

    def _context_sources(self, command: Any, values: list[str], flags: list[str]) -> list[str]:
        """COPY/ADD sources as the paths they copy: a lowered Dockerfile copies digest-named
        directories and names the paths in the comment above the instruction."""
        *sources, dest = values
        if sources and all(_DIGEST_DIR.match(s) for s in sources):
            comment = self.lines[command.start_line - 2].strip()
            assert comment.startswith("# "), comment
            text = comment[2:]
            if " (with their parent directories)" in text:
                flags.append("--parents")
            text = re.sub(
                r" \((?:excluding [^)]*|with their parent directories)\)| \[layer [^]]*\]", "", text
            )
            sources = text.split()
        return [*(_path(s) for s in sources), dest]


def _image(reference: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        if reference.startswith(prefix):
            return reference[len(prefix) :]
    return reference


def _path(source: str) -> str:
    cleaned = source.removeprefix("./").rstrip("/")
    return cleaned or "."


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    return value


_MOUNT_DEFAULTS = {"sharing": "shared", "uid": "0", "gid": "0"}


def _mount(value: str) -> tuple[str, str | None]:
    """A ``--mount`` value with its options in one order, defaults and aliases resolved, a
    context bind source as ``<context>``; and the stage it reads from, if any."""
    options: dict[str, str] = {}
    for part in value.split(","):
        key, eq, option = part.partition("=")
        key = {"dst": "target", "destination": "target", "src": "source", "ro": "readonly"}.get(
            key, key
        )
        options[key] = option if eq else "true"
    kind = options.get("type", "bind")
    options["type"] = kind
    if kind == "cache" and options.get("id") == options.get("target"):
        del options["id"]
    for key, default in _MOUNT_DEFAULTS.items():
        if options.get(key) == default:
            del options[key]
    if kind == "secret" and options.get("target") == f"/run/secrets/{options.get('id')}":
        del options["target"]
    stage = options.pop("from", None)
    if kind == "bind" and stage is None and "source" in options:
        options["source"] = "<context>"
    if kind == "bind" and stage is None and "source" not in options:
        options["source"] = "<context>"
    return ",".join(f"{k}={v}" for k, v in sorted(options.items())), stage

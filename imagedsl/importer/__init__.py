"""``imagedsl import``: a Dockerfile becomes an idiomatic build.py.

BuildKit's own parser (the ``dockerfile`` package) reads the Dockerfile: instructions, flags,
JSON forms, heredocs, line continuations and the ``escape`` directive. It drops comments and
parser directives, so those are read from the text by line number and carried over as
Python comments. :mod:`._translate` turns the instructions into DSL calls (and refuses what a
build.py cannot express exactly, naming the Dockerfile line); :mod:`._check` makes each call
once, so a value the DSL refuses is refused with its line; :mod:`._format` lays the code out
as ``ruff format`` does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final

import dockerfile

from imagedsl.importer._format import assignment, module
from imagedsl.importer._translate import DockerfileImportError, Statement, Translator
from imagedsl.loader import DEFAULT_BUILDFILE

__all__ = ["DockerfileImportError", "import_dockerfile", "translate_text"]

#: BuildKit's: a directive has a value (``# syntax=`` is a comment, and ends the directives).
_DIRECTIVE: Final = re.compile(r"#\s*([A-Za-z][A-Za-z0-9]*)\s*=\s*(.+?)\s*\Z")


def import_dockerfile(
    path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None
) -> str:
    """The build.py for the Dockerfile at ``path`` (its context: the Dockerfile's directory).

    ``output`` is where the build.py will be written (its context path is made relative to
    it); by default, beside the Dockerfile.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as error:
        raise DockerfileImportError(str(path), 0, f"cannot read: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DockerfileImportError(
            str(path),
            line,
            f"byte 0x{data[error.start]:02x} is not UTF-8 (BuildKit passes such bytes through; "
            "a build.py is UTF-8 text): save the Dockerfile as UTF-8",
        ) from None
    text = text.replace("\r\n", "\n")  # as the text read did before: the parser sees lines
    context_dir = source.parent
    written = Path(output) if output is not None else context_dir / DEFAULT_BUILDFILE
    rel = os.path.relpath(context_dir.resolve(), written.parent.resolve())
    ignore_file = context_dir / ".dockerignore"
    ignore = _read_ignore(ignore_file) if ignore_file.is_file() else None
    inside = os.path.relpath(written.resolve(), context_dir.resolve())
    if not inside.startswith(".."):
        # The build.py is no file of the Dockerfile's build: left out of the context, an
        # edit of it (each re-import) does not rebuild a COPY . and what follows.
        ignore = [*(ignore or []), Path(inside).as_posix()]
    return translate_text(
        text, file=str(path), context_dir=context_dir, context_path=rel, ignore=ignore
    )


def _read_ignore(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def translate_text(
    text: str,
    *,
    file: str = "Dockerfile",
    context_dir: Path | None = None,
    context_path: str = ".",
    ignore: list[str] | None = None,
) -> str:
    """The build.py for a Dockerfile's text."""
    # BuildKit skips a UTF-8 byte order mark (parser directives may follow it).
    text = text.removeprefix("\ufeff")
    lines = text.splitlines()
    directives, first = _directives(lines)
    try:
        parsed = dockerfile.parse_string(_check_last(text, lines, first))
    except dockerfile.GoParseError as error:
        line = _error_line(str(error)) or _failing_line(text)
        raise DockerfileImportError(file, line, str(error)) from None
    # Instructions are case-insensitive (the parser keeps them as written).
    commands = [c._replace(cmd=c.cmd.upper()) for c in parsed]
    escape = "`" if directives.get("escape") == "`" else "\\"
    comments = _comments(lines, commands, first)
    translator = Translator(file, context_dir or Path("."), context_path, escape, ignore)
    result = translator.translate(commands, comments)
    header = [f"# Imported by imagedsl from {file}: a build.py to keep in its place."]
    # A parser directive only steers how that file is read; the lowering writes its own.
    header.extend(f"# Dockerfile parser directive (read): {k}={v}" for k, v in directives.items())
    blocks: list[list[str]] = [[*header, "import imagedsl as dsl"]]
    if result.globals:
        blocks.append(_statements(result.globals))
    if result.context is not None:
        blocks.append(_statements([result.context]))
    blocks.extend(_statements([s]) for s in result.stages)
    if result.trailing:
        blocks.append(list(result.trailing))
    if result.targets is not None:
        blocks.append(_statements([result.targets]))
    return module(blocks)


def _statements(statements: list[Statement]) -> list[str]:
    lines: list[str] = []
    for statement in statements:
        lines.extend(statement.comments)
        lines.extend(assignment(statement.name, statement.value))
    return lines


def _error_line(message: str) -> int:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else 0


def _failing_line(text: str) -> int:
    """The line a parse error without one is at: the one after the longest part of the file
    that parses (a prefix cut inside a heredoc fails too, so the search goes backwards)."""
    lines = text.splitlines()
    for end in range(len(lines) - 1, 0, -1):
        try:
            dockerfile.parse_string("\n".join(lines[:end]) + "\n")
        except dockerfile.GoParseError:
            continue
        return end + 1
    return 1


def _check_last(text: str, lines: list[str], first: int) -> str:
    """``text`` with its ``# check=`` directives after the other directives: the parser used
    here (BuildKit 0.12's) knows no ``check`` and would stop reading directives there, so an
    ``# escape=`` after it would not join lines as today's BuildKit, and this importer, do."""
    checks = [line for line in lines[:first] if _directive(line)[0] == "check"]
    if not checks:
        return text
    others = [line for line in lines[:first] if line not in checks]
    return "\n".join([*others, *checks, *lines[first:]]) + "\n"


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    """Parser directives at the top of the file, and the index of the first other line."""
    found: dict[str, str] = {}
    for index, line in enumerate(lines):
        name, value = _directive(line)
        if name not in ("syntax", "escape", "check"):
            return found, index
        found[name] = value
    return found, len(lines)


def _directive(line: str) -> tuple[str, str]:
    """(lower-cased name, value) of the directive ``line`` is written as; ("", "") if none."""
    match = _DIRECTIVE.match(line.strip())
    return ("", "") if match is None else (match.group(1).lower(), match.group(2))


def _comments(lines: list[str], commands: Any, first: int) -> dict[int, list[str]]:
    """Comment lines, keyed by the line of the instruction they stand above (or inside)."""
    starts = sorted(c.start_line for c in commands)
    inside: set[int] = set()
    within: dict[int, int] = {}  # a line inside an instruction -> the instruction's first line
    for command in commands:
        if command.heredocs:
            # A heredoc's body is text, not comments.
            inside.update(range(command.start_line + 1, command.end_line + 1))
        else:
            # A comment between continuation lines belongs to its instruction.
            within.update(
                (n, command.start_line) for n in range(command.start_line + 1, command.end_line + 1)
            )
    out: dict[int, list[str]] = {}
    pending: list[str] = []
    position = 0
    for number, line in enumerate(lines[first:], start=first + 1):
        stripped = line.strip()
        while position < len(starts) and starts[position] < number:
            position += 1
        if number in inside or not stripped.startswith("#"):
            continue
        body = stripped[1:].rstrip()
        # Keep the comment's own indentation ("#   $ make"); add the space ruff adds.
        comment = "#" + ((body if body[0].isspace() else " " + body) if body.strip() else "")
        owner = within.get(number, starts[position] if position < len(starts) else -1)
        out.setdefault(owner, []).append(comment)
    del pending
    return out

"""Reading RUN commands the way the rules need: simple commands as lists of words.

Not a shell: the script is split at ``;``, ``&&``, ``||``, ``|``, ``&``, newlines and
parentheses, and each piece into words as ``sh`` would quote them. Leading variable
assignments and wrappers (``sudo``, ``env``, ``nohup``, ...) are dropped, so
``DEBIAN_FRONTEND=noninteractive apt-get install -y gcc`` reads as ``apt-get install -y gcc``.
A script ``shlex`` cannot read (an unbalanced quote) is split at white space.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import shlex
from collections.abc import Iterator, Sequence
from typing import Final

from imagedsl.steps import Run

_SEPARATORS: Final = frozenset({";", "&&", "||", "|", "&", "(", ")", ";;", "|&"})
_WRAPPERS: Final = frozenset({"sudo", "env", "nohup", "time", "exec", "command", "nice", "xargs"})
_ASSIGNMENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_SHELLS: Final = frozenset({"sh", "bash", "dash", "ash", "zsh", "/bin/sh", "/bin/bash"})


def run_script(step: Run) -> str:
    """The RUN as one script: the shell-form string, or the exec form's ``sh -c`` script,
    or the exec-form words joined."""
    command = step.command
    if step.shell_form:
        return command[0]
    if (
        len(command) >= 3
        and command[0] in _SHELLS
        and command[1].startswith("-")
        and "c" in command[1]
    ):
        return command[2]
    return shlex.join(command)


def commands(script: str) -> list[list[str]]:
    """The simple commands of ``script``, each a list of words (redirections kept as words)."""
    text = script.replace("\\\n", " ").replace("\n", " ; ")
    try:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = ""
        words = list(lexer)
    except ValueError:
        words = text.split()
    found: list[list[str]] = []
    current: list[str] = []
    for word in words:
        if word in _SEPARATORS:
            if current:
                found.append(_unwrapped(current))
            current = []
        else:
            current.append(word)
    if current:
        found.append(_unwrapped(current))
    return [command for command in found if command]


def _unwrapped(words: list[str]) -> list[str]:
    index = 0
    while index < len(words):
        word = words[index]
        if _ASSIGNMENT.match(word):
            index += 1
        elif word in _WRAPPERS:
            index += 1
            while index < len(words) and words[index].startswith("-"):
                index += 1
        else:
            break
    return words[index:]


def program(words: Sequence[str]) -> str:
    """The command's name without its directory (``/usr/bin/apt-get`` -> ``apt-get``)."""
    return posixpath.basename(words[0]) if words else ""


def operands(words: Sequence[str]) -> list[str]:
    """The words after the program that are not options."""
    return [word for word in words[1:] if not word.startswith("-")]


def with_workdirs(
    script_commands: Sequence[Sequence[str]], workdir: str | None
) -> Iterator[tuple[Sequence[str], str | None]]:
    """Each command with the directory it runs in, following ``cd`` (None: unknown)."""
    for words in script_commands:
        if program(words) == "cd":
            target = operands(words)
            workdir = absolute(target[0], workdir) if target else "/root"
            continue
        yield words, workdir


def removed_paths(script_commands: Sequence[Sequence[str]], workdir: str | None) -> list[str]:
    """Absolute paths (or glob patterns) that ``rm`` commands delete; relative ones are
    resolved against ``workdir`` and the ``cd`` before them (skipped when unknown)."""
    found = []
    for words, directory in with_workdirs(script_commands, workdir):
        if program(words) != "rm":
            continue
        for operand in operands(words):
            resolved = absolute(operand, directory)
            if resolved is not None:
                found.append(resolved)
    return found


def absolute(path: str, workdir: str | None) -> str | None:
    """``path`` made absolute against ``workdir`` (None when that is unknown)."""
    if path.startswith("~/"):
        path = "/root/" + path[2:]
    if path.startswith("$HOME/"):
        path = "/root/" + path[6:]
    if path.startswith("/"):
        return posixpath.normpath(path)
    if workdir is None or not workdir.startswith("/") or "$" in path:
        return None
    return posixpath.normpath(posixpath.join(workdir, path))


def covers(pattern: str, path: str) -> bool:
    """Whether deleting ``pattern`` (a path or a glob) deletes ``path`` or everything in it:
    ``/var/lib/apt/lists/*`` covers ``/var/lib/apt/lists``."""
    pattern = pattern.rstrip("/") or "/"
    if pattern.endswith("/*"):
        base = pattern[:-2] or "/"
        if base == path or fnmatch.fnmatchcase(path, base):
            return True
    return path == pattern or under(path, pattern) or fnmatch.fnmatchcase(path, pattern)


def under(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or inside it."""
    directory = directory.rstrip("/")
    return path == directory or path.startswith(directory + "/") or directory == ""


def iter_options(words: Sequence[str], *names: str) -> Iterator[str]:
    """Values of ``--name VALUE``, ``--name=VALUE`` and ``-n VALUE`` options."""
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                yield words[i + 1]
            elif name.startswith("--") and word.startswith(name + "="):
                yield word[len(name) + 1 :]

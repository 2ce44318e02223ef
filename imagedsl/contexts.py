"""Build contexts: the values users touch to say which files a step reads.

A :class:`Context` is a directory and the rules that leave files out of it; its selectors
(``file``, ``dir``, ``glob``, ``select``) make the :class:`ContextSource` that a COPY, ADD or
bind mount reads. These are plain values, checked where ``build.py`` made them; hashing what
they select is the job of :mod:`imagedsl.treehash`.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import attrs

from imagedsl._ignore import IgnoreRules
from imagedsl._validate import caller_location, check_str, check_str_seq, is_template
from imagedsl.errors import ContextError, SourceLocation, StepArgumentError

SelectorKind = Literal["any", "file", "dir", "glob"]
_GLOB = re.compile(r"[*?\[]")


@attrs.frozen
class Selector:
    """One path, directory or glob selected from a context, relative to its root.

    A path holding ``$`` (``$VAR``, ``${VAR}``; ``\\$`` is a literal ``$``) is kept as written: the
    planner expands it with the stage's ARG and ENV values, as BuildKit expands COPY
    sources, and cleans it then (:meth:`ContextSource.expanded`).
    """

    path: str
    kind: SelectorKind = "any"

    @property
    def templated(self) -> bool:
        """Whether the planner still has to expand the path."""
        return is_template(self.path)


@attrs.frozen
class Context:
    """A directory of build inputs and the rules that leave files out of it.

    ``ignore`` patterns use ``.dockerignore`` syntax (``**``, ``!`` exceptions, last match
    wins); with ``dockerignore=True`` the root's ``.dockerignore`` is read first and
    ``ignore`` is applied after it.
    """

    root: str
    ignore: tuple[str, ...] = ()
    dockerignore: bool = False
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)

    def file(self, path: str) -> ContextSource:
        """Select one file (``COPY requirements.txt /app/``)."""
        return self._select("file", path)

    def dir(self, path: str) -> ContextSource:
        """Select a directory; its *contents* are copied, as ``COPY app /app/app`` does."""
        return self._select("dir", path)

    def glob(self, pattern: str) -> ContextSource:
        """Select what a Dockerfile-style glob matches (``*`` never crosses ``/``)."""
        check_str("glob", "pattern", pattern)
        if not is_template(pattern):
            glob_regex(pattern)  # refuse a malformed pattern where it was written
        selector = Selector(_clean_rel("glob", pattern), "glob")
        return ContextSource(self, (selector,), caller_location())

    def select(self, *paths: str) -> ContextSource:
        """Select several files, directories or globs at once (``COPY a.txt b/ *.cfg /dest/``:
        as in a Dockerfile, a path with ``*``, ``?`` or ``[`` is a glob)."""
        if not paths:
            raise StepArgumentError("select", "paths", "must name at least one path")
        selectors = []
        for path in paths:
            cleaned = _clean_rel("select", path)
            if is_template(cleaned):
                selectors.append(Selector(cleaned, "any"))  # a glob or not once expanded
            elif _GLOB.search(cleaned):
                glob_regex(cleaned)  # refuse a malformed pattern where it was written
                selectors.append(Selector(cleaned, "glob"))
            else:
                selectors.append(Selector(cleaned, "any"))
        return ContextSource(self, tuple(selectors), caller_location())

    def _select(self, kind: SelectorKind, path: str) -> ContextSource:
        return ContextSource(self, (Selector(_clean_rel(kind, path), kind),), caller_location())

    def as_source(self) -> ContextSource:
        """The whole context, as ``COPY . /dest`` selects it."""
        return ContextSource(self, (Selector(".", "dir"),), caller_location())

    def rules(self) -> IgnoreRules:
        """The effective ignore rules (reads ``.dockerignore`` when asked to)."""
        lines: list[str] = []
        if self.dockerignore:
            path = Path(self.root, ".dockerignore")
            try:
                lines.extend(path.read_text(encoding="utf-8").splitlines())
            except FileNotFoundError:
                raise ContextError(
                    self.root, problem="dockerignore=True but no .dockerignore"
                ) from None
        lines.extend(self.ignore)
        return IgnoreRules.from_lines(lines)


@attrs.frozen
class ContextSource:
    """Files selected from a context: what a COPY, ADD or bind mount reads."""

    context: Context
    selectors: tuple[Selector, ...]
    location: SourceLocation | None = attrs.field(default=None, eq=False, repr=False)

    def describe_paths(self) -> list[str]:
        """The selected paths as a Dockerfile would spell them."""
        return [s.path for s in self.selectors]

    @property
    def templated(self) -> bool:
        """Whether a selected path still holds variables for the planner to expand."""
        return any(s.templated for s in self.selectors)

    def expanded(self, expand: Callable[[str], str], step: str) -> ContextSource:
        """The source with every templated path expanded by ``expand`` and cleaned as a path
        written without variables would have been (a path of ``select`` that has become a
        glob is one)."""
        selectors = []
        for selector in self.selectors:
            if not selector.templated:
                selectors.append(selector)
                continue
            path = _clean_rel(step, expand(selector.path) or ".", expanded=True)
            kind = selector.kind
            if kind == "any" and _GLOB.search(path):
                kind = "glob"
            if kind == "glob":
                glob_regex(path)
            selectors.append(Selector(path, kind))
        return attrs.evolve(self, selectors=tuple(selectors))


def make_context(
    path: str | os.PathLike[str],
    *,
    ignore: Sequence[str] = (),
    dockerignore: bool = False,
    location: SourceLocation | None,
) -> Context:
    """Make a context; a relative path is taken from the directory of the calling file."""
    text = os.fspath(path)
    check_str("context", "path", text)
    patterns = check_str_seq("context", "ignore", ignore)
    IgnoreRules.from_lines(patterns)  # refuse a bad pattern at the line that wrote it
    if not isinstance(dockerignore, bool):
        raise StepArgumentError("context", "dockerignore", "must be a bool")
    base = Path.cwd()
    if location is not None and not location.file.startswith("<"):
        base = Path(location.file).resolve().parent
    root = (base / text).resolve()
    return Context(str(root), patterns, dockerignore, location)


def _clean_rel(step: str, path: object, *, expanded: bool = False) -> str:
    """A context path as selectors hold it: relative, cleaned; one that holds variables is
    kept as written until the planner has ``expanded`` it."""
    text = check_str(step, "path", path)
    if text.startswith("/"):
        text = text.lstrip("/")  # Docker reads /x in a COPY source as relative to the context
    if not expanded and is_template(text):
        return text
    cleaned = posixpath.normpath(text) if text else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise StepArgumentError(step, "path", f"leaves the build context: {path!r}")
    return cleaned


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a Go ``filepath.Match`` pattern (what COPY globs use) to a regex."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif char == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise StepArgumentError("glob", "pattern", f"has an unclosed '[': {pattern!r}")
            body = pattern[i + 1 : end]  # only ^ negates: [!a] is '!' or 'a', as in Go
            out.append(f"[{body}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def names_itself(source: ContextSource, path: str) -> bool:
    """Whether a selector of ``source`` names the context file ``path`` itself (its path, or a
    wildcard matching it), not a directory holding it: ADD unpacks only such an archive, as
    BuildKit does (an archive inside a copied directory is copied as it is)."""
    for selector in source.selectors:
        if selector.kind == "glob":
            depth = selector.path.count("/")
            if path.count("/") == depth and glob_regex(selector.path).match(path):
                return True
        elif path == selector.path.strip("/"):
            return True
    return False

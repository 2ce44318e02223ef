"""Docker ``.dockerignore`` matching, reproducing what BuildKit does with the patterns.

The rules come from ``moby/patternmatcher`` (and its ``ignorefile`` reader), as driven by
BuildKit's context transfer (``fsutil``'s filtered walk) and by ``COPY --exclude``:

* A line whose *first column* is ``#`` is a comment.  Otherwise surrounding whitespace is
  trimmed, blank lines are dropped, a leading ``!`` marks an exception (re-include), and the
  rest is cleaned like Go's ``filepath.Clean`` with one leading ``/`` removed.
* Each pattern is validated with Go ``filepath.Match``'s syntax rules, then turned into a Go
  regular expression the way patternmatcher does it: ``*`` is ``[^/]*``, ``?`` is ``[^/]``,
  ``**`` is any run of directories (zero included), ``[``/``]`` are handed to the regexp
  engine unchanged and ``\\x`` escapes ``x``.  Several quirks follow and are reproduced on
  purpose: ``[!a]`` is a class containing ``!`` (only ``^`` negates), a pattern that starts
  with ``**`` and is otherwise literal is a plain *suffix* test (``**foo`` matches ``barfoo``),
  one that ends in ``**`` after a literal is a plain *prefix* test, and a wildcard written
  inside ``[...]`` keeps its regexp expansion (which is rarely what the author meant).
* BuildKit walks the tree and evaluates each path with the match results of its parent
  directory (``MatchesUsingParentResults``): a pattern that matched a directory matches all
  of its contents.  The last matching pattern wins, with one twist copied from that code:
  a pattern that could not change the verdict at a directory (an exclude while the directory
  is already excluded, an exception while it is included) is not evaluated there, so it is
  not inherited by the contents either.  For example, with ``**/*.log`` then ``!logs``,
  ``logs/a.log`` is *excluded* by BuildKit although ``!logs`` matches its parent.

Patterns whose behaviour in Docker is an accident of Go's regexp syntax rather than a glob
(``\\`` before a letter, digit or non-ASCII character, such as ``\\d``), and patterns Go's
regexp engine would reject when first used (reversed ranges like ``[z-a]``, unknown
``[[:name:]]`` classes), raise :class:`IgnorePatternError` up front instead.  Every pattern
that is accepted matches exactly as in Docker (Linux path semantics).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, NamedTuple

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["IgnorePatternError", "IgnoreRules"]

# Go's unicode.IsSpace, which strings.TrimSpace uses (str.strip would also strip \x1c-\x1f).
_GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_BOM: Final = "\ufeff"
# Characters patternmatcher escapes before building its regexp (literal in a pattern).
_REGEX_ONLY_CHARS: Final = frozenset(".+()|{}$")
_MAX_RUNE: Final = 0x10FFFF
# Directory states kept by one IgnoreRules before its cache is reset.
_STATE_CACHE_LIMIT: Final = 1 << 16

# How patternmatcher tests a cleaned pattern against a path.
_EXACT: Final = 0  # string equality
_PREFIX: Final = 1  # literal followed by a trailing `**`
_SUFFIX: Final = 2  # leading `**` followed by a literal
_REGEXP: Final = 3  # anything with a wildcard, class or escape

# Zero or more whole directories (Go's `(.*/)?`, from `**/`); this plain spelling is the
# fastest one for Python's engine, which skips ahead to the next `/` when backtracking.
_ANY_DIRS: Final = "(?:.*/)?"

_Ranges = tuple[tuple[int, int], ...]
_POSIX_CLASSES: Final[dict[str, _Ranges]] = {
    "alnum": ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)),
    "alpha": ((0x41, 0x5A), (0x61, 0x7A)),
    "ascii": ((0x00, 0x7F),),
    "blank": ((0x09, 0x09), (0x20, 0x20)),
    "cntrl": ((0x00, 0x1F), (0x7F, 0x7F)),
    "digit": ((0x30, 0x39),),
    "graph": ((0x21, 0x7E),),
    "lower": ((0x61, 0x7A),),
    "print": ((0x20, 0x7E),),
    "punct": ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    "space": ((0x09, 0x0D), (0x20, 0x20)),
    "upper": ((0x41, 0x5A),),
    "word": ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)),
    "xdigit": ((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
}


class IgnorePatternError(ValueError):
    """A ``.dockerignore`` pattern that Docker rejects or whose meaning is not reproduced."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(pattern, reason)
        self.pattern = pattern
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid .dockerignore pattern {self.pattern!r}: {self.reason}"


class _Unsupported(Exception):
    """Internal signal carrying the reason a pattern is rejected."""


# --------------------------------------------------------------------------- line handling


def _go_clean(path: str) -> str:
    """Return ``path`` normalised like Go's ``filepath.Clean`` on a POSIX system."""
    if not path:
        return "."
    rooted = path[0] == "/"
    parts: list[str] = []
    for part in path.split("/"):
        if not part or part == ".":
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def _normalise(line: str) -> tuple[bool, str] | None:
    """Turn a trimmed line into (is_exception, pattern) like Docker does; None to skip it."""
    # ignorefile.ReadAll: split off `!`, trim again, clean, drop one leading slash.
    if not line:
        return None
    invert = line[0] == "!"
    pattern = line[1:].strip(_GO_SPACE) if invert else line
    if pattern:
        pattern = _go_clean(pattern)
        if len(pattern) > 1 and pattern[0] == "/":
            pattern = pattern[1:]
    if invert:
        pattern = "!" + pattern
    # patternmatcher.New: trim and clean the whole entry again (`!` included; cleaning may
    # have exposed whitespace, as in `./ x`), skip it if blank, then split off `!`.
    pattern = pattern.strip(_GO_SPACE)
    if not pattern:
        return None
    pattern = _go_clean(pattern)
    if pattern[0] != "!":
        return False, pattern
    if len(pattern) == 1:
        raise _Unsupported("an exception needs a pattern after '!'")
    return True, pattern[1:]


# ------------------------------------------------------------------ Go filepath.Match syntax


def _class_item_end(chunk: str, i: int) -> int:
    """Return the index after one class character at ``i``, or -1 on a syntax error."""
    n = len(chunk)
    if i >= n or chunk[i] in "-]":
        return -1
    if chunk[i] == "\\":
        i += 1
        if i >= n:
            return -1
    i += 1
    return i if i < n else -1


def _chunk_syntax_error(chunk: str) -> str | None:
    """Return why Go's ``filepath.Match`` rejects this star-free chunk, or None."""
    n = len(chunk)
    i = 0
    while i < n:
        char = chunk[i]
        if char == "[":
            i += 1
            if i < n and chunk[i] == "^":
                i += 1
            items = 0
            while not (i < n and chunk[i] == "]" and items):
                i = _class_item_end(chunk, i)
                if i >= 0 and chunk[i] == "-":
                    i = _class_item_end(chunk, i + 1)
                if i < 0:
                    return "malformed or unterminated character class"
                items += 1
            i += 1
        elif char == "\\":
            if i + 1 >= n:
                return "trailing backslash escapes nothing"
            i += 2
        else:
            i += 1
    return None


def _glob_syntax_error(pattern: str) -> str | None:
    """Return why Go's ``filepath.Match`` rejects ``pattern``, or None if it is well formed."""
    rest = pattern
    while rest:
        rest = rest.lstrip("*")
        in_class = False
        i = 0
        n = len(rest)
        while i < n:
            char = rest[i]
            if char == "\\":
                if i + 1 < n:
                    i += 1
            elif char == "[":
                in_class = True
            elif char == "]":
                in_class = False
            elif char == "*" and not in_class:
                break
            i += 1
        error = _chunk_syntax_error(rest[:i])
        if error is not None:
            return error
        rest = rest[i:]
    return None


# ------------------------------------------------------ patternmatcher's regexp construction


def _moby_regexp(pattern: str) -> tuple[int, str]:
    """Return patternmatcher's match kind for ``pattern`` and the Go regexp it would build."""
    out = ["^"]
    kind = _EXACT
    n = len(pattern)
    # Go's text/scanner silently skips a byte-order mark at the very start.
    pos = 1 if pattern.startswith(_BOM) else 0
    first = True
    while pos < n:
        char = pattern[pos]
        pos += 1
        if char == "*":
            if pos < n and pattern[pos] == "*":
                pos += 1
                if pos < n and pattern[pos] == "/":
                    pos += 1
                if pos < n:
                    out.append("(.*/)?")
                    kind = _REGEXP
                elif kind == _EXACT:
                    kind = _PREFIX
                else:
                    out.append(".*")
                    kind = _REGEXP
                if first:
                    kind = _SUFFIX
            else:
                out.append("[^/]*")
                kind = _REGEXP
        elif char == "?":
            out.append("[^/]")
            kind = _REGEXP
        elif char in _REGEX_ONLY_CHARS:
            out.append("\\" + char)
        elif char == "\\":
            if pos < n:
                out.append("\\" + pattern[pos])
                pos += 1
                kind = _REGEXP
            else:
                out.append("\\")
        elif char in "[]":
            out.append(char)
            kind = _REGEXP
        else:
            out.append(char)
        first = False
    out.append("$")
    return kind, "".join(out)


# ------------------------------------------------------ Go regexp (RE2 subset) -> Python re


class _Atom(NamedTuple):
    text: str  # Python regexp source of this atom
    literal: str | None  # the single character it matches, when it is a plain literal
    anchor: bool = False
    quantified: bool = False


def _normalise_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    result: list[tuple[int, int]] = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            result.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX_RUNE:
        result.append((nxt, _MAX_RUNE))
    return result


def _escaped_char(src: str, i: int) -> str:
    """Return the character a Go regexp escape at ``src[i]`` (a backslash) stands for."""
    if i + 1 >= len(src):
        raise _Unsupported("trailing backslash")
    char = src[i + 1]
    if char.isascii() and not char.isalnum():
        return char
    raise _Unsupported(
        f"'\\{char}' is a Go regexp escape in Docker's matcher, not a literal {char!r};"
        " escape only punctuation"
    )


def _class_char(src: str, i: int) -> tuple[int, int]:
    if i >= len(src):
        raise _Unsupported("unterminated character class")
    if src[i] == "\\":
        return ord(_escaped_char(src, i)), i + 2
    return ord(src[i]), i + 1


def _convert_class(src: str, i: int) -> tuple[str, int]:
    """Convert the Go class starting after the ``[`` at ``src[i-1]``; return (regex, end)."""
    n = len(src)
    negate = i < n and src[i] == "^"
    if negate:
        i += 1
    ranges: list[tuple[int, int]] = []
    first = True
    while i >= n or src[i] != "]" or first:
        if i >= n:
            raise _Unsupported("unterminated character class")
        first = False
        if n - i > 2 and src.startswith("[:", i):
            end = src.find(":]", i + 2)
            if end >= 0:
                name = src[i + 2 : end]
                posix = _POSIX_CLASSES.get(name.removeprefix("^"))
                if posix is None:
                    raise _Unsupported(f"unknown character class [:{name}:]")
                named = _normalise_ranges(list(posix))
                ranges.extend(_complement(named) if name.startswith("^") else named)
                i = end + 2
                continue
        lo, i = _class_char(src, i)
        hi = lo
        if n - i >= 2 and src[i] == "-" and src[i + 1] != "]":
            hi, i = _class_char(src, i + 1)
            if hi < lo:
                raise _Unsupported(f"character range {chr(lo)}-{chr(hi)} is reversed")
        ranges.append((lo, hi))
    merged = _normalise_ranges(ranges)
    if negate:
        merged = _complement(merged)
    if not merged:
        return "(?!)", i + 1
    # Write whichever of the set and its complement is shorter, e.g. `[^/]`.
    outside = _complement(merged)
    if outside and len(outside) < len(merged):
        return "[^" + _ranges_source(outside) + "]", i + 1
    return "[" + _ranges_source(merged) + "]", i + 1


def _ranges_source(ranges: list[tuple[int, int]]) -> str:
    return "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in ranges
    )


def _convert_regexp(src: str) -> tuple[str, str]:
    """Convert patternmatcher's ``^...$`` Go regexp; return (Python body, literal prefix)."""
    body = src[1:-1]  # both anchors are structural: the caller decides how to anchor
    frames: list[list[_Atom]] = [[]]
    n = len(body)
    i = 0
    while i < n:
        char = body[i]
        atoms = frames[-1]
        if char in "*?":
            if not atoms or atoms[-1].anchor or atoms[-1].quantified:
                raise _Unsupported(f"misplaced repetition {char!r}")
            atoms[-1] = _Atom(atoms[-1].text + char, None, quantified=True)
            i += 1
        elif char == "\\":
            atoms.append(_Atom(re.escape(_escaped_char(body, i)), body[i + 1]))
            i += 2
        elif char == "[":
            text, i = _convert_class(body, i + 1)
            atoms.append(_Atom(text, None))
        elif char == "(":
            frames.append([])
            i += 1
        elif char == ")":
            if len(frames) == 1:
                raise _Unsupported("unbalanced ')'")
            inner = frames.pop()
            frames[-1].append(_Atom("(?:" + "".join(a.text for a in inner) + ")", None))
            i += 1
        elif char == ".":
            atoms.append(_Atom(".", None))
            i += 1
        elif char == "^":
            atoms.append(_Atom(r"\A", None, anchor=True))
            i += 1
        elif char in "$|{}+":
            raise _Unsupported(f"unexpected regexp operator {char!r}")
        else:
            atoms.append(_Atom(re.escape(char), char))
            i += 1
    if len(frames) != 1:
        raise _Unsupported("unbalanced '('")
    literal: list[str] = []
    for atom in frames[0]:
        if atom.literal is None:
            break
        literal.append(atom.literal)
    python = "".join(atom.text for atom in frames[0])
    # Two runs of directories accept the same strings as one; collapsing avoids blowup.
    while _ANY_DIRS + _ANY_DIRS in python:
        python = python.replace(_ANY_DIRS + _ANY_DIRS, _ANY_DIRS)
    return python, "".join(literal)


# ----------------------------------------------------------------------- compiled patterns


@attrs.frozen
class _Pattern:
    """One compiled pattern."""

    exception: bool
    source: str  # cleaned pattern, without the `!`
    body: str  # Python regexp: a full match means the pattern matches that exact path
    literal: str  # every path the pattern matches starts with this
    exact: bool  # the pattern matches `literal` and nothing else

    def fullmatch(self, path: str) -> bool:
        """Return whether the pattern matches ``path`` itself (no parent-directory logic)."""
        return re.fullmatch(self.body, path) is not None


_ANY: Final = "(?s:.*)"


def _compile_line(line: str) -> _Pattern | None:
    """Compile one trimmed, non-comment line (None if Docker skips it); raise on errors."""
    try:
        if any("\ud800" <= char <= "\udfff" for char in line):
            raise _Unsupported("pattern is not valid UTF-8")
        normalised = _normalise(line)
        if normalised is None:
            return None
        exception, pattern = normalised
        error = _glob_syntax_error(pattern)
        if error is not None:
            raise _Unsupported(error)
        kind, go_regexp = _moby_regexp(pattern)
        if kind == _EXACT:
            body, literal = re.escape(pattern), pattern
        elif kind == _PREFIX:
            literal = pattern[:-2]
            body = re.escape(literal) + _ANY
        elif kind == _SUFFIX:
            suffix = pattern[2:]
            body = _ANY + re.escape(suffix)
            if suffix.startswith("/"):
                body = f"(?:{body}|{re.escape(suffix[1:])})"
            literal = ""
        else:
            body, literal = _convert_regexp(go_regexp)
        re.compile(body)
    except _Unsupported as exc:
        raise IgnorePatternError(line, str(exc)) from None
    except re.error as exc:  # pragma: no cover - a conversion bug, reported as such
        raise IgnorePatternError(line, f"internal conversion error: {exc}") from None
    return _Pattern(exception, pattern, body, literal, kind == _EXACT)


class _Matcher:
    """Compiled form of a non-empty rule list, with a cache of directory match states."""

    __slots__ = (
        "_cache",
        "_exception",
        "_exceptions",
        "_excluding",
        "_first",
        "_full",
        "_last",
        "_n",
        "any",
        "walk",
    )

    def __init__(self, patterns: tuple[_Pattern, ...]) -> None:
        bodies = [p.body for p in patterns]
        self._n = len(patterns)
        self._excluding = tuple(not p.exception for p in patterns)
        self._exceptions = tuple(
            (index, p.literal, p.exact) for index, p in enumerate(patterns) if p.exception
        )
        # Only a path that an exclude pattern matches, itself or through a parent directory,
        # can be excluded (the root never is); without exceptions, every such path is.
        # Order is free here: patterns anchored by a literal go first, as they are cheap to
        # rule out and, for paths inside excluded directories, usually the ones that match;
        # patterns led by `**/` share one scan for directory boundaries.
        anchored: list[str] = []
        after_dirs: list[str] = []
        for p in sorted(patterns, key=lambda p: not p.literal):
            if p.exception:
                continue
            if p.body.startswith(_ANY_DIRS):
                after_dirs.append(p.body.removeprefix(_ANY_DIRS))
            else:
                anchored.append(p.body)
        if after_dirs:
            anchored.append(_ANY_DIRS + "(?:" + "|".join(after_dirs) + ")")
        excluding = "(?:" + "|".join(anchored) + ")" if anchored else "(?!)"
        self.any = re.compile(r"(?!\.?\Z)" + excluding + r"(?:/|\Z)").match
        exceptions = "|".join(p.body for p in patterns if p.exception) or "(?!)"
        self._exception = re.compile(exceptions).fullmatch
        # Last pattern matching the path itself: alternatives in reverse, one group each.
        self._last = re.compile("|".join(f"({b})" for b in reversed(bodies))).fullmatch
        self._first = re.compile("|".join(f"({b})" for b in bodies)).fullmatch
        self._full = tuple(re.compile(b).fullmatch for b in bodies)
        self._cache: dict[str, tuple[int, int]] = {}
        self.walk: Callable[[str], bool] | None = self._walk if self._exceptions else None

    def _walk(self, relpath: str) -> bool:
        """Return BuildKit's verdict for a path that some pattern matches (see ``any``)."""
        top = -1
        cut = relpath.rfind("/")
        if cut > 0:
            parent = relpath[:cut]
            state = self._cache.get(parent)
            if state is None:
                state = self._state(parent)
            top = state[1]
        # Excluded unless an exception matching the path itself comes after everything else
        # that matches (with no parent match, an exclude pattern matches the path itself).
        if (top < 0 or self._excluding[top]) and self._exception(relpath) is None:
            return True
        match = self._last(relpath)
        if match is not None:
            index = self._n - match.lastindex  # type: ignore[operator]
            if index > top:
                top = index
        return top >= 0 and self._excluding[top]

    def _step(self, path: str, parent_mask: int) -> tuple[int, int]:
        """Evaluate one directory like ``MatchesUsingParentResults``: (hit mask, last hit)."""
        match = self._last(path)
        if match is None:  # only inherited matches: all of them are hits
            return parent_mask, parent_mask.bit_length() - 1
        # Patterns outside [first, limit] do not match the path itself: they hit iff inherited.
        limit = self._n - match.lastindex  # type: ignore[operator]
        first = self._first(path).lastindex - 1  # type: ignore[union-attr, operator]
        if first == limit and not parent_mask:  # one direct match, nothing inherited
            return (1 << limit, limit) if self._excluding[limit] else (0, -1)
        excluded = False
        mask = 0
        last = -1
        excluding = self._excluding
        full = self._full
        for index in range(limit + 1):
            if not parent_mask >> index & 1:
                if index < first or excluding[index] == excluded:
                    continue  # no match, or cannot change the verdict here (not evaluated)
                if index != first and index != limit and full[index](path) is None:
                    continue
            mask |= 1 << index
            last = index
            excluded = excluding[index]
        inherited_after = parent_mask >> (limit + 1) << (limit + 1)
        if inherited_after:
            return mask | inherited_after, inherited_after.bit_length() - 1
        return mask, last

    def _state(self, directory: str) -> tuple[int, int]:
        cache = self._cache
        state = cache.get(directory)
        if state is not None:
            return state
        if len(cache) >= _STATE_CACHE_LIMIT:
            cache.clear()
        pending = [directory]
        state = (0, -1)
        cut = directory.rfind("/")
        while cut > 0:
            ancestor = directory[:cut]
            known = cache.get(ancestor)
            if known is not None:
                state = known
                break
            pending.append(ancestor)
            cut = directory.rfind("/", 0, cut)
        for path in reversed(pending):
            state = self._step(path, state[0])
            cache[path] = state
        return state

    def may_include_under(self, reldir: str) -> bool:
        if self.any(reldir) is None:
            return True
        if not self._exceptions:
            return False
        last = self._state(reldir)[1]
        if last < 0 or not self._excluding[last]:
            return True
        # Below an excluded directory the verdict can only change through an exception
        # listed after the pattern that excluded it, matching some path inside it.
        prefix = reldir + "/"
        for index, literal, exact in self._exceptions:
            if index > last and (
                literal.startswith(prefix) or (not exact and prefix.startswith(literal))
            ):
                return True
        return False


def _to_patterns(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("patterns must be an iterable of lines, not a single string")
    return tuple(value)


@attrs.frozen
class IgnoreRules:
    """Parsed ``.dockerignore`` rules answering whether a context path is excluded.

    ``patterns`` holds the non-comment, non-blank lines with surrounding whitespace
    trimmed; constructing the object compiles and validates them.
    """

    patterns: tuple[str, ...] = attrs.field(default=(), converter=_to_patterns)
    _matcher: _Matcher | None = attrs.field(init=False, eq=False, repr=False)
    # Hot-path copies of the matcher's entry points (None when there are no patterns).
    _any: Callable[[str], object] | None = attrs.field(init=False, eq=False, repr=False)
    _walk: Callable[[str], bool] | None = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        compiled = [_compile_line(line.strip(_GO_SPACE)) for line in self.patterns]
        effective = tuple(pattern for pattern in compiled if pattern is not None)
        matcher = _Matcher(effective) if effective else None
        object.__setattr__(self, "_matcher", matcher)
        object.__setattr__(self, "_any", None if matcher is None else matcher.any)
        object.__setattr__(self, "_walk", None if matcher is None else matcher.walk)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> IgnoreRules:
        """Parse the lines of a ``.dockerignore`` file (a first-line BOM is ignored)."""
        patterns: list[str] = []
        for number, line in enumerate(lines):
            if number == 0:
                line = line.removeprefix(_BOM)
            if line.startswith("#"):
                continue
            stripped = line.strip(_GO_SPACE)
            if stripped:
                patterns.append(stripped)
        return cls(tuple(patterns))

    def excludes(self, relpath: str) -> bool:
        """Return True if BuildKit leaves ``relpath`` (POSIX, relative, clean) out."""
        any_match = self._any
        if any_match is None or any_match(relpath) is None:
            return False
        walk = self._walk
        return walk is None or walk(relpath)

    def may_include_under(self, reldir: str) -> bool:
        """Return False only if ``reldir`` and everything below it are excluded."""
        matcher = self._matcher
        return matcher is None or matcher.may_include_under(reldir)

    def __bool__(self) -> bool:
        return bool(self.patterns)

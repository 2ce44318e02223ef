"""Tests for the ``.dockerignore`` matcher (moby/patternmatcher as driven by BuildKit)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagedsl._ignore import IgnorePatternError, IgnoreRules, _compile_line


def _rules(*lines: str) -> IgnoreRules:
    return IgnoreRules.from_lines(lines)


# ----------------------------------------------------------------------------- line parsing


@pytest.mark.parametrize(
    ("lines", "path", "excluded"),
    [
        pytest.param(["#foo"], "#foo", False, id="hash-in-column-1-is-a-comment"),
        pytest.param(["  #foo"], "#foo", True, id="indented-hash-is-a-pattern"),
        pytest.param(["  foo \t"], "foo", True, id="surrounding-whitespace-trimmed"),
        pytest.param(["foo\r\n"], "foo", True, id="line-ending-trimmed"),
        pytest.param(["\ufefffoo"], "foo", True, id="bom-on-first-line-dropped"),
        pytest.param(["\ufeff#foo"], "#foo", False, id="bom-then-comment"),
        pytest.param(["./foo"], "foo", True, id="clean-dot-prefix"),
        pytest.param(["foo/"], "foo/bar", True, id="clean-trailing-slash"),
        pytest.param(["a//b"], "a/b", True, id="clean-double-slash"),
        pytest.param(["a/./b"], "a/b", True, id="clean-dot-component"),
        pytest.param(["a/../b"], "b", True, id="clean-dotdot"),
        pytest.param(["a/../b"], "a/b", False, id="clean-dotdot-removes-parent"),
        pytest.param(["/a/b"], "a/b", True, id="leading-slash-dropped"),
        pytest.param(["/"], "a", False, id="lone-slash-matches-nothing"),
        pytest.param(["*", "! keep"], "keep", False, id="space-after-bang-trimmed"),
        pytest.param(["*", "!/keep"], "keep", False, id="exception-leading-slash-dropped"),
        pytest.param(["*", "!./keep/"], "keep", False, id="exception-cleaned"),
        pytest.param(["./ /."], "a", False, id="pattern-cleaning-to-blank-skipped"),
        pytest.param(["a\u00a0"], "a", True, id="go-unicode-space-trimmed"),
        pytest.param(["a\x1f"], "a\x1f", True, id="ascii-unit-separator-kept"),
    ],
)
def test_line_handling(lines: list[str], path: str, excluded: bool) -> None:
    """Lines are read like Docker's ignorefile reader before matching."""
    assert IgnoreRules.from_lines(lines).excludes(path) is excluded


def test_patterns_keep_trimmed_lines() -> None:
    """The patterns field lists the non-comment, non-blank lines, trimmed but not cleaned."""
    rules = IgnoreRules.from_lines(["# comment", "", "  ./a/  ", "\t", "! b", "   # not a comment"])
    assert rules.patterns == ("./a/", "! b", "# not a comment")


def test_no_patterns() -> None:
    """An empty rule set is falsy, excludes nothing and never prunes."""
    rules = IgnoreRules.from_lines(["# only a comment", "   "])
    assert not rules
    assert rules == IgnoreRules()
    assert not rules.excludes("anything/at/all")
    assert rules.may_include_under("anything")


def test_truthy_with_patterns() -> None:
    """A rule set with a pattern is truthy."""
    assert _rules("a")


def test_value_semantics() -> None:
    """Rules compare and hash by their patterns only."""
    assert _rules("a", "!b") == IgnoreRules(("a", "!b"))
    assert hash(_rules("a", "!b")) == hash(IgnoreRules(("a", "!b")))
    assert _rules("a") != _rules("b")


def test_single_string_rejected() -> None:
    """Passing one string instead of a sequence of lines is a type error."""
    with pytest.raises(TypeError, match="iterable of lines"):
        IgnoreRules("abc")


def test_pickle_round_trip() -> None:
    """Rules survive pickling with their behaviour intact."""
    rules = pickle.loads(pickle.dumps(_rules("**/*.log", "!keep.log")))
    assert rules.excludes("a/b.log")
    assert not rules.excludes("keep.log")


# --------------------------------------------------------------------- single-pattern table


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        # `*` and `?` stay inside one path component.
        pytest.param("*", "abc", True, id="star-any-name"),
        pytest.param("*c", "abc", True, id="star-prefix"),
        pytest.param("a*", "a", True, id="star-empty"),
        pytest.param("*x", "xxx", True, id="star-backtracks"),
        pytest.param("*.py", "src/main.py", False, id="star-is-top-level-only"),
        pytest.param("a*b", "a/b", False, id="star-does-not-cross-slash"),
        pytest.param("a?b", "a/b", False, id="question-does-not-cross-slash"),
        pytest.param("a*/b", "abc/b", True, id="star-in-directory-component"),
        pytest.param("a*/b", "a/c/b", False, id="star-one-component-only"),
        pytest.param("a*b*c*d*e*/f", "axbxcxdxe/f", True, id="many-stars"),
        pytest.param("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False, id="many-stars-depth"),
        pytest.param("a*b?c*x", "abxbbxdbxebxczzx", True, id="star-question-mix"),
        pytest.param("a*b?c*x", "abxbbxdbxebxczzy", False, id="star-question-mix-miss"),
        pytest.param("abc?def", "abcZdef", True, id="question-one-char"),
        pytest.param("abc?def", "abcdef", False, id="question-not-empty"),
        pytest.param("a?b", "a\u263ab", True, id="question-one-rune"),
        pytest.param("a???b", "a\u263ab", False, id="question-per-rune-not-byte"),
        # `**` spans any number of directories, including none.
        pytest.param("**", "dir/file", True, id="doublestar-everything"),
        pytest.param("**/", "file", True, id="doublestar-slash-cleaned"),
        pytest.param("**/**", "dir/file", True, id="doublestar-twice"),
        pytest.param("**/file", "file", True, id="doublestar-start-zero-dirs"),
        pytest.param("**/file", "dir/dir/file", True, id="doublestar-start-many-dirs"),
        pytest.param("**/dir", "dir/file", True, id="doublestar-start-parent-match"),
        pytest.param("**/foo/bar", "dir/dir2/foo/bar", True, id="doublestar-start-two-parts"),
        pytest.param("**/.foo", "bar.foo", False, id="doublestar-start-needs-slash"),
        pytest.param("**/*.txt", "file.txt", True, id="doublestar-star-top-level"),
        pytest.param("**/**/*.txt", "dir/dir/file.txt", True, id="doublestar-doubled"),
        pytest.param("**/**/*.txt2", "dir/dir/file.txt", False, id="doublestar-doubled-miss"),
        pytest.param("**/file*txt", "dir/dir/file.txt", True, id="doublestar-then-star"),
        pytest.param("**/dir2/*", "dir/dir2/file", True, id="doublestar-middle-star"),
        pytest.param("**/dir2/**", "dir/dir2/dir3/file", True, id="doublestar-both-ends"),
        pytest.param("a/**/b", "a/b", True, id="doublestar-middle-zero-dirs"),
        pytest.param("a/**/b", "a/x/y/b", True, id="doublestar-middle-many-dirs"),
        pytest.param("a/**/b", "a/xb", False, id="doublestar-middle-keeps-slash"),
        pytest.param("a**/*.txt", "a/dir/dir/file.txt", True, id="doublestar-after-literal"),
        pytest.param("dir/**", "dir/dir2/file", True, id="doublestar-end"),
        pytest.param("abc/**", "abc", False, id="doublestar-end-not-the-dir-itself"),
        pytest.param("a/*.txt**", "a/file.txt", True, id="doublestar-end-after-star"),
        # Plain prefix/suffix tests patternmatcher uses for literal `x**` and `**x`.
        pytest.param("**file", "myfile", True, id="quirk-leading-doublestar-is-suffix"),
        pytest.param("**/file", "myfile", False, id="leading-doublestar-slash-whole-name"),
        pytest.param("foo**", "foobar", True, id="quirk-trailing-doublestar-is-prefix"),
        pytest.param("foo**", "foo/x", True, id="trailing-doublestar-prefix-dir"),
        # Character classes.
        pytest.param("a[b-d]e", "ace", True, id="class-range"),
        pytest.param("a[b-d]e", "aae", False, id="class-range-miss"),
        pytest.param("a[b-d]e", "ae", False, id="class-not-empty"),
        pytest.param("ab[c]", "abc", True, id="class-single"),
        pytest.param("a[^b-d]e", "aze", True, id="class-caret-negates"),
        pytest.param("ab[^c]", "abc", False, id="class-caret-negates-miss"),
        pytest.param("a[^a]b", "a\u263ab", True, id="class-negated-rune"),
        pytest.param("[a-\u03b6]*", "\u03b1", True, id="class-unicode-range"),
        pytest.param("*[a-\u03b6]", "A", False, id="class-unicode-range-miss"),
        pytest.param("[!a]", "!", True, id="quirk-bang-in-class-is-literal"),
        pytest.param("[!a]", "b", False, id="quirk-bang-does-not-negate"),
        pytest.param("[\\]a]", "]", True, id="class-escaped-bracket"),
        pytest.param("[\\-]", "-", True, id="class-escaped-dash"),
        pytest.param("[x\\-]", "z", False, id="class-escaped-dash-miss"),
        pytest.param("[\\-x]", "x", True, id="class-escaped-dash-first"),
        pytest.param("[[:digit:]]x", "5x", True, id="class-posix-name"),
        pytest.param("[[:digit:]]x", "ax", False, id="class-posix-name-miss"),
        pytest.param("[x*]", "x]", True, id="quirk-star-inside-class"),
        pytest.param("[x*]", "x", False, id="quirk-star-inside-class-miss"),
        # Escapes and characters that are special only to regular expressions.
        pytest.param("a\\*b", "a*b", True, id="escaped-star"),
        pytest.param("a\\*b", "ab", False, id="escaped-star-is-literal"),
        pytest.param("a\\\\", "a\\", True, id="escaped-backslash"),
        pytest.param("\\?", "x", False, id="escaped-question"),
        pytest.param("a\\ b", "a b", True, id="escaped-space"),
        pytest.param(".*", ".foo", True, id="dot-is-literal"),
        pytest.param(".*", "foo", False, id="dot-is-literal-miss"),
        pytest.param("abc.def", "abcZdef", False, id="dot-not-any-char"),
        pytest.param("a(b)c/def", "a(b)c/def", True, id="parens-literal"),
        pytest.param("a.|)$(}+{bc", "a.|)$(}+{bc", True, id="regex-chars-literal"),
        pytest.param(
            "dist/*.whl", "dist/p.py-2.4.0rc3.dev36+g08a-py3-none-any.whl", True, id="whl"
        ),
        pytest.param("a^b", "a^b", True, id="caret-literal-without-wildcard"),
        pytest.param("a^b*", "a^bc", False, id="quirk-caret-is-an-anchor-with-wildcard"),
        pytest.param("r\u00e9sum\u00e9*", "r\u00e9sum\u00e9.txt", True, id="non-ascii"),
        # Paths with newlines follow Go's `.` (which stops at a newline).
        pytest.param("*.txt", "a\nb.txt", True, id="newline-inside-component"),
        pytest.param("**/*.txt", "a\nb/c.txt", False, id="quirk-newline-stops-doublestar"),
        pytest.param("**/c.txt", "a\nb/c.txt", True, id="newline-suffix-form"),
        # A match on a parent directory excludes everything under it.
        pytest.param("a/b", "a/b/c/d", True, id="parent-directory-match"),
        pytest.param("a/b", "a/bc", False, id="parent-match-whole-component"),
        pytest.param("a*", "ab/c", True, id="parent-directory-wildcard"),
        pytest.param("*", "a/b", True, id="parent-directory-star"),
    ],
)
def test_single_pattern(pattern: str, path: str, excluded: bool) -> None:
    """One pattern matches the path or one of its parent directories as in Docker."""
    assert _rules(pattern).excludes(path) is excluded


@pytest.mark.parametrize("path", ["", "."], ids=["empty", "dot"])
def test_root_never_excluded(path: str) -> None:
    """The context root itself is never excluded, even by a pattern matching anything."""
    assert not _rules("*", ".", "**").excludes(path)


# ------------------------------------------------------------------- exceptions and ordering


@pytest.mark.parametrize(
    ("lines", "path", "excluded"),
    [
        pytest.param(["*.md", "!README.md"], "README.md", False, id="exception-after"),
        pytest.param(["*.md", "!README.md"], "other.md", True, id="exception-other-file"),
        pytest.param(["!README.md", "*.md"], "README.md", True, id="exception-before-loses"),
        pytest.param(
            ["*.md", "!README*.md", "README-secret.md"],
            "README-secret.md",
            True,
            id="last-match-wins-exclude",
        ),
        pytest.param(
            ["*.md", "README-secret.md", "!README*.md"],
            "README-secret.md",
            False,
            id="last-match-wins-include",
        ),
        pytest.param(["docs", "!docs/README.md"], "docs/README.md", False, id="dir-exception"),
        pytest.param(["docs", "!docs/README.md"], "docs/a.md", True, id="dir-exception-other"),
        pytest.param(["docs/", "!docs/README.md"], "docs/README.md", False, id="dir-slash"),
        pytest.param(["docs/*", "!docs/README.md"], "docs/README.md", False, id="dir-star"),
        pytest.param(["*", "!src"], "src/main.py", False, id="allowlist-directory"),
        pytest.param(["*", "!src"], "README", True, id="allowlist-rest-excluded"),
        pytest.param(
            ["**", "!util/docker/web"], "util/docker/web/foo", False, id="exception-subtree"
        ),
        pytest.param(
            ["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            True,
            id="re-excluded-after-exception",
        ),
        pytest.param(["**", "!dist/*.whl"], "dist/x.whl", False, id="exception-wildcard"),
        pytest.param(["a", "!a"], "a/b", False, id="exception-cancels-directory"),
        # BuildKit evaluates each path with its parent's results, and a pattern that cannot
        # change a directory's verdict is not evaluated there, hence not passed down.
        pytest.param(["**/*.log", "!logs"], "logs", False, id="walk-exception-dir-itself"),
        pytest.param(["**/*.log", "!logs"], "logs/a.log", True, id="quirk-walk-skipped-exception"),
        pytest.param(["a", "!a/b", "a"], "a/b", False, id="quirk-walk-skipped-exclude"),
        pytest.param(["a", "!a/b", "a"], "a/c", True, id="walk-inherited-exclude"),
    ],
)
def test_exceptions_and_order(lines: list[str], path: str, excluded: bool) -> None:
    """Exceptions re-include paths and the last matching pattern decides."""
    assert IgnoreRules.from_lines(lines).excludes(path) is excluded


# --------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize(
    ("lines", "reldir", "may_include"),
    [
        pytest.param([], "a", True, id="no-rules"),
        pytest.param(["a"], "a", False, id="excluded-no-exceptions"),
        pytest.param(["a"], "b", True, id="not-excluded"),
        pytest.param(["a"], "a/b", False, id="below-excluded"),
        pytest.param(["*"], "", True, id="root"),
        pytest.param(["a", "!a/keep"], "a", True, id="exception-inside"),
        pytest.param(["a", "!a/keep"], "a/sub", False, id="exception-in-sibling"),
        pytest.param(["a", "!b"], "a", False, id="exception-elsewhere"),
        pytest.param(["!a/keep", "a"], "a", False, id="exception-before-exclude"),
        pytest.param(["a", "!**/*.go"], "a", True, id="exception-anywhere"),
        pytest.param(["a", "!a*/x"], "a", True, id="exception-wildcard-prefix"),
        pytest.param(["a", "!b*/x"], "a", False, id="exception-incompatible-prefix"),
        pytest.param(["a", "!a/keep/**"], "a/keep", True, id="exception-prefix-kind"),
        pytest.param(["a", "!a"], "a", True, id="exception-re-includes-dir"),
        pytest.param(["*", "!src"], "lib", False, id="allowlist-prunes-others"),
        pytest.param(["*", "!src"], "src", True, id="allowlist-keeps-listed"),
        pytest.param(["node_modules", "!node_modules/k/**"], "node_modules/x", False, id="deep"),
    ],
)
def test_may_include_under(lines: list[str], reldir: str, may_include: bool) -> None:
    """Pruning is reported only where nothing below the directory can be included."""
    assert IgnoreRules.from_lines(lines).may_include_under(reldir) is may_include


# ---------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("[", id="open-bracket"),
        pytest.param("a[", id="open-bracket-after-text"),
        pytest.param("[^", id="open-negated"),
        pytest.param("[^bc", id="unterminated"),
        pytest.param("[]a]", id="empty-class"),
        pytest.param("[-]", id="lone-dash"),
        pytest.param("[x-]", id="dash-at-end"),
        pytest.param("[-x]", id="dash-at-start"),
        pytest.param("[a-b-c]", id="double-range"),
        pytest.param("*[", id="bracket-after-star"),
        pytest.param("\\", id="lone-backslash"),
        pytest.param("a\\", id="trailing-backslash"),
        pytest.param("!", id="lone-bang"),
        pytest.param("!/", id="bang-slash"),
        pytest.param("[z-a]", id="reversed-range"),
        pytest.param("[[:nope:]]", id="unknown-posix-class"),
        pytest.param("a\\d", id="regexp-escape-letter"),
        pytest.param("\\1", id="regexp-escape-digit"),
        pytest.param("\\\u00e9", id="escape-non-ascii"),
    ],
)
def test_invalid_pattern(line: str) -> None:
    """Malformed patterns, and escapes Docker hands to Go's regexp engine, are rejected."""
    with pytest.raises(IgnorePatternError) as info:
        IgnoreRules.from_lines(["ok", line])
    assert info.value.pattern == line
    assert info.value.reason
    assert isinstance(info.value, ValueError)


def test_error_message_and_pickle() -> None:
    """The error message names the pattern and reason, and the error pickles."""
    error = IgnorePatternError("a[", "malformed character class")
    assert str(error) == "invalid .dockerignore pattern 'a[': malformed character class"
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.pattern, clone.reason) == (error.pattern, error.reason)


# ------------------------------------------------------------------------------ properties


def _buildkit_excludes(rules: IgnoreRules, path: str) -> bool:
    """Reference model: BuildKit's walk calling MatchesUsingParentResults per directory."""
    compiled = [_compile_line(line) for line in rules.patterns]
    patterns = [pattern for pattern in compiled if pattern is not None]
    parts = path.split("/")
    parent: list[bool] = []
    matched = False
    for depth in range(1, len(parts) + 1):
        current = "/".join(parts[:depth])
        matched = False
        info: list[bool] = []
        for index, pattern in enumerate(patterns):
            hit = bool(parent) and parent[index]
            if not hit:
                if pattern.exception != matched:
                    info.append(False)
                    continue
                hit = pattern.fullmatch(current)
            info.append(hit)
            if hit:
                matched = not pattern.exception
        parent = info
    return matched


def _any_match_on_path_or_parents(rules: IgnoreRules, path: str) -> bool:
    """Reference model without exceptions: some pattern matches the path or a parent."""
    compiled = [_compile_line(line) for line in rules.patterns]
    parts = path.split("/")
    prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    return any(p is not None and p.fullmatch(x) for p in compiled for x in prefixes)


def _pattern_line(bang: str, slash: str, parts: list[str], trailing: str) -> str:
    return bang + slash + "/".join(parts) + trailing


_COMPONENTS = st.sampled_from(["a", "b", "ab", "x.log", "logs"])
_PATHS = st.lists(_COMPONENTS, min_size=1, max_size=4).map("/".join)
_GLOB_PARTS = st.sampled_from(["a", "b", "*", "**", "?", "[ab]", "*.log", "logs", "a*", "[!a]*"])
_PATTERNS = st.builds(
    _pattern_line,
    st.sampled_from(["", "!"]),
    st.sampled_from(["", "/"]),
    st.lists(_GLOB_PARTS, min_size=1, max_size=3),
    st.sampled_from(["", "/"]),
)


def _dirs_of(paths: list[str]) -> set[str]:
    return {path.rsplit("/", 1)[0] for path in paths if "/" in path} | set(paths)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATTERNS, max_size=5), st.lists(_PATHS, min_size=1, max_size=12))
def test_pruning_is_safe(lines: list[str], paths: list[str]) -> None:
    """If a directory may be pruned, it and every generated path below it are excluded."""
    rules = IgnoreRules.from_lines(lines)
    for reldir in _dirs_of(paths):
        if not rules.may_include_under(reldir):
            assert rules.excludes(reldir)
            below = [path for path in paths if path.startswith(reldir + "/")]
            assert all(rules.excludes(path) for path in below)


@settings(max_examples=500, deadline=None)
@given(st.lists(_PATTERNS, max_size=5), st.lists(_PATHS, min_size=1, max_size=12))
def test_matches_buildkit_walk_model(lines: list[str], paths: list[str]) -> None:
    """The fast matcher agrees with a direct model of BuildKit's per-directory evaluation."""
    rules = IgnoreRules.from_lines(lines)
    for path in sorted(_dirs_of(paths), key=len, reverse=True):  # cold cache, deep first
        assert rules.excludes(path) is _buildkit_excludes(rules, path)


@settings(max_examples=200, deadline=None)
@given(st.lists(_PATTERNS.filter(lambda p: not p.startswith("!")), max_size=5), _PATHS)
def test_without_exceptions_parent_match_excludes(lines: list[str], path: str) -> None:
    """Without exceptions a path is excluded exactly when a pattern matches it or a parent."""
    rules = IgnoreRules.from_lines(lines)
    assert rules.excludes(path) is _any_match_on_path_or_parents(rules, path)

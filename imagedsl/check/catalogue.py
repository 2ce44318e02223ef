"""The rules ``imagedsl check`` knows: stable IDs, categories, severities, one-line titles.

A leaf module (it imports nothing of imagedsl), so the DSL can refuse an unknown rule ID in
``stage.allow(...)`` at the build file's line, and the engine, the writers and the docs all
read the one list. docs/rules.md has a section per rule: why it matters and the fix.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs


class Severity(enum.IntEnum):
    """How much a finding matters; ``--fail-on`` compares against it."""

    INFO = 1
    WARNING = 2
    ERROR = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        """``"error"``, ``"warning"`` or ``"info"``."""
        return cls[text.upper()]


@attrs.frozen(kw_only=True)
class Rule:
    """One rule: ``id`` is what findings carry and ``allow(...)`` names; ``category`` groups
    rules that guard against one mistake (``cache-order`` has two rules)."""

    id: str
    category: str
    severity: Severity
    title: str

    @property
    def help_anchor(self) -> str:
        """The rule's section in docs/rules.md."""
        return f"docs/rules.md#{self.id}"


RULES: Final[dict[str, Rule]] = {
    rule.id: rule
    for rule in (
        Rule(
            id="secret-env",
            category="secret-env",
            severity=Severity.ERROR,
            title="an ENV value looks like a credential",
        ),
        Rule(
            id="secret-arg",
            category="secret-arg",
            severity=Severity.ERROR,
            title="an ARG default or --build-arg value looks like a credential",
        ),
        Rule(
            id="secret-file",
            category="secret-file",
            severity=Severity.ERROR,
            title="a context file copied into a layer holds a credential",
        ),
        Rule(
            id="cache-order",
            category="cache-order",
            severity=Severity.WARNING,
            title="a broad COPY comes before the dependency install that needs only manifests",
        ),
        Rule(
            id="cache-order-history",
            category="cache-order",
            severity=Severity.WARNING,
            title="a step that changes in most builds keeps re-running an expensive step",
        ),
        Rule(
            id="deleted-later",
            category="deleted-later",
            severity=Severity.WARNING,
            title="a RUN deletes files an earlier layer added (they still ship)",
        ),
        Rule(
            id="root-user",
            category="root-user",
            severity=Severity.WARNING,
            title="the final image runs as root",
        ),
        Rule(
            id="toolchain-in-final",
            category="toolchain-in-final",
            severity=Severity.WARNING,
            title="the final image carries a compiler or SDK",
        ),
        Rule(
            id="package-cache",
            category="package-cache",
            severity=Severity.WARNING,
            title="a package manager's cache is left in a layer",
        ),
        Rule(
            id="unpinned-base",
            category="unpinned-base",
            severity=Severity.INFO,
            title="a base image is named by tag, without a digest or lock entry",
        ),
    )
}

#: What ``allow(...)`` accepts: rule IDs and categories.
ALLOWABLE: Final = frozenset(RULES) | frozenset(rule.category for rule in RULES.values())

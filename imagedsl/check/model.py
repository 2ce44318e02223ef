"""Findings and reports: what ``imagedsl check`` says, as values and as JSON (schema 1).

A :class:`Finding` names its rule, where in the build file it is (file, line, stage, step
position) and a message that says what is wrong and what to write instead. A
:class:`CheckReport` holds a target's findings in build-file order, suppressed ones included
(marked), and decides the exit status for ``--fail-on``. SARIF is in :mod:`.sarif`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import attrs

from imagedsl.check.catalogue import RULES, Rule, Severity

CHECK_SCHEMA: Final = 1


@attrs.frozen(kw_only=True, order=False)
class Finding:
    """One problem found in a planned build, at one step."""

    rule: str
    severity: Severity
    #: What is wrong, in one line (``imagedsl plan`` shows it under the step).
    summary: str
    #: The summary, why it matters, and the fix.
    message: str
    file: str
    line: int
    stage: str
    #: The step's position in its stage (0 is the FROM), as in ``imagedsl plan``.
    step: int
    #: The step's row in the plan (``Plan.steps``), to show the finding under it.
    row: int = attrs.field(eq=False)
    #: ``allow(...)`` on the step names this rule (or its category).
    suppressed: bool = False

    @property
    def category(self) -> str:
        """The rule's category (``cache-order`` for both cache-order rules)."""
        return RULES[self.rule].category

    @property
    def definition(self) -> Rule:
        """The rule that found this."""
        return RULES[self.rule]

    def to_json(self) -> dict[str, Any]:
        """This finding in the check JSON schema (see docs/rules.md)."""
        return {
            "rule": self.rule,
            "category": self.category,
            "severity": str(self.severity),
            "message": self.message,
            "summary": self.summary,
            "file": self.file,
            "line": self.line,
            "stage": self.stage,
            "step": self.step,
            "suppressed": self.suppressed,
        }


@attrs.frozen(kw_only=True)
class CheckReport:
    """Every finding for one target, in plan order (suppressed ones too, marked as such)."""

    buildfile: str
    target: str
    findings: tuple[Finding, ...]

    @classmethod
    def of(cls, buildfile: str, target: str, findings: Iterable[Finding]) -> CheckReport:
        """A report with ``findings`` in plan order, each reported once."""
        unique = {(f.rule, f.row, f.message): f for f in findings}
        ordered = sorted(unique.values(), key=lambda f: (f.row, -f.severity, f.rule, f.message))
        return cls(buildfile=buildfile, target=target, findings=tuple(ordered))

    @property
    def active(self) -> tuple[Finding, ...]:
        """The findings not suppressed by ``allow(...)``."""
        return tuple(f for f in self.findings if not f.suppressed)

    def fails(self, threshold: Severity) -> bool:
        """Whether an active finding reaches ``threshold`` (``--fail-on``)."""
        return any(f.severity >= threshold for f in self.active)

    def counts(self) -> dict[str, int]:
        """Active findings per severity, and how many were suppressed."""
        counts = {str(s): 0 for s in sorted(Severity, reverse=True)}
        for finding in self.active:
            counts[str(finding.severity)] += 1
        counts["suppressed"] = len(self.findings) - len(self.active)
        return counts

    def to_json(self) -> dict[str, Any]:
        """``{"schema": 1, "findings": [...]}`` plus the build file, target and counts."""
        return {
            "schema": CHECK_SCHEMA,
            "buildfile": self.buildfile,
            "target": self.target,
            "findings": [finding.to_json() for finding in self.findings],
            "summary": self.counts(),
        }

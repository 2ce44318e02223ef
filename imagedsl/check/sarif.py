"""SARIF 2.1.0 for ``imagedsl check --sarif FILE``: what code-scanning services read.

One run, with imagedsl as the tool, every rule as a ``reportingDescriptor`` (its ID, title,
default level and a link to its section in docs/rules.md), and one result per finding,
located at the build file's line. Suppressed findings carry an ``inSource`` suppression, as
SARIF prescribes for suppressions written in the source (``.allow(...)``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from imagedsl import __version__
from imagedsl.check.catalogue import RULES, Severity
from imagedsl.check.model import CheckReport

SARIF_SCHEMA: Final = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVELS: Final = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_DOCS: Final = "https://github.com/imagedsl/imagedsl/blob/main/docs/rules.md"


def to_sarif(report: CheckReport, *, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The report as a SARIF log; file URIs are relative to ``root`` (default: the current
    directory) when the files are inside it."""
    base = Path(root if root is not None else Path.cwd()).resolve()
    rules = list(RULES.values())
    index = {rule.id: i for i, rule in enumerate(rules)}
    results = []
    for finding in report.findings:
        result: dict[str, Any] = {
            "ruleId": finding.rule,
            "ruleIndex": index[finding.rule],
            "level": _LEVELS[finding.severity],
            "message": {"text": finding.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": _artifact(finding.file, base),
                        "region": {"startLine": max(finding.line, 1)},
                    },
                    "logicalLocations": [
                        {"name": f"{finding.stage}[{finding.step}]", "kind": "member"}
                    ],
                }
            ],
            "properties": {"category": finding.category, "stage": finding.stage,
                           "step": finding.step},
        }  # fmt: skip
        if finding.suppressed:
            result["suppressions"] = [{"kind": "inSource", "justification": "allow(...)"}]
        results.append(result)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "imagedsl",
                        "version": __version__,
                        "informationUri": _DOCS,
                        "rules": [
                            {
                                "id": rule.id,
                                "name": rule.id,
                                "shortDescription": {"text": rule.title},
                                "helpUri": f"{_DOCS}#{rule.id}",
                                "defaultConfiguration": {"level": _LEVELS[rule.severity]},
                                "properties": {"category": rule.category},
                            }
                            for rule in rules
                        ],
                    }
                },
                "originalUriBaseIds": {"SRCROOT": {"uri": base.as_uri() + "/"}},
                "results": results,
            }
        ],
    }


def _artifact(file: str, base: Path) -> dict[str, str]:
    path = Path(file)
    try:
        return {"uri": path.resolve().relative_to(base).as_posix(), "uriBaseId": "SRCROOT"}
    except ValueError:
        return {"uri": path.resolve().as_uri()}

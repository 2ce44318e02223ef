"""``imagedsl check``: the image advice, applied to a planned build before anything runs.

Rules read the planned steps (and, for one rule, the store's history of them): secrets in
ENV/ARG values and in context files copied into layers, dependency installs placed after a
broad COPY, files deleted in a later layer, root as the final user, toolchains in the final
image, package caches left in layers, unpinned bases. :mod:`.catalogue` lists the rules,
:mod:`.model` holds findings and reports, :mod:`.engine` runs the rule families
(:mod:`.secrets`, :mod:`.layers`, :mod:`.history`, :mod:`.image`) and applies ``allow(...)``;
:mod:`.sarif` writes SARIF. Library users call :meth:`imagedsl.api.BuildSession.check`.
"""

from __future__ import annotations

from imagedsl.check.catalogue import ALLOWABLE, RULES, Rule, Severity
from imagedsl.check.model import CHECK_SCHEMA, CheckReport, Finding

__all__ = ["ALLOWABLE", "CHECK_SCHEMA", "RULES", "CheckReport", "Finding", "Rule", "Severity"]

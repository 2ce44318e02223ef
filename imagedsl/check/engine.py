"""Running the rules on a plan: every rule family, findings located and suppressed.

:func:`check_plan` is the whole of ``imagedsl check`` past planning: no daemon, no build,
nothing executed. The store, when given, memoises what was learnt of copied files and lends
the step history that ``cache-order-history`` reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final

from imagedsl.check import history, image, layers, secrets
from imagedsl.check._context import CheckContext
from imagedsl.check.model import CheckReport, Finding

if TYPE_CHECKING:
    from imagedsl.planner import Plan
    from imagedsl.store import Store

Check = Callable[[CheckContext], Iterable[Finding]]

#: Every rule, by family, in the order their findings are reported at one step.
CHECKS: Final[tuple[Check, ...]] = (*secrets.CHECKS, *layers.CHECKS, *history.CHECKS, *image.CHECKS)


def check_plan(
    plan: Plan,
    *,
    store: Store | None = None,
    build_args: Mapping[str, str] | None = None,
) -> CheckReport:
    """Every finding for ``plan``'s target (``build_args`` as given to the plan)."""
    context = CheckContext(plan=plan, store=store, build_args=dict(build_args or {}))
    findings: list[Finding] = []
    for check in CHECKS:
        findings.extend(check(context))
    context.save()
    return CheckReport.of(plan.buildfile, plan.target, findings)

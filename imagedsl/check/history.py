"""``cache-order-history``: what the store remembers of a step position says what it costs.

The store keeps, per step position, the keys recorded there (the 16 most recent), and each
record keeps when it was made and, since builds record it, how many seconds making it took.
For a RUN, each recorded key is one time it ran. When most of those runs differ from the
current one only in the step below (its parent), and that step below changed only in its own
input (the files a COPY copies, say), that step kept invalidating the RUN: the finding says
how often and what it cost, at the step that keeps changing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from imagedsl.check._context import CheckContext
from imagedsl.check.layers import broad_copy
from imagedsl.check.model import Finding
from imagedsl.graph import StepNode
from imagedsl.steps import Run
from imagedsl.store import Record, Store

#: A RUN that takes at least this long (median of its recorded runs) is worth keeping cached.
EXPENSIVE_SECONDS: Final = 5.0
#: Fewer recorded runs than this say nothing about a habit.
MIN_RUNS: Final = 3


def cache_order_history(ctx: CheckContext) -> Iterator[Finding]:
    """A step that changed in most recent builds, each time re-running an expensive RUN."""
    store = ctx.store
    if store is None:
        return
    for node, _ in ctx.runs():
        below = _layer_below(ctx, node)
        if below is None or not _may_move(below):
            continue
        runs = [r for r in (store.get(k) for k in store.history(node.locus)) if r is not None]
        if len(runs) < MIN_RUNS:
            continue
        caused = [r for r in runs if _caused_by(store, r, node, below)]
        seconds = [s for r in caused if isinstance(s := r.outputs.get("seconds"), int | float)]
        if len(caused) < MIN_RUNS or 2 * len(caused) < len(runs) or not seconds:
            continue
        median = _median(seconds)
        if median < EXPENSIVE_SECONDS:
            continue
        import datetime  # here: a warm plan, which runs this check, finds nothing to date

        since = datetime.datetime.fromtimestamp(min(r.created for r in caused), datetime.UTC)
        line = "" if node.location is None else f" (line {node.location.line})"
        yield ctx.finding(
            "cache-order-history",
            below,
            f"{ctx.instruction(below)} changed before {len(caused)} of the last {len(runs)} "
            f"recorded runs of {ctx.instruction(node)}{line} (since {since:%Y-%m-%d}), each "
            f"time re-running it: {median:.0f} s each, {sum(seconds):.0f} s in all",
            "If that RUN does not need these files, move this step after it; if it needs some "
            "of them, copy those alone before it and the rest after.",
        )


def _median(values: list[int | float]) -> float:
    """The median of ``values`` (not empty). Not ``statistics.median``: importing
    ``statistics`` (which loads ``fractions``, ``decimal`` and ``numbers``) cost every warm
    plan 10 ms."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def _layer_below(ctx: CheckContext, node: StepNode) -> StepNode | None:
    """The filesystem step ``node`` stands on (through config steps), if any."""
    parent = node.parent
    while parent is not None and ctx.nodes[parent].is_config:
        parent = ctx.nodes[parent].parent
    if parent is None:
        return None
    below = ctx.nodes[parent]
    # A COPY split into layers stands under a key of all its parts, recorded nowhere.
    return None if below.kind in ("from", "scratch") or below.part is not None else below


def _may_move(node: StepNode) -> bool:
    """Steps whose changes need not re-run what follows: RUNs, and copies of more than the
    dependency manifests (a manifest's change is a real reason to reinstall)."""
    return broad_copy(node) or isinstance(node.step, Run)


def _caused_by(store: Store, run: Record, node: StepNode, below: StepNode) -> bool:
    """Whether this recorded run of ``node`` differs from the current one only by standing
    on another version of ``below``, itself changed only in its own input."""
    if not _same_but(run.preimage, node.preimage, "parent"):
        return False
    parent = run.preimage.get("parent")
    if not isinstance(parent, str):
        return False
    record = store.get(parent)
    if record is None or record.locus != below.locus:
        return False
    return record.preimage.get("parent") == below.preimage.get("parent")


def _same_but(old: Mapping[str, Any], new: Mapping[str, Any], field: str) -> bool:
    return all(old.get(k) == new.get(k) for k in set(old) | set(new) if k != field)


CHECKS = (cache_order_history,)

"""Turning results into text for people (tabulate tables) and scripts (JSON)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from tabulate import tabulate

from .planner import Plan
from .queries import Status


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], fmt: str = "simple") -> str:
    return tabulate(list(rows), headers=list(headers), tablefmt=fmt, floatfmt=".6f",
                    intfmt=",")


def usd(value: float) -> str:
    return f"${value:,.6f}"


def status_text(st: Status, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(st.as_dict(), sort_keys=True)
    headers = ["L1", "planned", "in flight", "accepted", "failed", "remaining",
               "outcome unknown", "spend USD"]
    rows = [[r.l1, r.planned, r.in_flight, r.accepted, r.failed, r.remaining, r.outcome_unknown,
             usd(r.spend_usd)] for r in (*st.by_l1, st.total)]
    out = table(rows, headers)
    if st.total.outcome_unknown:
        out += (f"\n{st.total.outcome_unknown} attempt(s): outcome unknown (may have been billed)"
                f"; up to {usd(st.reserved_usd)} counted against the budget")
    return out


def plan_text(plan: Plan, dry_run: bool) -> str:
    by_l1: dict[str, list[int]] = {}
    for c in plan.cells:
        agg = by_l1.setdefault(c.l1, [0, 0, 0, 10**12, 0])
        agg[0] += 1
        agg[1] += c.existing
        agg[2] += c.add
        agg[3] = min(agg[3], c.total)
        agg[4] = max(agg[4], c.total)
    rows = [[l1, a[0], a[1], a[2], a[1] + a[2], f"{a[3]}-{a[4]}"] for l1, a in by_l1.items()]
    totals = [sum(r[i] for r in rows) for i in (1, 2, 3, 4)]
    rows.append(["all", *totals, ""])
    verb = "would add" if dry_run else "added"
    head = (f"target {plan.target}: {plan.existing_in_scope} in the ledger, {verb} "
            f"{plan.to_add}")
    if plan.existing_in_scope > plan.target:
        head += " (the ledger already holds more than the target; nothing is removed)"
    return head + "\n" + table(rows, ["L1", "cells", "existing", "add", "total",
                                      "jobs per cell"])

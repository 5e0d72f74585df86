"""Catalog -> planned jobs: balanced, deterministic and idempotent.

A job's identity is its natural key (L1, pattern, sentence pair, level, variant), hashed into
`job_id`. Within a cell (one L1 x pattern) jobs are enumerated in a fixed order: every sentence
pair once before any repeats, levels rotating so they split evenly, then variants (a new topic and
persona for the same pair and level). Planning to a target tops the ledger up to exactly that many
jobs in scope, filling the emptiest cells first (ties going round the L1s, so no L1 gets the
leftovers of a target that does not divide evenly), so planning twice adds nothing and planning
1,000 then 1,200 adds the 200 that a plan of 1,200 would have had.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .bulk import gc_paused
from .catalog import Catalog, L1, Pattern
from .errors import UsageError
from .records import PlannedJob

if TYPE_CHECKING:
    from .db import Ledger


@dataclass(frozen=True)
class CellPlan:
    l1: str
    pattern: str
    existing: int
    add: int
    capacity: int

    @property
    def total(self) -> int:
        return self.existing + self.add


@dataclass(frozen=True)
class Plan:
    target: int
    existing_in_scope: int
    cells: tuple[CellPlan, ...]
    jobs: tuple[PlannedJob, ...]

    @property
    def to_add(self) -> int:
        return sum(c.add for c in self.cells)


def _key_prefix(l1: str, pattern: str, erroneous: str, correct: str, level: str) -> str:
    return "\x1f".join((l1, pattern, erroneous, correct, level, ""))


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def job_id_for(l1: str, pattern: str, erroneous: str, correct: str, level: str,
               variant: int) -> str:
    return _hash_key(_key_prefix(l1, pattern, erroneous, correct, level) + str(variant))


def select_scope(catalog: Catalog, l1s: Sequence[str] | None, patterns: Sequence[str] | None,
                 levels: Sequence[str] | None) -> tuple[list[tuple[L1, Pattern]], tuple[str, ...]]:
    """The cells and levels a plan covers; unknown names are a UsageError that lists known ones."""
    chosen_levels = tuple(catalog.levels)
    if levels:
        wanted = [lv.strip().lower() for lv in levels if lv.strip()]
        unknown = [lv for lv in wanted if lv not in catalog.levels]
        if unknown:
            raise UsageError(f"unknown level {unknown[0]!r}; choose from "
                             f"{', '.join(catalog.levels)}")
        chosen_levels = tuple(lv for lv in catalog.levels if lv in wanted)
    l1_objs = [catalog.l1(x) for x in l1s] if l1s else list(catalog.l1s)
    wanted_patterns = {p.strip().lower() for p in patterns} if patterns else None
    cells = [(l1, p) for l1 in l1_objs for p in l1.patterns
             if wanted_patterns is None or p.id in wanted_patterns]
    if wanted_patterns:
        known = {p.id for l1 in l1_objs for p in l1.patterns}
        missing = sorted(wanted_patterns - known)
        if missing:
            raise UsageError(f"unknown pattern {missing[0]!r} for the chosen L1s; see "
                             "`python cli.py catalog` for the pattern ids")
    if not cells:
        raise UsageError("the chosen --l1/--patterns/--levels select no catalog cell")
    return cells, chosen_levels


def _cell_levels(pattern: Pattern, levels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(lv for lv in levels if lv in pattern.levels)


def cell_capacity(catalog: Catalog, pattern: Pattern, levels: tuple[str, ...]) -> int:
    return (len(pattern.pairs) * len(_cell_levels(pattern, levels)) * len(catalog.topics)
            * len(catalog.personas))


def enumerate_cell(catalog: Catalog, l1: L1, pattern: Pattern,
                   levels: tuple[str, ...]) -> Iterator[PlannedJob]:
    """The cell's jobs in plan order (see the module docstring)."""
    lvls = _cell_levels(pattern, levels)
    pairs, topics, personas = pattern.pairs, catalog.topics, catalog.personas
    n_pairs, n_levels, n_topics, n_personas = len(pairs), len(lvls), len(topics), len(personas)
    # The (pair, level) sequence is the same in every variant: worked out once per cell.
    slots = []
    for j in range(n_pairs * n_levels):
        p_idx, turn = j % n_pairs, j // n_pairs
        lvl_idx = (p_idx + turn) % n_levels
        pair, level = pairs[p_idx], lvls[lvl_idx]
        slots.append((p_idx, lvl_idx, pair.erroneous, pair.correct, level,
                      _key_prefix(l1.id, pattern.id, pair.erroneous, pair.correct, level)))
    for variant in range(n_topics * n_personas):
        for p_idx, lvl_idx, erroneous, correct, level, key in slots:
            # For a fixed pair and level, variant -> (topic, persona) is one-to-one.
            yield PlannedJob(_hash_key(key + str(variant)), l1.id, pattern.id, erroneous, correct,
                             level, variant, topics[(variant + p_idx) % n_topics],
                             personas[(variant // n_topics + lvl_idx) % n_personas])


def interleave(new_by_cell: Sequence[Sequence[PlannedJob]],
               existing: Sequence[int]) -> list[PlannedJob]:
    """Plan order across cells: a cell's k-th new job goes at fill level existing + k, and the
    plan takes every cell's jobs at one level before any at the next. Runs claim jobs in plan
    order, so a run stopped early (credit, budget, Ctrl-C) leaves every cell as evenly
    covered as the whole plan would, not the first cells full and the rest empty."""
    adding = [(jobs, e) for jobs, e in zip(new_by_cell, existing) if jobs]
    if not adding:
        return []
    base = min(e for _jobs, e in adding)
    fills: list[list[PlannedJob]] = [[] for _ in range(
        max(e + len(jobs) for jobs, e in adding) - base)]
    for jobs, e in adding:
        for fill, job in enumerate(jobs, e - base):
            fills[fill].append(job)
    return [job for same_fill in fills for job in same_fill]


def water_fill(existing: Sequence[int], add: int,
               tie_order: Sequence[int] | None = None) -> list[int]:
    """Spread `add` new jobs so the emptiest cells fill first; ties go to the cells that come
    first in `tie_order` (cell indexes; default: earlier cells first)."""
    if add <= 0:
        return [0] * len(existing)
    lo, hi = min(existing), max(existing) + add
    while lo < hi:  # the highest level h whose fill fits within `add`
        mid = (lo + hi + 1) // 2
        if sum(max(0, mid - e) for e in existing) <= add:
            lo = mid
        else:
            hi = mid - 1
    extra = [max(0, lo - e) for e in existing]
    left = add - sum(extra)
    for i in (tie_order if tie_order is not None else range(len(existing))):
        if left == 0:
            break
        if existing[i] + extra[i] == lo:
            extra[i] += 1
            left -= 1
    return extra


def across_l1s(cells: Sequence[tuple[L1, Pattern]]) -> list[int]:
    """Cell indexes taking each L1's first cell, then each L1's second, and so on: the jobs
    left over after every cell has its share go one L1 after another, not all to the first
    L1's cells (a plan of 60 over 4 x 12 cells gave Spanish 24 jobs and every other L1 12)."""
    rank: dict[str, int] = {}
    keyed = []
    for index, (l1, _pattern) in enumerate(cells):
        nth = rank.get(l1.id, 0)
        rank[l1.id] = nth + 1
        keyed.append((nth, index))
    return [index for _nth, index in sorted(keyed)]


def make_plan(catalog: Catalog, target: int, cells: Sequence[tuple[L1, Pattern]],
              levels: tuple[str, ...], existing_ids: Mapping[tuple[str, str], set[str]],
              existing_outside_cells: int = 0) -> Plan:
    """Jobs to add so the scope holds `target` jobs. `existing_ids` maps (l1, pattern) to the
    job ids already in the ledger for that cell; `existing_outside_cells` counts jobs in scope
    that match no catalog cell (e.g. imported with an unknown pattern)."""
    if target < 0:
        raise UsageError("--target must be zero or more")
    existing = [len(existing_ids.get((l1.id, p.id), ())) for l1, p in cells]
    in_scope = sum(existing) + existing_outside_cells
    order = across_l1s(cells)
    adds = water_fill(existing, target - in_scope, order)
    capacities = [cell_capacity(catalog, p, levels) for _l1, p in cells]
    for (l1, p), e, a, cap in zip(cells, existing, adds, capacities):
        if e + a > cap:
            total_cap = sum(capacities)
            raise UsageError(
                f"the catalog has room for {total_cap} distinct jobs in this scope "
                f"({l1.id}/{p.id} holds at most {cap}); lower --target or add sentence pairs, "
                "topics or personas to the catalog")
    new_by_cell: list[list[PlannedJob]] = []
    plans = []
    for (l1, p), e, a, cap in zip(cells, existing, adds, capacities):
        plans.append(CellPlan(l1=l1.id, pattern=p.id, existing=e, add=a, capacity=cap))
        have = existing_ids.get((l1.id, p.id), ())
        cell_jobs: list[PlannedJob] = []
        if a:
            for job in enumerate_cell(catalog, l1, p, levels):
                if job.job_id not in have:
                    cell_jobs.append(job)
                    if len(cell_jobs) == a:
                        break
        new_by_cell.append(cell_jobs)
    # Within a fill level the cells keep catalog order (an L1's cells together). Dealing the
    # L1s in turn there too would balance a part-way stop over the L1s to within one job, but
    # it made a 1,000,000-job plan 20% slower (21-24 s against 25-28 s, interleaved): SQLite
    # ran the jobs table's append-only trigger 1.5-2x slower on rows whose L1 alternated.
    return Plan(target=target, existing_in_scope=in_scope, cells=tuple(plans),
                jobs=tuple(interleave(new_by_cell, existing)))


def plan_ledger(ledger: Ledger, catalog: Catalog, target: int, *,
                l1s: Sequence[str] | None = None, patterns: Sequence[str] | None = None,
                levels: Sequence[str] | None = None, dry_run: bool = False) -> Plan:
    """Top the ledger up to `target` jobs in scope; with dry_run, only compute the allocation."""
    from . import queries
    from .store import Store

    cells, chosen_levels = select_scope(catalog, l1s, patterns, levels)
    scope_l1s = sorted({l1.id for l1, _p in cells}) if l1s else None
    existing = queries.existing_jobs_by_cell(ledger, scope_l1s, chosen_levels)
    cell_keys = {(l1.id, p.id) for l1, p in cells}
    # Jobs that match no catalog cell (imports of unknown patterns) still count toward a plan of
    # the whole catalog, so that "plan to 1,000" means 1,000 in the ledger.
    outside = 0
    if not l1s and not patterns:
        outside = sum(len(ids) for key, ids in existing.items() if key not in cell_keys)
    with gc_paused():
        plan = make_plan(catalog, target, cells, chosen_levels, existing, outside)
        if not dry_run and plan.jobs:
            store = Store(ledger)
            try:
                store.plan_jobs(plan.jobs)
            finally:
                store.close()
    return plan

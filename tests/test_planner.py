"""Planning: balanced over cells and levels, idempotent, narrowed by options, atomic."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import run_cli
from ledger import queries
from ledger.catalog import load_catalog
from ledger.errors import UsageError
from ledger.planner import make_plan, plan_ledger, select_scope, water_fill


def _jobs(ledger):  # type: ignore[no-untyped-def]
    with ledger.engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT job_id, l1, pattern, erroneous, correct, level, variant, topic, persona "
            "FROM jobs").all()


def test_plan_1000_twice_then_1200(ledger):
    catalog = load_catalog()
    plan_ledger(ledger, catalog, 1000)
    plan_ledger(ledger, catalog, 1000)
    assert queries.status(ledger).total.planned == 1000
    plan_ledger(ledger, catalog, 1200)
    rows = _jobs(ledger)
    assert len(rows) == 1200
    assert len({r[0] for r in rows}) == 1200
    assert len({tuple(r[1:7]) for r in rows}) == 1200, "natural keys must be distinct"
    cells = Counter((r[1], r[2]) for r in rows)
    assert set(cells) == {(l1.id, p.id) for l1, p in catalog.cells()}
    assert max(cells.values()) - min(cells.values()) <= 1


def test_1000_then_1200_equals_1200_at_once(tmp_path):
    from ledger.db import open_ledger

    catalog = load_catalog()
    a, b = open_ledger(str(tmp_path / "a.db")), open_ledger(str(tmp_path / "b.db"))
    plan_ledger(a, catalog, 1000)
    plan_ledger(a, catalog, 1200)
    plan_ledger(b, catalog, 1200)
    assert sorted(_jobs(a)) == sorted(_jobs(b))
    a.dispose()
    b.dispose()


def test_every_cell_before_any_cell_gets_a_second_job(ledger):
    catalog = load_catalog()
    plan_ledger(ledger, catalog, 47)
    cells = Counter((r[1], r[2]) for r in _jobs(ledger))
    assert len(cells) == 47 and set(cells.values()) == {1}


def _cells_in_plan_order(ledger):  # type: ignore[no-untyped-def]
    with ledger.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(
            "SELECT l1, pattern FROM job_state ORDER BY seq")]


def _assert_every_prefix_balanced(cells, start):  # type: ignore[no-untyped-def]
    counts = Counter(start)
    for i, cell in enumerate(cells):
        counts[cell] += 1
        assert max(counts.values()) - min(counts.values()) <= 1, (
            f"after {i + 1} jobs in plan order the cells are uneven: {counts.most_common(1)} "
            f"against {min(counts.values())}")


def test_a_run_stopped_anywhere_has_covered_every_cell_evenly(ledger):
    """Runs claim jobs in plan order, so every prefix of the plan must be as balanced as the
    whole: credit running out at job 491 of 1,000 leaves all 48 cells at 10 or 11."""
    catalog = load_catalog()
    plan_ledger(ledger, catalog, 1000)
    first = _cells_in_plan_order(ledger)
    _assert_every_prefix_balanced(first, {c: 0 for c in first})
    assert len(set(first[:491])) == 48
    plan_ledger(ledger, catalog, 1200)  # a top-up keeps the order balanced as it goes
    both = _cells_in_plan_order(ledger)
    assert both[:1000] == first
    _assert_every_prefix_balanced(both[1000:], Counter(first))


def test_interleave_orders_new_jobs_by_the_fill_level_they_bring_their_cell_to():
    from ledger.planner import interleave
    from ledger.records import PlannedJob

    def jobs(cell, n):  # type: ignore[no-untyped-def]
        return [PlannedJob(f"{cell}{i}", cell, "p", "e", "c", "beginner", i, "t", "p")
                for i in range(1, n + 1)]

    # Cells a..d hold 5, a million, 6 and 4 jobs; b gets none and must not matter.
    order = interleave([jobs("a", 2), [], jobs("c", 1), jobs("d", 3)], [5, 10**6, 6, 4])
    assert [j.job_id for j in order] == ["d1", "a1", "d2", "a2", "c1", "d3"]
    assert interleave([], []) == [] and interleave([[]], [3]) == []


def test_levels_split_evenly_and_pairs_used_before_repeating(ledger):
    catalog = load_catalog()
    cells = len(catalog.cells())
    pairs = min(len(p.pairs) for _l1, p in catalog.cells())
    plan_ledger(ledger, catalog, cells * pairs)
    rows = _jobs(ledger)
    levels = Counter(r[5] for r in rows)
    assert max(levels.values()) - min(levels.values()) <= cells
    by_cell: dict = {}
    for r in rows:
        by_cell.setdefault((r[1], r[2]), []).append((r[3], r[4]))
    for cell_pairs in by_cell.values():
        assert len(set(cell_pairs)) == len(cell_pairs), "a pair repeated before all were used"


def test_beyond_pairs_times_levels_jobs_are_variants_not_duplicates(ledger):
    catalog = load_catalog()
    l1, pattern = catalog.cells()[0]
    n = len(pattern.pairs) * len(catalog.levels) + 5
    plan_ledger(ledger, catalog, n, l1s=[l1.id], patterns=[pattern.id])
    rows = _jobs(ledger)
    assert len(rows) == n
    assert {r[6] for r in rows} == {0, 1}
    combos = Counter((r[3], r[5]) for r in rows)
    assert max(combos.values()) == 2
    # A variant brings a different topic or persona for the same pair and level.
    seen = {}
    for r in rows:
        seen.setdefault((r[3], r[5]), set()).add((r[7], r[8]))
    assert all(len(v) == combos[k] for k, v in seen.items())


def test_narrowing_by_l1_pattern_and_level(ledger):
    catalog = load_catalog()
    plan = plan_ledger(ledger, catalog, 30, l1s=["Korean"], levels=["beginner", "advanced"])
    rows = _jobs(ledger)
    assert plan.to_add == 30 == len(rows)
    assert {r[1] for r in rows} == {"korean"}
    assert {r[5] for r in rows} <= {"beginner", "advanced"}
    plan_ledger(ledger, catalog, 5, l1s=["spanish"], patterns=["negation_error"])
    assert sum(1 for r in _jobs(ledger) if r[2] == "negation_error" and r[1] == "spanish") == 5


def test_unknown_names_are_usage_errors(ledger):
    catalog = load_catalog()
    with pytest.raises(UsageError, match="klingon"):
        select_scope(catalog, ["klingon"], None, None)
    with pytest.raises(UsageError, match="no_such_pattern"):
        select_scope(catalog, None, ["no_such_pattern"], None)
    with pytest.raises(UsageError, match="expert"):
        select_scope(catalog, None, None, ["expert"])


def test_water_fill_fills_emptiest_cells_first():
    assert water_fill([0, 0, 0], 4) == [2, 1, 1]
    assert water_fill([5, 0, 2], 4) == [0, 3, 1]
    assert water_fill([3, 3], 0) == [0, 0]
    assert sum(water_fill([7, 1, 0, 4], 100)) == 100


def test_a_target_beyond_the_catalog_is_refused_and_nothing_written(ledger):
    catalog = load_catalog()
    cells, levels = select_scope(catalog, ["spanish"], ["negation_error"], None)
    with pytest.raises(UsageError, match="room for"):
        make_plan(catalog, 10**7, cells, levels, {})
    with pytest.raises(UsageError):
        plan_ledger(ledger, catalog, 10**7, l1s=["spanish"])
    assert queries.status(ledger).total.planned == 0


def test_dry_run_prints_the_allocation_and_writes_nothing(tmp_path):
    db = tmp_path / "l.db"
    out = run_cli("plan", "--target", "100", "--dry-run", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "would add 100" in out.stdout and "korean" in out.stdout
    status = run_cli("status", "--format", "json", "--db", str(db))
    assert json.loads(status.stdout)["planned"] == 0


def test_cli_plan_and_status(tmp_path):
    db = tmp_path / "l.db"
    assert run_cli("plan", "--target", "96", "--db", str(db)).returncode == 0
    again = run_cli("plan", "--target", "96", "--db", str(db))
    assert "added 0" in again.stdout
    data = json.loads(run_cli("status", "--format", "json", "--db", str(db)).stdout)
    assert data["planned"] == 96 and data["remaining"] == 96 and data["accepted"] == 0
    assert data["spend_usd"] == 0.0
    assert set(data["by_l1"]) == {"spanish", "arabic", "chinese", "korean"}
    table = run_cli("status", "--db", str(db)).stdout
    assert "remaining" in table and "spend USD" in table


def test_ledger_db_environment_variable_is_honoured(tmp_path):
    db = tmp_path / "env.db"
    out = run_cli("plan", "--target", "10", env={"LEDGER_DB": str(db)})
    assert out.returncode == 0, out.stderr
    assert db.exists()


def test_jobs_left_over_after_every_cell_has_its_share_go_round_the_l1s():
    """60 jobs over 4 L1s x 12 patterns: one per cell, then 12 more. They went to the first
    L1's 12 cells (Spanish 24, every other L1 12); now each L1 gets 3."""
    catalog = load_catalog()
    cells, levels = select_scope(catalog, None, None, None)
    assert len({l1.id for l1, _p in cells}) == 4 and len(cells) == 48
    plan = make_plan(catalog, 60, cells, levels, {})
    assert set(Counter(j.l1 for j in plan.jobs).values()) == {15}
    assert sorted(Counter((c.l1, c.pattern) for c in plan.cells if c.add).values()) == [1] * 48
    assert sorted(c.add for c in plan.cells) == [1] * 36 + [2] * 12


"""The ledger's contract, written once and run on every backend (SQLite file, PostgreSQL).

Everything goes through the public Store, queries and planner APIs, or through a plain
connection as an operator's shell would open one; each test asserts the same thing on both.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

pytest.register_assert_rewrite("backends", "pg_server")

from alembic.autogenerate import compare_metadata  # noqa: E402
from alembic.migration import MigrationContext  # noqa: E402
from sqlalchemy.exc import DBAPIError, IntegrityError  # noqa: E402

from backends import expected_triggers  # noqa: E402
from conftest import ROOT, make_jobs, run_cli  # noqa: E402
from ledger import queries, schema  # noqa: E402
from ledger.catalog import load_catalog  # noqa: E402
from ledger.db import Ledger, head_revision  # noqa: E402
from ledger.planner import plan_ledger  # noqa: E402
from ledger.records import OutcomeRecord, PriceRecord, VerdictRecord  # noqa: E402
from ledger.store import Store  # noqa: E402
from ledger.tx import chain_hash, event_columns  # noqa: E402

pytest_plugins = ("backends",)

EVENT_TABLE_NAMES = [t.name for t in schema.EVENT_TABLES]
VERDICT = VerdictRecord("f1", True, (), 4, 2, True, {"turns": 4}, "[]")
REJECTED = VerdictRecord("f1", False, ("no_question", "said_wrong"), 2, 0, False, {}, "[]")


def _filled(store: Store) -> None:
    """At least one row in every event table, including costs that are not exact in binary."""
    store.plan_jobs(make_jobs(4))
    store.start_run("run-a", "host", 1, "p1", "f1", {"models": ["m"]})
    now = time.time()
    jobs = store.claim("run-a", 4, now, 60)
    a = store.begin_attempt(jobs[0].job_id, "run-a", "m", 0, "p1", 200, 0.01, None, now, 60)
    store.finish_attempt(a.attempt_id, jobs[0].job_id, "run-a",
                         OutcomeRecord("ok", 0.1 + 0.2, "response", http_status=200,
                                       model_served="m", prompt_tokens=120,
                                       completion_tokens=300, latency_ms=12.5, content="x"),
                         VERDICT, accept=True)
    b = store.begin_attempt(jobs[1].job_id, "run-a", "m", 0, "p1", 200, 0.01, None, now, 60)
    store.finish_attempt(b.attempt_id, jobs[1].job_id, "run-a",
                         OutcomeRecord("server_error", 0.0, "none", http_status=502,
                                       retry_after_s=1 / 3),
                         fail_reasons=["m: server_error x3"])
    c = store.begin_attempt(jobs[2].job_id, "run-a", "m", 0, "p1", 200, 0.01, None, now, 60)
    store.finish_attempt(c.attempt_id, jobs[2].job_id, "run-a",
                         OutcomeRecord("ok", 1e-7 * 3, "response", http_status=200, content="y"),
                         REJECTED)
    store.reopen_failed("run-a")
    store.record_prices([PriceRecord("m", 1e-7, 4e-7, "config")])
    store.stop_run("run-a", "done", 0, None, "no open job left")
    with store.transaction() as tx:
        tx.append(schema.imports, (tx.allocate_id(), "x.jsonl", "0" * 64, 1, 1, 0, "t"))


def _chain_rows(ledger: Ledger) -> list[tuple[int, str, str, list[object]]]:
    rows = []
    with ledger.engine.connect() as conn:
        for t in schema.EVENT_TABLES:
            cols = event_columns(t)
            for r in conn.exec_driver_sql(f"SELECT seq, row_hash, {', '.join(cols)} "
                                          f"FROM {t.name}"):
                rows.append((r[0], r[1], t.name, list(r[2:])))
    return sorted(rows)


def _assert_chain_links(ledger: Ledger) -> int:
    """Gapless seq, every hash recomputed from the stored values, head = last event."""
    rows = _chain_rows(ledger)
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    prev = schema.GENESIS_HASH
    for seq, row_hash, table, values in rows:
        prev = chain_hash(prev, table, seq, values)
        assert prev == row_hash, f"seq {seq} in {table}"
    with ledger.engine.connect() as conn:
        head = conn.exec_driver_sql("SELECT head_seq, head_hash FROM ledger_totals").one()
    assert tuple(head) == (rows[-1][0], rows[-1][1])
    return len(rows)


@pytest.fixture
def store(ledger_on: Ledger):  # type: ignore[no-untyped-def]
    st = Store(ledger_on)
    yield st
    st.close()


# --- planning ---------------------------------------------------------------------------------

def test_planning_is_idempotent(ledger_on):
    catalog = load_catalog(None)
    first = plan_ledger(ledger_on, catalog, 30)
    assert first.to_add == 30
    assert plan_ledger(ledger_on, catalog, 30).to_add == 0
    assert plan_ledger(ledger_on, catalog, 40).to_add == 10
    assert queries.status(ledger_on).total.planned == 40
    store = Store(ledger_on)
    try:
        assert store.plan_jobs(first.jobs) == 0  # the same jobs again: nothing new
    finally:
        store.close()
    assert queries.status(ledger_on).head_seq == 40


# --- append-only --------------------------------------------------------------------------------

def test_event_tables_reject_update_delete_and_truncate_from_a_plain_connection(backend, store):
    _filled(store)
    engine = backend.raw_engine()
    try:
        for table in EVENT_TABLE_NAMES:
            for statement in (f"UPDATE {table} SET row_hash = 'x'", f"DELETE FROM {table}",
                              backend.truncate_sql(table)):
                with engine.connect() as conn:
                    assert conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar() >= 1
                    with pytest.raises(DBAPIError, match="append-only"):
                        conn.exec_driver_sql(statement)
                    conn.rollback()
    finally:
        engine.dispose()
    assert _assert_chain_links(store.ledger) > len(EVENT_TABLE_NAMES)


def test_one_acceptance_per_job(store, ledger_on):
    _filled(store)
    with ledger_on.engine.connect() as conn:
        job_id, attempt_id, verdict_id = conn.exec_driver_sql(
            "SELECT job_id, attempt_id, verdict_id FROM acceptances").one()
    with pytest.raises(IntegrityError):
        with store.transaction() as tx:
            tx.append(schema.acceptances, (job_id, attempt_id + 1, verdict_id, "t"))
    # The store's own path declines quietly: a second passing response stays a spare.
    start = store.begin_attempt(job_id, "run-z", "m", 0, "p1", 200, 0.0, None, time.time(), 60)
    assert start.refused == "done"
    with ledger_on.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM acceptances").scalar() == 1


def test_attempt_numbers_are_unique_per_job(store, ledger_on):
    store.plan_jobs(make_jobs(1))
    job_id = make_jobs(1)[0].job_id
    with pytest.raises(IntegrityError):
        with store.transaction() as tx:
            for attempt_id in (900, 901):
                tx.append(schema.attempts, (attempt_id, job_id, 1, None, "m", 0, "p1", 200, 0.0,
                                            "t"))
    with ledger_on.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM attempts").scalar() == 0
    assert store.plan_jobs(make_jobs(2)) == 1  # the store recovers from the failed transaction


def test_the_hash_chain_links_every_event_and_survives_the_round_trip(store, ledger_on):
    _filled(store)
    n = _assert_chain_links(ledger_on)
    assert n == queries.status(ledger_on).head_seq
    # A cost that is not exact in binary reads back bit-for-bit (it is hashed).
    with ledger_on.engine.connect() as conn:
        costs = {r[0] for r in conn.exec_driver_sql("SELECT cost_usd FROM attempt_outcomes")}
    assert 0.1 + 0.2 in costs and 1e-7 * 3 in costs


# --- claims, leases, budget ------------------------------------------------------------------

def test_claims_from_two_engines_never_overlap_and_expired_leases_come_back(backend, store):
    store.plan_jobs(make_jobs(5))
    other_ledger = backend.open()
    other = Store(other_ledger)
    try:
        now = time.time()
        a = store.claim("run-a", 3, now, 10)
        b = other.claim("run-b", 3, now, 10)
        assert len(a) == 3 and len(b) == 2
        assert not {j.job_id for j in a} & {j.job_id for j in b}
        assert other.claim("run-c", 3, now + 5, 10) == []
        later = other.claim("run-c", 10, now + 11, 10)
        assert len(later) == 5
        # The old owner's lease moved on: it may not start an attempt on the job.
        refused = store.begin_attempt(a[0].job_id, "run-a", "m", 0, "p1", 200, 0.0, None,
                                      now + 12, 10)
        assert refused.refused == "lease_lost"
    finally:
        other.close()
        other_ledger.dispose()


def test_budget_refusal_counts_open_attempts_at_their_maximum(store):
    store.plan_jobs(make_jobs(3))
    store.start_run("r", "h", 1, "p1", "f1", {})
    now = time.time()
    jobs = store.claim("r", 3, now, 60)
    first = store.begin_attempt(jobs[0].job_id, "r", "m", 0, "p1", 200, 0.4, 1.0, now, 60)
    second = store.begin_attempt(jobs[1].job_id, "r", "m", 0, "p1", 200, 0.4, 1.0, now, 60)
    third = store.begin_attempt(jobs[2].job_id, "r", "m", 0, "p1", 200, 0.4, 1.0, now, 60)
    assert first.attempt_id and second.attempt_id
    assert third.refused == "budget"
    store.finish_attempt(first.attempt_id, jobs[0].job_id, "r",
                         OutcomeRecord("ok", 0.05, "response"))
    again = store.begin_attempt(jobs[2].job_id, "r", "m", 0, "p1", 200, 0.4, 1.0, now, 60)
    assert again.attempt_id is not None
    spend, reserved = queries.spend_and_reserved(store.ledger)
    assert spend == pytest.approx(0.05) and reserved == pytest.approx(0.8)


# --- projections ------------------------------------------------------------------------------

def _projection_snapshot(ledger: Ledger) -> dict[str, object]:
    with ledger.engine.connect() as conn:
        job_state = [(*r[:8], round(r[8], 12)) for r in conn.exec_driver_sql(
            "SELECT job_id, seq, l1, pattern, level, state, attempts, last_attempt_no, "
            "spend_usd FROM job_state ORDER BY job_id")]
        open_attempts = [tuple(r) for r in conn.exec_driver_sql(
            "SELECT * FROM open_attempts ORDER BY attempt_id")]
        totals = [(*r[:3], round(r[3], 12)) for r in conn.exec_driver_sql(
            "SELECT head_seq, head_hash, next_id, spend_usd FROM ledger_totals")]
    return {"job_state": job_state, "open_attempts": open_attempts, "totals": totals}


def test_rebuilt_projections_equal_incremental_ones(store, ledger_on):
    _filled(store)
    store.start_run("run-b", "host", 2, "p1", "f1", {})
    now = time.time()
    jobs = store.claim("run-b", 5, now, 60)
    store.begin_attempt(jobs[0].job_id, "run-b", "m", 0, "p1", 200, 0.01, None, now, 60)
    store.release("run-b", [j.job_id for j in jobs])
    incremental = _projection_snapshot(ledger_on)
    assert incremental["open_attempts"], "the scenario must include an open attempt"
    store.rebuild_projections()
    assert _projection_snapshot(ledger_on) == incremental
    assert {row[5] for row in incremental["job_state"]} == {"accepted", "open"}  # state


# --- schema and migrations ----------------------------------------------------------------------

def test_migrated_schema_matches_the_code_metadata(ledger_on):
    with ledger_on.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []


def _alembic(db: str, *args: str) -> None:
    """The `alembic -x db=DB ...` command line, in-process (a subprocess each costs seconds)."""
    from alembic.config import main

    main(argv=["-c", str(ROOT / "alembic.ini"), "-x", f"db={db}", *args])


def test_alembic_upgrade_downgrade_upgrade_keeps_tables_triggers_and_views(empty_backend):
    b = empty_backend
    expected = expected_triggers(b.name)
    _alembic(b.db, "upgrade", "head")
    assert b.triggers() == expected
    views = b.views()
    assert views and {t.name for t in schema.metadata.sorted_tables} <= b.tables()
    _alembic(b.db, "downgrade", "base")
    assert b.triggers() == set() and b.views() == set()
    assert b.tables() == {"alembic_version"}
    _alembic(b.db, "upgrade", "head")
    assert b.triggers() == expected and b.views() == views
    led = b.open()
    try:
        with led.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() \
                == head_revision()
            assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
        store = Store(led)
        store.start_run("r", "h", 1, "p1", "f1", {})
        store.close()
    finally:
        led.dispose()
    engine = b.raw_engine()
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.exec_driver_sql("DELETE FROM runs")
    finally:
        engine.dispose()


@pytest.mark.timeout(90)
def test_parallel_first_opens_of_a_fresh_database_all_succeed(empty_backend):
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_it() -> None:
        try:
            barrier.wait(timeout=10)
            empty_backend.open().dispose()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_it, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "an opener is stuck"
    assert errors == []
    assert empty_backend.triggers() == expected_triggers(empty_backend.name)


def test_every_view_answers_and_costs_add_up(store, ledger_on, backend):
    _filled(store)
    views = backend.views()
    assert "v_cost_by_model" in views
    with ledger_on.engine.connect() as conn:
        for view in sorted(views):
            conn.exec_driver_sql(f"SELECT * FROM {view}").all()
        by_model = conn.exec_driver_sql("SELECT SUM(cost_usd) FROM v_cost_by_model").scalar()
        total = conn.exec_driver_sql("SELECT spend_usd FROM ledger_totals").scalar()
    assert float(by_model) == pytest.approx(total) and total > 0.3


def test_a_readonly_ledger_refuses_writes(backend, store):
    store.plan_jobs(make_jobs(2))
    ro = backend.open(readonly=True)
    try:
        assert queries.status(ro).total.planned == 2
        with ro.engine.connect() as conn, pytest.raises(DBAPIError, match=r"(?i)read-?only"):
            conn.exec_driver_sql("UPDATE job_state SET lease_owner = 'intruder'")
    finally:
        ro.dispose()
    with store.ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM job_state "
                                    "WHERE lease_owner IS NOT NULL").scalar() == 0


# --- status -----------------------------------------------------------------------------------

def test_status_through_the_api_and_the_cli(backend, store):
    _filled(store)
    st = queries.status(store.ledger).as_dict()
    assert (st["planned"], st["accepted"], st["failed"], st["remaining"]) == (4, 1, 0, 3)
    assert st["spend_usd"] == pytest.approx(0.1 + 0.2 + 3e-7)
    result = run_cli("status", "--db", backend.db, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == st


# --- concurrency --------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_two_stores_with_eight_threads_each_never_double_claim_or_deadlock(backend, store):
    n_jobs = 80
    store.plan_jobs(make_jobs(n_jobs))
    ledgers = [store.ledger, backend.open()]
    stores = [store, Store(ledgers[1])]
    claimed: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def worker(st: Store, run_id: str) -> None:
        try:
            while True:
                now = time.time()
                jobs = st.claim(run_id, 1, now, 600)
                if not jobs:
                    return
                job = jobs[0]
                with guard:
                    claimed.append((job.job_id, run_id))
                start = st.begin_attempt(job.job_id, run_id, "m", 0, "p1", 200, 0.001, 100.0,
                                         now, 600)
                assert start.attempt_id is not None, start
                time.sleep(0.01)  # the API call: no transaction open, others get their turn
                st.finish_attempt(start.attempt_id, job.job_id, run_id,
                                  OutcomeRecord("ok", 0.001, "response", content="x"),
                                  VERDICT, accept=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    for i, st in enumerate(stores):
        st.start_run(f"run-{i}", "host", i, "p1", "f1", {})
    threads = [threading.Thread(target=worker, args=(st, f"run-{i}"), daemon=True)
               for i, st in enumerate(stores) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 100
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "a worker is stuck (deadlock?)"
        assert errors == []
        counts = Counter(job_id for job_id, _run in claimed)
        assert len(counts) == n_jobs and set(counts.values()) == {1}
        assert {run for _job, run in claimed} == {"run-0", "run-1"}, "both stores took work"
        st = queries.status(store.ledger)
        assert (st.total.accepted, st.total.remaining) == (n_jobs, 0)
        assert st.total.spend_usd == pytest.approx(0.001 * n_jobs)
        with store.ledger.engine.connect() as conn:
            per_job = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM attempts GROUP BY job_id").scalars().all()
        assert per_job == [1] * n_jobs
        _assert_chain_links(store.ledger)
    finally:
        stores[1].close()
        ledgers[1].dispose()

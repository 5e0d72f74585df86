"""The event store: append-only guarantees, chained hashes, one-transaction writes, rebuild."""

from __future__ import annotations

import sqlite3
import time

import pytest
from sqlalchemy.exc import IntegrityError

from conftest import make_jobs
from ledger import queries, schema
from ledger import store as store_module
from ledger.db import write_connection
from ledger.records import OutcomeRecord, VerdictRecord

EVENT_TABLE_NAMES = [t.name for t in schema.EVENT_TABLES]


def _filled(store):  # type: ignore[no-untyped-def]
    """A ledger with at least one row in every event table."""
    from ledger.records import PriceRecord

    store.plan_jobs(make_jobs(3))
    store.start_run("run-a", "host", 1, "p1", "f1", {"models": ["m"]})
    now = time.time()
    jobs = store.claim("run-a", 3, now, 60)
    a = store.begin_attempt(jobs[0].job_id, "run-a", "m", 0, "p1", 200, 0.01, None, now, 60)
    v = VerdictRecord("f1", True, (), 4, 2, True, {"turns": 4}, "[]")
    store.finish_attempt(a.attempt_id, jobs[0].job_id, "run-a",
                         OutcomeRecord("ok", 0.002, "response", http_status=200, content="x"),
                         v, accept=True)
    b = store.begin_attempt(jobs[1].job_id, "run-a", "m", 0, "p1", 200, 0.01, None, now, 60)
    store.finish_attempt(b.attempt_id, jobs[1].job_id, "run-a",
                         OutcomeRecord("server_error", 0.0, "none", http_status=502),
                         fail_reasons=["m: server_error x3"])
    store.reopen_failed("run-a")
    store.record_prices([PriceRecord("m", 1e-7, 4e-7, "config")])
    store.stop_run("run-a", "done", 0, None, "no open job left")
    with store.transaction() as tx:
        tx.append(schema.imports, (tx.allocate_id(), "x.jsonl", "0" * 64, 1, 1, 0, "t"))


@pytest.mark.parametrize("table", EVENT_TABLE_NAMES)
def test_update_and_delete_fail_on_every_event_table_through_sqlite3(store, ledger_path, table):
    _filled(store)
    con = sqlite3.connect(ledger_path)  # a plain connection, as the sqlite3 shell would open
    assert con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] >= 1
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute(f"UPDATE {table} SET row_hash = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute(f"DELETE FROM {table}")
    con.close()


@pytest.mark.parametrize("table", EVENT_TABLE_NAMES)
def test_insert_or_replace_cannot_rewrite_an_event(store, ledger_path, table):
    _filled(store)
    con = sqlite3.connect(ledger_path)
    cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    row = con.execute(f"SELECT * FROM {table} LIMIT 1").fetchone()
    before = con.execute(f"SELECT COUNT(*), MAX(seq) FROM {table}").fetchone()
    marks = ",".join("?" * len(cols))
    for pragma in ("OFF", "ON"):
        con.execute(f"PRAGMA recursive_triggers={pragma}")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", row)
    assert con.execute(f"SELECT COUNT(*), MAX(seq) FROM {table}").fetchone() == before
    con.close()


def test_one_acceptance_per_job_is_enforced_by_the_schema(store, ledger):
    _filled(store)
    with ledger.engine.connect() as conn:
        job_id, attempt_id, verdict_id = conn.exec_driver_sql(
            "SELECT job_id, attempt_id, verdict_id FROM acceptances").one()
    with pytest.raises(IntegrityError):
        with store.transaction() as tx:
            tx.append(schema.acceptances, (job_id, attempt_id + 1000, verdict_id, "t"))


def test_attempt_numbers_are_unique_per_job(store):
    store.plan_jobs(make_jobs(1))
    job_id = make_jobs(1)[0].job_id
    with pytest.raises(IntegrityError):
        with store.transaction() as tx:
            for attempt_id in (900, 901):
                tx.append(schema.attempts, (attempt_id, job_id, 1, None, "m", 0, "p1", 200, 0.0,
                                            "t"))


def test_failed_transaction_leaves_nothing_behind(store, ledger):
    store.plan_jobs(make_jobs(2))
    before = queries.status(ledger).as_dict()
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.append(schema.runs, ("r-x", "t", "h", 1, "p1", "f1", "{}"))
            raise RuntimeError("crash in the middle")
    assert queries.status(ledger).as_dict() == before
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM runs").scalar() == 0
    # The store is still usable afterwards.
    assert store.plan_jobs(make_jobs(3)) == 1


def _dangling_state_row_is_refused(store) -> bool:  # type: ignore[no-untyped-def]
    """True when the store's write connection rejects a job_state row for no job."""
    try:
        with store.transaction() as tx:
            tx.execute("INSERT INTO job_state (job_id, seq, l1, pattern, level, state, attempts, "
                       "last_attempt_no, spend_usd) VALUES ('no-such-job', -1, 'x', 'x', 'A1', "
                       "'open', 0, 0, 0.0)")
    except IntegrityError:
        return True
    return False


def test_a_plan_turns_reference_checks_off_for_its_own_transaction_only(store, ledger):
    # A plan skips the per-row check of job_state -> jobs (its rows are copied from jobs);
    # the connection must check every later transaction again, also after a failed plan.
    assert _dangling_state_row_is_refused(store)
    store.plan_jobs(make_jobs(4))
    assert _dangling_state_row_is_refused(store)
    broken = make_jobs(5)[4]._replace(l1=None)  # NOT NULL: the plan's transaction fails
    with pytest.raises(IntegrityError):
        store.plan_jobs([broken])
    assert _dangling_state_row_is_refused(store)
    assert store.plan_jobs(make_jobs(6)) == 2
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql(
            "SELECT COUNT(*) FROM job_state s JOIN jobs j ON j.job_id = s.job_id").scalar() == 6


def test_a_connection_whose_checks_cannot_be_turned_back_on_is_dropped(ledger):
    # Inside a transaction SQLite ignores PRAGMA foreign_keys without an error (as after a
    # failed COMMIT): the store must notice and never hand that connection out again.
    conn = write_connection(ledger.engine)
    raw = conn.connection.driver_connection
    raw.execute("PRAGMA foreign_keys=OFF")
    raw.execute("BEGIN")
    assert not store_module._set_references(conn, True)
    assert conn.invalidated
    conn.close()
    with ledger.engine.connect() as fresh:
        assert fresh.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    ok = write_connection(ledger.engine)
    assert store_module._set_references(ok, False) and store_module._set_references(ok, True)
    assert not ok.invalidated
    ok.close()


def test_plan_jobs_is_idempotent(store, ledger):
    assert store.plan_jobs(make_jobs(5)) == 5
    assert store.plan_jobs(make_jobs(5)) == 0
    assert store.plan_jobs(make_jobs(7)) == 2
    assert queries.status(ledger).total.planned == 7


def test_chain_hash_is_sha256_of_the_previous_hash_and_compact_json():
    """The documented formula, spelled out independently of the store's fast encoder, on the
    values that trip encoders: quotes, backslashes, controls, U+2028, astral characters,
    floats, None, booleans and integers beyond 64 bits."""
    import hashlib
    import json

    from ledger.tx import chain_hash

    values = ['a"b\\c\n\x00\u2028é😀', 1.5, -0.0, 1e300, None, True, 2 ** 70, "", 0]
    prev = "f" * 64
    payload = json.dumps(["jobs", 7, *values], separators=(",", ":"), ensure_ascii=False)
    assert chain_hash(prev, "jobs", 7, values) == hashlib.sha256(
        (prev + payload).encode("utf-8")).hexdigest()


def test_a_planned_job_carries_the_jobs_columns_in_order():
    """The store appends a PlannedJob as its jobs row field for field."""
    from ledger.records import PlannedJob
    from ledger.tx import event_columns

    assert [*PlannedJob._fields, "planned_at_utc"] == event_columns(schema.jobs)


def test_chain_sequence_is_gapless_and_hashes_link(store, ledger):
    from ledger.tx import chain_hash, event_columns

    _filled(store)
    rows = []
    with ledger.engine.connect() as conn:
        for t in schema.EVENT_TABLES:
            cols = event_columns(t)
            for r in conn.exec_driver_sql(
                    f"SELECT seq, row_hash, {', '.join(cols)} FROM {t.name}"):
                rows.append((r[0], r[1], t.name, list(r[2:])))
        head = conn.exec_driver_sql("SELECT head_seq, head_hash FROM ledger_totals").one()
    rows.sort()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    prev = schema.GENESIS_HASH
    for seq, row_hash, table, values in rows:
        prev = chain_hash(prev, table, seq, values)
        assert prev == row_hash, f"seq {seq} in {table}"
    assert tuple(head) == (rows[-1][0], rows[-1][1])


def test_budget_counts_open_attempts_at_their_maximum(store):
    store.plan_jobs(make_jobs(3))
    store.start_run("r", "h", 1, "p1", "f1", {})
    now = time.time()
    jobs = store.claim("r", 3, now, 60)
    first = store.begin_attempt(jobs[0].job_id, "r", "m", 0, "p1", 200, 0.4, 1.0, now, 60)
    second = store.begin_attempt(jobs[1].job_id, "r", "m", 0, "p1", 200, 0.4, 1.0, now, 60)
    third = store.begin_attempt(jobs[2].job_id, "r", "m", 0, "p1", 200, 0.4, 1.0, now, 60)
    assert first.attempt_id and second.attempt_id
    assert third.refused == "budget"
    # The first lands for less than its reservation: room opens for the third.
    store.finish_attempt(first.attempt_id, jobs[0].job_id, "r",
                         OutcomeRecord("ok", 0.05, "response"))
    again = store.begin_attempt(jobs[2].job_id, "r", "m", 0, "p1", 200, 0.4, 1.0, now, 60)
    assert again.attempt_id is not None


def test_claims_do_not_overlap_and_expired_leases_come_back(store):
    store.plan_jobs(make_jobs(4))
    now = time.time()
    a = store.claim("run-a", 3, now, 10)
    b = store.claim("run-b", 3, now, 10)
    assert len(a) == 3 and len(b) == 1
    assert not {j.job_id for j in a} & {j.job_id for j in b}
    assert store.claim("run-c", 3, now + 5, 10) == []
    later = store.claim("run-c", 10, now + 11, 10)
    assert len(later) == 4


def test_begin_attempt_refuses_a_job_whose_lease_moved_on(store):
    store.plan_jobs(make_jobs(1))
    now = time.time()
    (job,) = store.claim("run-a", 1, now, 10)
    (same,) = store.claim("run-b", 1, now + 20, 10)
    assert same.job_id == job.job_id
    refused = store.begin_attempt(job.job_id, "run-a", "m", 0, "p1", 200, 0.0, None, now + 21, 10)
    assert refused.refused == "lease_lost"


def _projection_snapshot(ledger):  # type: ignore[no-untyped-def]
    with ledger.engine.connect() as conn:
        return {
            "job_state": conn.exec_driver_sql(
                "SELECT job_id, seq, l1, pattern, level, state, attempts, last_attempt_no, "
                "ROUND(spend_usd, 12) FROM job_state ORDER BY job_id").all(),
            "open_attempts": conn.exec_driver_sql(
                "SELECT * FROM open_attempts ORDER BY attempt_id").all(),
            "totals": conn.exec_driver_sql(
                "SELECT head_seq, head_hash, next_id, ROUND(spend_usd, 12) "
                "FROM ledger_totals").all(),
        }


def test_rebuilt_projections_equal_incremental_ones(store, ledger):
    _filled(store)
    # Leave one attempt open (a crash between request and response).
    store.start_run("run-b", "host", 2, "p1", "f1", {})
    now = time.time()
    jobs = store.claim("run-b", 5, now, 60)
    store.begin_attempt(jobs[0].job_id, "run-b", "m", 0, "p1", 200, 0.01, None, now, 60)
    store.release("run-b", [j.job_id for j in jobs])
    incremental = _projection_snapshot(ledger)
    store.rebuild_projections()
    assert _projection_snapshot(ledger) == incremental
    assert incremental["open_attempts"], "the scenario must include an open attempt"



def test_group_commit_isolates_a_failing_write_from_the_rest_of_its_group(store, ledger):
    """Writes queued while the store is busy share one transaction; one that fails is rolled
    back to its savepoint and raises for its own caller, and the others still commit."""
    import threading

    n = store._group.WAITERS_PER_COMMIT  # waiting writes: as many as one commit takes
    store.plan_jobs(make_jobs(n))
    store.start_run("r", "h", 1, "p1", "f1", {})
    now = time.time()
    jobs = store.claim("r", n, now, 60)
    starts = [store.begin_attempt(j.job_id, "r", "m", 0, "p1", 200, 0.01, None, now, 60)
              for j in jobs]
    # Finish the first attempt now, so finishing it again inside the group must fail.
    store.finish_attempt(starts[0].attempt_id, jobs[0].job_id, "r",
                         OutcomeRecord("ok", 0.001, "response"))
    results: dict[int, object] = {}

    def finish(i: int) -> None:
        try:
            results[i] = store.finish_attempt(starts[i].attempt_id, jobs[i].job_id, "r",
                                              OutcomeRecord("ok", 0.002, "response"))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    with store._lock:  # hold the store so all the writes queue into one group
        threads = [threading.Thread(target=finish, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(store._group.pending) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(store._group.pending) == n
    for t in threads:
        t.join(10)
    assert isinstance(results[0], IntegrityError)
    assert all(results[i] is False for i in range(1, n))
    with ledger.engine.connect() as conn:
        outcomes = conn.exec_driver_sql("SELECT COUNT(*) FROM attempt_outcomes").scalar()
        spend = conn.exec_driver_sql("SELECT spend_usd FROM ledger_totals").scalar()
    assert outcomes == n  # the first one's original outcome plus the others of the group
    assert spend == pytest.approx(0.001 + (n - 1) * 0.002)
    from ledger.verify import check_chain, check_projections

    # The projections written inside the group match a replay, and the chain links.
    assert check_projections(ledger).ok and check_chain(ledger).ok


def test_event_timestamps_are_utc_iso_with_microseconds_and_sort_in_time_order():
    from datetime import datetime, timedelta, timezone

    from ledger.records import utc_now

    before = datetime.now(timezone.utc)
    stamps = [utc_now() for _ in range(2000)]
    after = datetime.now(timezone.utc)
    parsed = [datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
              for s in stamps]
    assert all(len(s) == 27 for s in stamps)
    assert stamps == sorted(stamps)
    assert before - timedelta(microseconds=1) <= parsed[0] <= parsed[-1] <= after
    time.sleep(1.01)  # a new second: its date and time are formatted afresh
    later = datetime.strptime(utc_now(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(later - datetime.now(timezone.utc)) < timedelta(seconds=0.5)

"""The only module that writes to the ledger.

Guarantee: every public method appends its events and updates the projections that reflect them
in ONE transaction, so a crash at any moment leaves either all of it or none of it. Event rows are
chained: each gets the next global `seq` and `row_hash = sha256(prev_hash + canonical row)`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from . import schema
from .db import Ledger, write_connection
from .group_commit import GroupCommit, Pending
from .records import (
    AttemptStart,
    ClaimedJob,
    OutcomeRecord,
    PlannedJob,
    PriceRecord,
    VerdictRecord,
    utc_now,
)
from .sql import Statements
from .tx import Tx

T = TypeVar("T")
FAULT_ENV = "LEDGER_FAULT_EXIT_AT"
FAULT_EXIT_CODE = 77


def _fault_point(value: str | None) -> tuple[int, str] | None:
    """Crash-test hook: `K:before` or `K:after` makes the process _exit at its K-th write
    transaction, just before or just after the commit. Unset in normal use."""
    if not value:
        return None
    k, _, phase = value.partition(":")
    return int(k), (phase or "before")


class Store:
    """Appends events. One write connection per process, serialised by a lock, so threads queue
    here instead of spinning in SQLite's busy handler; other processes wait on BEGIN IMMEDIATE.

    The run loop's writes go through a writer thread (ledger/group_commit.py): every write
    queued while a commit is under way joins the next transaction, so one fsync serves many
    workers. A worker waits for the commit of an attempt's intent (it must precede the request)
    but not for an outcome's: the queue is FIFO, so anything the worker writes next lands after.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.sql = Statements(ledger.dialect)
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        # A busy writer leaves 1 ms between commits on SQLite, so another process waiting in
        # SQLite's busy handler (which polls in millisecond sleeps) can take the write lock.
        self._group = GroupCommit(self._run_batch, self._lock,
                                  gap_s=0.001 if ledger.dialect == "sqlite" else 0.0)
        self._fault = _fault_point(os.environ.get(FAULT_ENV))
        self._writes = 0

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._group.stop()
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

    def flush(self) -> None:
        """Wait until every queued write is committed (or has failed to its callback); raises
        what a callback raised, if one did."""
        self._group.flush()

    @contextmanager
    def transaction(self, *, events: bool = True,
                    references_checked: bool = True) -> Iterator[Tx]:
        """One write transaction. `events=False` promises no event appends (claims): on
        PostgreSQL it then skips the ledger_totals row lock that orders the hash chain, so claims
        do not queue behind event writers of other processes; the job rows they take are locked
        with FOR UPDATE SKIP LOCKED instead. SQLite's BEGIN IMMEDIATE serialises every writer
        anyway, so there the two kinds are the same. `references_checked=False` turns SQLite's
        foreign-key checks off for this transaction only: for writes whose every reference is
        to rows the same transaction copies them from (a plan's job_state rows)."""
        with self._lock, self._transaction_locked(events, references_checked) as tx:
            yield tx

    @contextmanager
    def _transaction_locked(self, events: bool = True,
                            references_checked: bool = True) -> Iterator[Tx]:
        """The transaction itself; the caller holds self._lock."""
        if self._conn is None:
            self._conn = write_connection(self.ledger.engine)
        conn = self._conn
        trusted = not references_checked and self.ledger.dialect == "sqlite"
        try:
            with (self._references_unchecked(conn) if trusted else nullcontext()), \
                    conn.begin():
                if events or not self.sql.row_locks:
                    tx = Tx(conn, self.sql, 0, "", 0, 0.0)
                    tx.head_seq, tx.head_hash, tx.next_id, tx.spend_usd = \
                        tx.run("lock_totals").one()
                else:
                    tx = Tx(conn, self.sql, 0, "", 0, 0.0, chained=False)
                yield tx
                if tx.dirty:
                    tx.run("update_totals", (
                        tx.head_seq, tx.head_hash, tx.next_id, tx.spend_usd))
                self._maybe_crash("before")
            self._maybe_crash("after")
        except BaseException:
            # A connection whose transaction died mid-way is not used again by this store.
            self._conn = None
            try:
                if trusted:
                    # Nor by anyone: SQLite ignores PRAGMA foreign_keys inside a transaction, so
                    # one that did not end cleanly (a failed COMMIT) may still have checks off.
                    conn.invalidate()
                conn.close()
            except Exception:  # noqa: BLE001 - already failing; keep the first error
                pass
            raise

    @contextmanager
    def _references_unchecked(self, conn: Connection) -> Iterator[None]:
        """SQLite's foreign-key checks off around one transaction (PRAGMA foreign_keys is a
        no-op inside one) and back on after it, also when it fails; a connection where they
        do not come back on is dropped."""
        # Should this not take, the connection is invalidated, and the transaction runs on a
        # fresh one, whose checks are on: slower only.
        _set_references(conn, False)
        try:
            yield
        finally:
            if not _set_references(conn, True):
                self._conn = None

    # --- group commit (ledger/group_commit.py queues; this runs one group) -----------------

    def _combined(self, op: Callable[[Tx], T]) -> T:
        """Run `op` in a group-committed write transaction and return its result once committed
        (so a committed intent precedes its request)."""
        return self._group.call(op)  # type: ignore[no-any-return]

    def _run_batch(self, batch: list[Pending]) -> None:
        """One transaction for the whole batch. Ops run one after another without savepoints
        (each would cost two more statements); only when one of them raises is the batch rolled
        back and run again with each op in its own savepoint, so one failure does not undo the
        others."""
        if len(batch) > 1:
            try:
                with self._transaction_locked() as tx:
                    values = [item.op(tx) for item in batch]
            except Exception:  # noqa: BLE001 - nothing committed; the careful path below decides
                pass
            else:
                for item, value in zip(batch, values):
                    item.value = value
                return
        try:
            with self._transaction_locked() as tx:
                if len(batch) == 1:
                    batch[0].value = batch[0].op(tx)
                else:
                    for item in batch:
                        snap = tx.snapshot()
                        tx.execute("SAVEPOINT ledger_op")
                        try:
                            item.value = item.op(tx)
                        except Exception as exc:  # noqa: BLE001 - handed to its own caller
                            tx.execute("ROLLBACK TO SAVEPOINT ledger_op")
                            tx.restore(snap)
                            item.error = exc
                        tx.execute("RELEASE SAVEPOINT ledger_op")
        except BaseException as exc:  # the commit itself failed: nobody's write happened
            for item in batch:
                item.error, item.value = exc, None

    def _maybe_crash(self, phase: str) -> None:
        if self._fault is None:
            return
        if phase == "before":
            self._writes += 1
        if self._writes == self._fault[0] and phase == self._fault[1]:
            os._exit(FAULT_EXIT_CODE)

    # --- planning -------------------------------------------------------------------------

    def plan_jobs(self, new_jobs: Sequence[PlannedJob]) -> int:
        """Append planned jobs that are not in the ledger yet; returns how many were added."""
        if not new_jobs:
            return 0
        # job_state rows are copied from the jobs rows in the same transaction, so none can
        # dangle; checking each one's reference is a random lookup in the jobs key index, 3.3
        # of the 18.7 s of SQL in a plan of 1,000,000 jobs (measured on SQLite).
        with self.transaction(references_checked=False) as tx:
            return len(append_new_jobs(tx, new_jobs, utc_now()))

    # --- runs -----------------------------------------------------------------------------

    def start_run(self, run_id: str, host: str, pid: int, prompt_version: str,
                  filter_version: str, config: dict[str, Any],
                  dead_runs: Sequence[str] = ()) -> None:
        """Record a run's start; runs found dead (their process is gone) get a 'died' stop and
        their leases are released so their jobs come back at once."""
        now = utc_now()
        with self.transaction() as tx:
            _bury(tx, run_id, dead_runs, now)
            tx.append(schema.runs, (run_id, now, host, pid, prompt_version, filter_version,
                                    json.dumps(config, sort_keys=True)))

    def bury_dead_runs(self, run_id: str, dead_runs: Sequence[str]) -> None:
        """What start_run does for runs found dead, for a run already going: a run that died
        while this one worked still holds leases on open jobs."""
        if dead_runs:
            with self.transaction() as tx:
                _bury(tx, run_id, dead_runs, utc_now())

    def stop_run(self, run_id: str, reason: str, exit_code: int, limit_source: str | None,
                 message: str | None) -> None:
        with self.transaction() as tx:
            tx.append(schema.run_stops, (run_id, utc_now(), reason, exit_code, limit_source,
                                         message))
            tx.run("release_run_leases", (run_id,))

    # --- claims and attempts --------------------------------------------------------------

    def claim(self, run_id: str, n: int, now: float, lease_s: float) -> list[ClaimedJob]:
        """Lease up to n open jobs nobody holds (or whose lease expired)."""
        with self.transaction(events=False) as tx:
            ids = [r[0] for r in tx.run("select_claimable", (now, n))]
            if not ids:
                return []
            tx.run("lease_job", [(run_id, now + lease_s, job_id) for job_id in ids])
            rows = _fetch_claimed(tx, ids)
        return rows

    def begin_attempt(self, job_id: str, run_id: str, model: str, chain_position: int,
                      prompt_version: str, max_tokens: int, reserved_usd: float,
                      budget_usd: float | None, now: float, lease_s: float) -> AttemptStart:
        """Commit the intent to call the API before the request leaves.

        Refuses (without writing) when the job is no longer ours or the budget, counting every
        attempt still open at its maximum cost, cannot cover this one."""

        def op(tx: Tx) -> AttemptStart:
            state, owner, last_no = tx.run("job_lease", (job_id,)).one()
            if state != "open":
                return AttemptStart(refused="done")
            if owner != run_id:
                return AttemptStart(refused="lease_lost")
            if budget_usd is not None:
                reserved = tx.run("sum_open_reserved").scalar() or 0.0
                if tx.spend_usd + reserved + reserved_usd > budget_usd + 1e-12:
                    mine = tx.run("count_open_of_run", (run_id,)).scalar() or 0
                    return AttemptStart(refused="budget", open_mine=int(mine))
            attempt_id = tx.allocate_id()
            attempt_no = last_no + 1
            tx.append(schema.attempts, (attempt_id, job_id, attempt_no, run_id, model,
                                        chain_position, prompt_version, max_tokens, reserved_usd,
                                        utc_now()))
            tx.run("insert_open_attempt", (attempt_id, job_id, run_id, reserved_usd))
            tx.run("job_attempt_started", (attempt_no, now + lease_s, job_id))
            return AttemptStart(attempt_id=attempt_id, attempt_no=attempt_no)

        return self._combined(op)

    def finish_attempt(self, attempt_id: int, job_id: str, run_id: str | None,
                       outcome: OutcomeRecord, verdict: VerdictRecord | None = None,
                       accept: bool = False,
                       fail_reasons: Sequence[str] | None = None) -> bool:
        """Record an attempt's outcome (and verdict), and accept or fail its job, atomically.

        Returns True when the job was accepted by this call."""
        return self._combined(_finish_op(attempt_id, job_id, run_id, outcome, verdict, accept,
                                         fail_reasons))

    def finish_attempt_later(self, attempt_id: int, job_id: str, run_id: str | None,
                             outcome: OutcomeRecord, verdict: VerdictRecord | None,
                             accept: bool,
                             callback: Callable[[bool, BaseException | None], None]) -> None:
        """finish_attempt without waiting for the commit: `callback(accepted, error)` runs on
        the writer thread once the transaction has committed (or failed). Writes this thread
        queues afterwards commit after this one."""
        self._group.submit(_finish_op(attempt_id, job_id, run_id, outcome, verdict, accept,
                                      None), callback)

    def fail_job(self, job_id: str, run_id: str | None, reasons: Sequence[str]) -> None:
        self._combined(lambda tx: _fail(tx, job_id, run_id, reasons))

    def release(self, run_id: str, job_ids: Sequence[str]) -> None:
        """Give leased jobs back (on a clean stop) so the next run can take them at once."""
        if not job_ids:
            return
        with self.transaction() as tx:
            tx.run("release_job", [(job_id, run_id) for job_id in job_ids])

    def reopen_failed(self, run_id: str | None) -> int:
        with self.transaction() as tx:
            ids = [r[0] for r in tx.run("select_failed")]
            now = utc_now()
            for job_id in ids:
                tx.append(schema.job_reopens, (tx.allocate_id(), job_id, run_id, now))
            tx.run("reopen_job", [(job_id,) for job_id in ids])
        return len(ids)

    # --- verdicts without new spend -------------------------------------------------------

    def record_verdicts(self, items: Sequence[tuple[str, int, VerdictRecord, bool]]) -> int:
        """Append verdicts (job_id, attempt_id, verdict, accept); accept where asked and the job
        has no acceptance yet. Returns how many jobs became accepted."""
        accepted = 0
        with self.transaction() as tx:
            for job_id, attempt_id, verdict, accept in items:
                verdict_id = _append_verdict(tx, attempt_id, verdict)
                if accept and _accept(tx, job_id, attempt_id, verdict_id):
                    accepted += 1
        return accepted

    def record_prices(self, prices: Sequence[PriceRecord]) -> None:
        with self.transaction() as tx:
            now = utc_now()
            tx.append_many(schema.prices, [
                (tx.allocate_id(), p.model, p.prompt_usd_per_token,
                 p.completion_usd_per_token, p.source, now) for p in prices])

    # --- projections ----------------------------------------------------------------------

    def rebuild_projections(self) -> None:
        """Recompute every projection from the events alone (leases start empty)."""
        with self.transaction() as tx:
            for name in ("clear_job_state", "clear_open_attempts", "rebuild_job_state",
                         "rebuild_open_attempts"):
                tx.run(name)
            # No row at all when the ledger holds no event yet: the totals start from nothing.
            row = (tx.run("rebuild_totals_source").all() or [(None, None, None, None)])[0]
            tx.head_seq, tx.head_hash = row[0] or 0, row[1] or schema.GENESIS_HASH
            tx.next_id, tx.spend_usd = row[2] or 1, float(row[3] or 0.0)
            tx.dirty = True


def _bury(tx: Tx, run_id: str, dead_runs: Sequence[str], now: str) -> None:
    for dead in dead_runs:
        if tx.run("run_stopped", (dead,)).scalar():
            continue  # another run found it dead first
        tx.append(schema.run_stops, (dead, now, "died", -9, None,
                                     f"process gone; found by run {run_id}"))
        tx.run("release_run_leases", (dead,))


def _set_references(conn: Connection, on: bool) -> bool:
    """SQLite's foreign-key checks on or off for the connection's next transactions; read back,
    because inside a transaction SQLite ignores the setting without an error. False when it
    did not take: the connection is then invalidated (closed and dropped from the pool), so no
    later transaction runs on it."""
    want = 1 if on else 0
    try:
        raw = conn.connection.driver_connection
        raw.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
        if raw.execute("PRAGMA foreign_keys").fetchone()[0] == want:
            return True
    except Exception:  # noqa: BLE001 - a broken connection: dropped below all the same
        pass
    conn.invalidate()
    return False


def _finish_op(attempt_id: int, job_id: str, run_id: str | None, outcome: OutcomeRecord,
               verdict: VerdictRecord | None, accept: bool,
               fail_reasons: Sequence[str] | None) -> Callable[[Tx], bool]:
    def op(tx: Tx) -> bool:
        o = outcome
        tx.append(schema.attempt_outcomes, (
            attempt_id, utc_now(), o.http_status, o.error_class, o.error_code, o.error_type,
            o.limit_source, o.retry_after_s, o.message, o.model_served, o.provider,
            o.generation_id, o.prompt_tokens, o.completion_tokens, o.cost_usd,
            o.cost_source, o.latency_ms, o.finish_reason, o.content))
        tx.run("delete_open_attempt", (attempt_id,))
        tx.spend_usd += o.cost_usd
        verdict_id = _append_verdict(tx, attempt_id, verdict) if verdict else None
        if accept and verdict_id is not None and _accept(tx, job_id, attempt_id, verdict_id,
                                                         o.cost_usd):
            return True
        tx.run("job_add_spend", (o.cost_usd, job_id))
        if fail_reasons is not None:
            _fail(tx, job_id, run_id, fail_reasons)
        return False

    return op


def _existing_job_ids(tx: Tx, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    chunk = 500  # stay under every driver's bound-parameter limit
    for i in range(0, len(ids), chunk):
        part = ids[i:i + chunk]
        tx.execute(tx.sql.job_ids_in(len(part)), tuple(part))
        found.update(r[0] for r in tx.cur.fetchall())
    return found


def append_new_jobs(tx: Tx, jobs: Sequence[PlannedJob], now: str) -> list[PlannedJob]:
    """Append the jobs not in the ledger yet, in the order given, and open each one's state;
    returns those jobs."""
    # A first plan into an empty ledger skips the look-up of a million ids (0.5 s).
    existing = _existing_job_ids(tx, [j.job_id for j in jobs]) \
        if tx.run("any_job").scalar() else set()
    fresh = [j for j in jobs if j.job_id not in existing] if existing else list(jobs)
    if not fresh:
        return []
    after = tx.head_seq
    # A PlannedJob's fields are the jobs columns in order, planned_at_utc last.
    tx.append_many(schema.jobs, [(*j, now) for j in fresh])
    # The state rows are copied from the rows just appended, in SQL: no second pass of
    # parameters through the driver.
    tx.run("open_jobs_after", (after,))
    return fresh


def _fetch_claimed(tx: Tx, ids: Sequence[str]) -> list[ClaimedJob]:
    tx.execute(tx.sql.claimed_in(len(ids)), tuple(ids))
    rows = tx.cur.fetchall()
    by_id = {r[0]: ClaimedJob(*r) for r in rows}
    return [by_id[i] for i in ids if i in by_id]


def _append_verdict(tx: Tx, attempt_id: int, v: VerdictRecord) -> int:
    verdict_id = tx.allocate_id()
    tx.append(schema.verdicts, (
        verdict_id, attempt_id, v.filter_version, int(v.passed), json.dumps(list(v.reasons)),
        v.turns, v.tutor_questions, int(v.self_corrected),
        json.dumps(v.metrics, sort_keys=True, default=str), v.messages_json, utc_now()))
    return verdict_id


def _accept(tx: Tx, job_id: str, attempt_id: int, verdict_id: int,
            spend_usd: float = 0.0) -> bool:
    """Accept the job and add `spend_usd` to it; False, changing nothing, when another worker
    got there first (the response stays as a spare)."""
    if not tx.run("job_accept", (spend_usd, job_id)).rowcount:
        return False
    tx.append(schema.acceptances, (job_id, attempt_id, verdict_id, utc_now()))
    return True


def _fail(tx: Tx, job_id: str, run_id: str | None, reasons: Sequence[str]) -> None:
    if tx.run("job_state_of", (job_id,)).scalar() != "open":
        return
    tx.append(schema.job_failures, (tx.allocate_id(), job_id, run_id,
                                    json.dumps(list(reasons)), utc_now()))
    tx.run("job_set_state", ("failed", job_id))


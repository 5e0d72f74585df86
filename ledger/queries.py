"""Reads: what the planner, the run loop and `status` need to know. One home for read SQL.

Every function takes an open Ledger and returns plain values or frozen rows.
"""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import String, bindparam, text

from .db import Ledger

# Counts and spend by (l1, state) come from the covering index ix_job_state_l1_state_spend in
# group order; folding states into L1 rows is left to Python, because per-row CASE sums over a
# million rows cost SQLite several times the scan itself.
_STATUS_BY_L1_STATE = text("""
SELECT l1, state, COUNT(*), SUM(spend_usd)
FROM job_state GROUP BY l1, state ORDER BY l1, state""")

# Only leased jobs can be in flight. Grouping by owner first lets the partial index
# ix_job_state_leased serve the query (grouping by l1 alone would walk every job in l1 order);
# owners of dead runs are dropped in Python.
_LEASED_BY_OWNER = text("""
SELECT lease_owner, l1, COUNT(*) FROM job_state
WHERE lease_owner IS NOT NULL AND state = 'open' AND lease_expires_at > :now
GROUP BY lease_owner, l1""")

# An open attempt is "in flight" while its live run still holds the job's lease; otherwise its
# process died between request and response, and the provider may have billed it.
_OPEN_ATTEMPTS = text("""
SELECT s.l1,
       SUM(CASE WHEN s.lease_owner = oa.run_id AND s.lease_expires_at > :now
                 AND oa.run_id NOT IN :dead THEN 1 ELSE 0 END),
       SUM(CASE WHEN s.lease_owner = oa.run_id AND s.lease_expires_at > :now
                 AND oa.run_id NOT IN :dead THEN 0 ELSE 1 END),
       SUM(oa.reserved_usd)
FROM open_attempts oa JOIN job_state s ON s.job_id = oa.job_id GROUP BY s.l1""").bindparams(
    bindparam("dead", type_=String, expanding=True))

_TOTALS = text("SELECT spend_usd, head_seq, head_hash FROM ledger_totals WHERE id = 1")
_OPEN_RESERVED = text("SELECT COALESCE(SUM(reserved_usd), 0.0) FROM open_attempts")

_LATEST_PRICES = text("""
SELECT p.model, p.prompt_usd_per_token, p.completion_usd_per_token, p.source
FROM prices p JOIN (SELECT model, MAX(seq) AS seq FROM prices GROUP BY model) last
  ON last.seq = p.seq ORDER BY p.model""")

_JOBS_IN_CELLS = text("SELECT job_id, l1, pattern, level FROM jobs WHERE l1 IN :l1s") \
    .bindparams(bindparam("l1s", expanding=True))
_JOBS_ALL = text("SELECT job_id, l1, pattern, level FROM jobs")

_OPEN_JOB_COUNT = text("SELECT COUNT(*) FROM job_state WHERE state = 'open'")

_RUN_LEASES = text("""
SELECT r.run_id, r.host, r.pid FROM runs r
WHERE NOT EXISTS (SELECT 1 FROM run_stops s WHERE s.run_id = r.run_id)""")


@dataclass(frozen=True)
class StatusRow:
    l1: str
    planned: int
    in_flight: int
    accepted: int
    failed: int
    remaining: int
    outcome_unknown: int
    spend_usd: float


@dataclass(frozen=True)
class Status:
    total: StatusRow
    by_l1: tuple[StatusRow, ...]
    reserved_usd: float
    head_seq: int

    def as_dict(self) -> dict[str, Any]:
        t = self.total
        return {
            "planned": t.planned, "in_flight": t.in_flight, "accepted": t.accepted,
            "failed": t.failed, "remaining": t.remaining, "outcome_unknown": t.outcome_unknown,
            "spend_usd": round(t.spend_usd, 10), "reserved_usd": round(self.reserved_usd, 10),
            "events": self.head_seq,
            "by_l1": {r.l1: {"planned": r.planned, "in_flight": r.in_flight,
                             "accepted": r.accepted, "failed": r.failed,
                             "remaining": r.remaining, "outcome_unknown": r.outcome_unknown,
                             "spend_usd": round(r.spend_usd, 10)} for r in self.by_l1},
        }


def status(ledger: Ledger, now: float | None = None) -> Status:
    now = time.time() if now is None else now
    with ledger.engine.connect() as conn:
        # A run killed on this host keeps its leases until they expire; its pid says it is gone.
        dead = [run_id for run_id, host, pid in conn.execute(_RUN_LEASES)
                if host == socket.gethostname() and not _process_alive(int(pid))]
        params = {"now": now, "dead": dead}
        by_state = conn.execute(_STATUS_BY_L1_STATE).all()
        in_flight: dict[str, int] = defaultdict(int)
        for owner, l1, n in conn.execute(_LEASED_BY_OWNER, {"now": now}):
            if owner not in dead:
                in_flight[l1] += int(n)
        open_rows = {r[0]: r for r in conn.execute(_OPEN_ATTEMPTS, params).all()}
        spend, head_seq, _head = conn.execute(_TOTALS).one()
    rows = []
    reserved = 0.0
    for l1, counts, l1_spend in _fold_states(by_state):
        o = open_rows.get(l1)
        unknown = int(o[2] or 0) if o else 0
        reserved += float(o[3] or 0.0) if o else 0.0
        rows.append(StatusRow(l1=l1, planned=sum(counts.values()),
                              in_flight=in_flight[l1],
                              accepted=counts.get("accepted", 0), failed=counts.get("failed", 0),
                              remaining=counts.get("open", 0), outcome_unknown=unknown,
                              spend_usd=l1_spend))
    total = StatusRow(
        l1="all", planned=sum(r.planned for r in rows), in_flight=sum(r.in_flight for r in rows),
        accepted=sum(r.accepted for r in rows), failed=sum(r.failed for r in rows),
        remaining=sum(r.remaining for r in rows),
        outcome_unknown=sum(r.outcome_unknown for r in rows), spend_usd=float(spend or 0.0))
    return Status(total=total, by_l1=tuple(rows), reserved_usd=reserved, head_seq=head_seq)


def _fold_states(rows: Sequence[Any]) -> list[tuple[str, dict[str, int], float]]:
    """(l1, state, count, spend) rows in l1 order -> one (l1, count by state, spend) per L1."""
    out: list[tuple[str, dict[str, int], float]] = []
    for l1, state, count, spend in rows:
        if not out or out[-1][0] != l1:
            out.append((l1, {}, 0.0))
        l1_, counts, total = out[-1]
        counts[state] = int(count)
        out[-1] = (l1_, counts, total + float(spend or 0.0))
    return out


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or a pid we cannot judge: assume alive
    return True


def existing_jobs_by_cell(ledger: Ledger, l1s: Sequence[str] | None,
                          levels: Sequence[str]) -> dict[tuple[str, str], set[str]]:
    """Job ids already planned or imported, by (l1, pattern), restricted to the given levels."""
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    level_set = set(levels)
    with ledger.engine.connect() as conn:
        rows = (conn.execute(_JOBS_IN_CELLS, {"l1s": list(l1s)}) if l1s
                else conn.execute(_JOBS_ALL))
        for job_id, l1, pattern, level in rows:
            if level in level_set:
                out[(l1, pattern)].add(job_id)
    return out


def spend_and_reserved(ledger: Ledger) -> tuple[float, float]:
    with ledger.engine.connect() as conn:
        spend = conn.execute(_TOTALS).one()[0]
        reserved = conn.execute(_OPEN_RESERVED).scalar()
    return float(spend or 0.0), float(reserved or 0.0)


def latest_prices(ledger: Ledger) -> dict[str, tuple[float, float, str]]:
    with ledger.engine.connect() as conn:
        return {r[0]: (float(r[1]), float(r[2]), r[3]) for r in conn.execute(_LATEST_PRICES)}


def open_job_count(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(_OPEN_JOB_COUNT).scalar() or 0)


def unfinished_runs(ledger: Ledger) -> list[tuple[str, str, int]]:
    """Runs with a start and no stop: live elsewhere, or dead without a word."""
    with ledger.engine.connect() as conn:
        return [(r[0], r[1], int(r[2])) for r in conn.execute(_RUN_LEASES)]


_OBSERVED_USAGE = text("""
SELECT a.model_requested, AVG(o.prompt_tokens), AVG(o.completion_tokens), COUNT(*),
       (SELECT COUNT(*) FROM acceptances acc JOIN attempts a2 ON a2.attempt_id = acc.attempt_id
        WHERE a2.model_requested = a.model_requested)
FROM attempts a JOIN attempt_outcomes o ON o.attempt_id = a.attempt_id
WHERE o.prompt_tokens IS NOT NULL GROUP BY a.model_requested""")


@dataclass(frozen=True)
class ModelUsage:
    prompt_tokens: float
    completion_tokens: float
    attempts: int
    accepted: int

    @property
    def attempts_per_accept(self) -> float | None:
        return self.attempts / self.accepted if self.accepted else None


def observed_usage(ledger: Ledger) -> dict[str, ModelUsage]:
    """Average tokens per billed attempt and attempts per acceptance, by model requested."""
    with ledger.engine.connect() as conn:
        return {r[0]: ModelUsage(float(r[1] or 0), float(r[2] or 0), int(r[3]), int(r[4]))
                for r in conn.execute(_OBSERVED_USAGE)}


_UNJUDGED_RESPONSES = text("""
SELECT a.attempt_id, a.job_id, j.erroneous, j.correct, o.content, o.finish_reason
FROM attempt_outcomes o
JOIN attempts a ON a.attempt_id = o.attempt_id
JOIN jobs j ON j.job_id = a.job_id
WHERE o.content IS NOT NULL AND o.error_class IN ('ok', 'length', 'content_filter')
  AND a.attempt_id > :after
  AND NOT EXISTS (SELECT 1 FROM verdicts v
                  WHERE v.attempt_id = a.attempt_id AND v.filter_version = :version)
ORDER BY a.attempt_id LIMIT :n""")


@dataclass(frozen=True)
class StoredResponse:
    attempt_id: int
    job_id: str
    erroneous: str
    correct: str
    content: str
    finish_reason: str | None


def unjudged_responses(ledger: Ledger, filter_version: str, after: int,
                       n: int) -> list[StoredResponse]:
    """Stored responses with no verdict under `filter_version`, in attempt order, paged."""
    with ledger.engine.connect() as conn:
        return [StoredResponse(*r) for r in conn.execute(
            _UNJUDGED_RESPONSES, {"version": filter_version, "after": after, "n": n})]


def iter_events(ledger: Ledger, table: str, columns: Sequence[str], chunk: int = 50_000):  # type: ignore[no-untyped-def]
    """(seq, row_hash, values) of one event table in seq order, streamed in pages."""
    sql = text(f"SELECT seq, row_hash, {', '.join(columns)} FROM {table} "
               "WHERE seq > :after ORDER BY seq LIMIT :n")
    after = 0
    with ledger.engine.connect() as conn:
        while True:
            rows = conn.execute(sql, {"after": after, "n": chunk}).all()
            if not rows:
                return
            for r in rows:
                yield r[0], r[1], list(r[2:])
            after = rows[-1][0]


def trigger_names(ledger: Ledger) -> set[str]:
    sql = ("SELECT name FROM sqlite_master WHERE type = 'trigger'" if ledger.dialect == "sqlite"
           else "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    with ledger.engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql(sql)}


def projection_rows(ledger: Ledger) -> tuple[set[tuple], set[tuple]]:
    """(job_state without leases, open_attempts) as stored."""
    with ledger.engine.connect() as conn:
        js = {tuple(r[:8]) + (round(float(r[8]), 9),) for r in conn.exec_driver_sql(
            "SELECT job_id, seq, l1, pattern, level, state, attempts, last_attempt_no, spend_usd "
            "FROM job_state")}
        oa = {tuple(r) for r in conn.exec_driver_sql(
            "SELECT attempt_id, job_id, run_id, reserved_usd FROM open_attempts")}
    return js, oa


def replayed_projection_rows(ledger: Ledger) -> tuple[set[tuple], set[tuple]]:
    """The same projections computed from the events alone."""
    from .sql import REPLAY_JOB_STATE

    with ledger.engine.connect() as conn:
        js = {tuple(r[:8]) + (round(float(r[8]), 9),)
              for r in conn.exec_driver_sql(REPLAY_JOB_STATE)}
        oa = {tuple(r) for r in conn.exec_driver_sql(
            "SELECT at.attempt_id, at.job_id, at.run_id, at.reserved_usd FROM attempts at "
            "WHERE NOT EXISTS (SELECT 1 FROM attempt_outcomes o "
            "WHERE o.attempt_id = at.attempt_id)")}
    return js, oa


def money_totals(ledger: Ledger) -> tuple[float, float, float, int]:
    """(ledger_totals.spend_usd, SUM of outcome costs, SUM of job_state spend, duplicate
    acceptances)."""
    with ledger.engine.connect() as conn:
        totals = conn.exec_driver_sql("SELECT spend_usd FROM ledger_totals WHERE id = 1").scalar()
        outcomes = conn.exec_driver_sql("SELECT SUM(cost_usd) FROM attempt_outcomes").scalar()
        states = conn.exec_driver_sql("SELECT SUM(spend_usd) FROM job_state").scalar()
        dupes = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM (SELECT job_id FROM acceptances GROUP BY job_id "
            "HAVING COUNT(*) > 1) d").scalar()
    return float(totals or 0), float(outcomes or 0), float(states or 0), int(dupes or 0)


def chain_head(ledger: Ledger) -> tuple[int, str]:
    with ledger.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT head_seq, head_hash FROM ledger_totals WHERE id = 1").one()
    return int(row[0]), str(row[1])


def accepted_count(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT COUNT(*) FROM acceptances").scalar() or 0)


def event_hash_at(ledger: Ledger, seq: int) -> str | None:
    """The row_hash of the event with this seq, whichever table holds it."""
    from .schema import EVENT_TABLES

    sql = text(" UNION ALL ".join(f"SELECT row_hash FROM {t.name} WHERE seq = :seq"
                                  for t in EVENT_TABLES))
    with ledger.engine.connect() as conn:
        row = conn.execute(sql, {"seq": seq}).first()
    return row[0] if row else None


def model_history(ledger: Ledger, job_id: str,
                  filter_version: str) -> dict[str, tuple[int, int, int]]:
    """For a resumed job, per model requested since its last reopen: (transient failures,
    quality rejections under this filter version, permanent refusals such as 400/403)."""
    with ledger.engine.connect() as conn:
        return {r[0]: (int(r[1] or 0), int(r[2] or 0), int(r[3] or 0))
                for r in conn.execute(_model_history_sql(), {"job": job_id, "fv": filter_version})}


@lru_cache(maxsize=1)
def _model_history_sql() -> Any:
    """Built once, on the first resumed job: the error classes come from ledger.retry, which
    commands that never run (status, reports) need not import."""
    from .retry import NEXT_MODEL, RETRYABLE

    def listed(classes: frozenset[str]) -> str:
        return ", ".join(f"'{c}'" for c in sorted(classes))

    # A 404 does not use a model up for good: it may have come from a wrong base URL (the run
    # stopped on it, the job left open), and asking again costs nothing.
    used_up = NEXT_MODEL - {"not_found"}

    return text(f"""
SELECT a.model_requested,
       SUM(CASE WHEN o.error_class IN ({listed(RETRYABLE)}) THEN 1 ELSE 0 END),
       SUM(CASE WHEN v.passed = 0 THEN 1 ELSE 0 END),
       SUM(CASE WHEN o.error_class IN ({listed(used_up)}) THEN 1 ELSE 0 END)
FROM attempts a
JOIN attempt_outcomes o ON o.attempt_id = a.attempt_id
LEFT JOIN verdicts v ON v.attempt_id = a.attempt_id AND v.filter_version = :fv
WHERE a.job_id = :job
  AND a.seq > (SELECT COALESCE(MAX(r.seq), 0) FROM job_reopens r WHERE r.job_id = :job)
GROUP BY a.model_requested""")


# Where a filter's values live: job columns on job_state (one row per job, indexed by l1
# first); a model is the one a request asked for or the one that answered.
_FILTER_SOURCES = {"l1": (("job_state", "l1"),), "pattern": (("job_state", "pattern"),),
                   "level": (("job_state", "level"),),
                   "model": (("attempts", "model_requested"),
                             ("attempt_outcomes", "model_served"))}


def missing_filter_values(ledger: Ledger, kind: str, values: Sequence[str]
                          ) -> tuple[list[str], list[str]]:
    """(the values no row has, the values rows do have: at most 12) for a report or export
    filter of `kind` (l1, pattern, level, model); the second list is only read when the
    first is not empty."""
    sources = _FILTER_SOURCES[kind]
    probes = [text(f"SELECT 1 FROM {table} WHERE {column} = :v LIMIT 1")
              for table, column in sources]
    with ledger.engine.connect() as conn:
        missing = [v for v in values
                   if all(conn.execute(p, {"v": v}).first() is None for p in probes)]
        if not missing:
            return [], []
        table, column = sources[0]
        known = [r[0] for r in conn.execute(text(
            f"SELECT DISTINCT {column} FROM {table} ORDER BY {column} LIMIT 12"))]
    return missing, known

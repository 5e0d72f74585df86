"""Every runtime SQL statement of the store, named, in one place.

Statements are written once with `?` placeholders and translated to the driver's own style, then
run with `exec_driver_sql`: the hot path pays for no expression compilation.
"""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Table

CLAIMED_COLUMNS = ("j.job_id, j.l1, j.pattern, j.erroneous, j.correct, j.level, j.variant, "
                   "j.topic, j.persona, s.last_attempt_no")

_STORE_SQL = {
    "lock_totals": "SELECT head_seq, head_hash, next_id, spend_usd FROM ledger_totals "
                   "WHERE id = 1{for_update}",
    "update_totals": "UPDATE ledger_totals SET head_seq = ?, head_hash = ?, next_id = ?, "
                     "spend_usd = ? WHERE id = 1",
    # The jobs appended after a seq, opened; the order they go in is per dialect (Statements).
    "open_jobs_after": "INSERT INTO job_state (job_id, seq, l1, pattern, level, state, attempts, "
                       "last_attempt_no, spend_usd) SELECT job_id, seq, l1, pattern, level, "
                       "'open', 0, 0, 0.0 FROM jobs WHERE seq > ? ORDER BY {state_order}",
    "any_job": "SELECT 1 FROM jobs LIMIT 1",
    "select_claimable": "SELECT job_id FROM job_state WHERE state = 'open' AND "
                        "(lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY seq LIMIT ?"
                        "{skip_locked}",
    "lease_job": "UPDATE job_state SET lease_owner = ?, lease_expires_at = ? WHERE job_id = ?",
    "release_job": "UPDATE job_state SET lease_owner = NULL, lease_expires_at = NULL "
                   "WHERE job_id = ? AND lease_owner = ?",
    "run_stopped": "SELECT COUNT(*) FROM run_stops WHERE run_id = ?",
    "release_run_leases": "UPDATE job_state SET lease_owner = NULL, lease_expires_at = NULL "
                          "WHERE lease_owner = ?",
    # Locks the job's row where rows lock, so a concurrent claim skips it or is waited for.
    "job_lease": "SELECT state, lease_owner, last_attempt_no FROM job_state WHERE job_id = ?"
                 "{for_update}",
    "job_state_of": "SELECT state FROM job_state WHERE job_id = ?",
    "sum_open_reserved": "SELECT SUM(reserved_usd) FROM open_attempts",
    "count_open_of_run": "SELECT COUNT(*) FROM open_attempts WHERE run_id = ?",
    "insert_open_attempt": "INSERT INTO open_attempts (attempt_id, job_id, run_id, reserved_usd) "
                           "VALUES (?, ?, ?, ?)",
    "delete_open_attempt": "DELETE FROM open_attempts WHERE attempt_id = ?",
    "job_attempt_started": "UPDATE job_state SET attempts = attempts + 1, last_attempt_no = ?, "
                           "lease_expires_at = ? WHERE job_id = ?",
    "job_add_spend": "UPDATE job_state SET spend_usd = spend_usd + ? WHERE job_id = ?",
    # One statement settles the job and adds the accepted attempt's cost; no row changes when
    # another worker accepted the job first.
    "job_accept": "UPDATE job_state SET state = 'accepted', spend_usd = spend_usd + ?, "
                  "lease_owner = NULL, lease_expires_at = NULL "
                  "WHERE job_id = ? AND state <> 'accepted'",
    "job_set_state": "UPDATE job_state SET state = ?, lease_owner = NULL, "
                     "lease_expires_at = NULL WHERE job_id = ?",
    "select_failed": "SELECT job_id FROM job_state WHERE state = 'failed' ORDER BY seq",
    "reopen_job": "UPDATE job_state SET state = 'open' WHERE job_id = ?",
    # Rebuild: the projections as a pure function of the events.
    "clear_job_state": "DELETE FROM job_state",
    "clear_open_attempts": "DELETE FROM open_attempts",
    "rebuild_job_state": """
INSERT INTO job_state (job_id, seq, l1, pattern, level, state, attempts, last_attempt_no,
                       spend_usd, lease_owner, lease_expires_at)
{replay_job_state}""",
    "rebuild_open_attempts": """
INSERT INTO open_attempts (attempt_id, job_id, run_id, reserved_usd)
SELECT at.attempt_id, at.job_id, at.run_id, at.reserved_usd FROM attempts at
WHERE NOT EXISTS (SELECT 1 FROM attempt_outcomes o WHERE o.attempt_id = at.attempt_id)""",
    "rebuild_totals_source": """
SELECT h.seq, h.row_hash,
       (SELECT MAX(id) FROM ({ids}) x) + 1,
       (SELECT SUM(cost_usd) FROM attempt_outcomes)
FROM ({events}) h ORDER BY h.seq DESC LIMIT 1""",
}

REPLAY_JOB_STATE = """SELECT j.job_id, j.seq, j.l1, j.pattern, j.level,
       CASE WHEN acc.job_id IS NOT NULL THEN 'accepted'
            WHEN COALESCE(f.last_seq, 0) > COALESCE(r.last_seq, 0) THEN 'failed'
            ELSE 'open' END,
       COALESCE(a.n, 0), COALESCE(a.last_no, 0), COALESCE(a.spend, 0.0), NULL, NULL
FROM jobs j
LEFT JOIN acceptances acc ON acc.job_id = j.job_id
LEFT JOIN (SELECT job_id, MAX(seq) AS last_seq FROM job_failures GROUP BY job_id) f
       ON f.job_id = j.job_id
LEFT JOIN (SELECT job_id, MAX(seq) AS last_seq FROM job_reopens GROUP BY job_id) r
       ON r.job_id = j.job_id
LEFT JOIN (SELECT at.job_id, COUNT(*) AS n, MAX(at.attempt_no) AS last_no,
                  SUM(COALESCE(o.cost_usd, 0.0)) AS spend
           FROM attempts at LEFT JOIN attempt_outcomes o ON o.attempt_id = at.attempt_id
           GROUP BY at.job_id) a ON a.job_id = j.job_id"""

_ID_COLUMNS = {"attempts": "attempt_id", "verdicts": "verdict_id", "job_failures": "failure_id",
               "job_reopens": "reopen_id", "imports": "import_id", "prices": "price_id"}


def _event_union(cols: str) -> str:
    from .schema import EVENT_TABLES

    return " UNION ALL ".join(f"SELECT {cols} FROM {t.name}" for t in EVENT_TABLES)


class Statements:
    """The store's statements for one SQL dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        pg = dialect == "postgresql"
        # Row locks (FOR UPDATE [SKIP LOCKED]) exist: claims need not take the totals lock.
        self.row_locks = pg
        fmt = {
            "for_update": " FOR UPDATE" if pg else "",
            "skip_locked": " FOR UPDATE SKIP LOCKED" if pg else "",
            "ids": " UNION ALL ".join(f"SELECT {c} AS id FROM {t}" for t, c in _ID_COLUMNS.items())
            + " UNION ALL SELECT 0 AS id",
            "events": _event_union("seq, row_hash"),
            "replay_job_state": REPLAY_JOB_STATE,
            # SQLite stores job_state rows in the order they go in, and a run claims, starts
            # and finishes jobs in plan order: rows in seq order put the jobs of one group commit
            # on one page. Measured (c=64, 50 ms): 2.7 -> 0.6 pages written per job for
            # job_state, 17.7 -> 15.3 in all, the intent commit 10-20% less CPU; a 1M plan took
            # as long either way. PostgreSQL keeps job-id order (its key index walks forward).
            "state_order": "job_id" if pg else "seq",
        }
        self._sql = {name: self._translate(text.format(**fmt)) for name, text in _STORE_SQL.items()}

    def _translate(self, text: str) -> str:
        if self.dialect == "postgresql":
            return text.replace("%", "%%").replace("?", "%s")
        return text

    def __getitem__(self, name: str) -> str:
        return self._sql[name]

    @lru_cache(maxsize=64)  # noqa: B019 - a handful of tables, one Statements per store
    def insert(self, table: Table) -> str:
        cols = [c.name for c in table.columns if c.name not in ("seq", "row_hash")]
        cols += ["seq", "row_hash"]
        marks = ", ".join("?" for _ in cols)
        return self._translate(f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({marks})")

    def job_ids_in(self, n: int) -> str:
        return self._translate(f"SELECT job_id FROM jobs WHERE job_id IN ({', '.join('?' * n)})")

    def accepted_messages_in(self, n: int) -> str:
        """job_id, attempt_id and stored messages of the accepted attempts among n ids."""
        return self._translate(
            "SELECT acc.job_id, acc.attempt_id, v.messages_json FROM acceptances acc "
            "JOIN verdicts v ON v.verdict_id = acc.verdict_id "
            f"WHERE acc.attempt_id IN ({', '.join('?' * n)})")

    def claimed_in(self, n: int) -> str:
        return self._translate(
            f"SELECT {CLAIMED_COLUMNS} FROM jobs j JOIN job_state s ON s.job_id = j.job_id "
            f"WHERE j.job_id IN ({', '.join('?' * n)})")

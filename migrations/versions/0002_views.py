"""audit views over the event tables

Read-only SQL views that answer the ledger's cost and quality questions in plain SQL (`sqlite3
ledger.db 'SELECT * FROM v_cost_by_model'`). They are plain joins and aggregates that run on
SQLite and PostgreSQL alike; the two places where the dialects differ (splitting a verdict's JSON
list of rule ids into rows, and joining text across rows) are branched here by dialect.

`model_prices` is a view over literal rows: the bundled price table (ledger/data/prices.json) as
it was when this revision ran. It is a view rather than a seeded table so the schema keeps
exactly the tables ledger/schema.py declares; prices recorded later go to the `prices` events
and win over it (see v_effective_prices).

It also adds covering indexes (INDEXES below, mirrored in ledger/schema.py) so that each view
reads narrow index entries in the order it groups by: a million-job ledger answers in seconds.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 01:10:00.000000
"""
from __future__ import annotations

import json

from alembic import op
import sqlalchemy as sa

from ledger.pricing import BUNDLED_PRICES_PATH


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def _bundled_prices_select() -> str:
    """A SELECT of literal rows; repr() of a float is exact, so the prices round-trip."""
    data = json.loads(BUNDLED_PRICES_PATH.read_text(encoding="utf-8"))
    rows = []
    for model, price in sorted(data.get("models", {}).items()):
        quoted = "'" + model.replace("'", "''") + "'"
        rows.append(
            f"SELECT CAST({quoted} AS TEXT) AS model, "
            f"CAST({float(price['prompt'])!r} AS DOUBLE PRECISION) AS prompt_usd_per_token, "
            f"CAST({float(price['completion'])!r} AS DOUBLE PRECISION) "
            "AS completion_usd_per_token")
    if not rows:
        return ("SELECT CAST(NULL AS TEXT) AS model, CAST(NULL AS DOUBLE PRECISION) AS "
                "prompt_usd_per_token, CAST(NULL AS DOUBLE PRECISION) AS "
                "completion_usd_per_token WHERE 1 = 0")
    return "\nUNION ALL\n".join(rows)


# The rule ids of verdict `v`, one row each as `r.value`; reasons_json is a JSON list of strings.
_EACH_REASON = {
    "sqlite": "json_each(v.reasons_json) r",
    "postgresql": "LATERAL json_array_elements_text(CAST(v.reasons_json AS json)) AS r(value)",
}

# What sent a job down its chain: every attempt before the accepted one, in order, as
# "model: error_class" or "model: rejected (rule, rule)" from its newest verdict. The verdict is
# looked up per attempt (a scalar subquery on ix_verdicts_quality): as a join, PostgreSQL
# without statistics (a freshly filled ledger) would scan every verdict for every job.
_CAUSE = """x.model_requested || ': ' || COALESCE(
              (SELECT CASE WHEN lv.passed = 1 THEN 'passed (not accepted)'
                           ELSE 'rejected (' || REPLACE(REPLACE(REPLACE(
                                lv.reasons_json, '[', ''), ']', ''), '"', '') || ')' END
               FROM verdicts lv WHERE lv.attempt_id = x.attempt_id
               ORDER BY lv.verdict_id DESC LIMIT 1),
              xo.error_class, 'no outcome')"""
_CAUSE_FROM = """FROM attempts x
              LEFT JOIN attempt_outcomes xo ON xo.attempt_id = x.attempt_id
              WHERE x.job_id = acc.job_id AND x.attempt_no < a.attempt_no"""
_HOP_CAUSES = {
    # SQLite 3.40 has no ORDER BY inside GROUP_CONCAT; it concatenates in the order of an
    # ordered subquery.
    "sqlite": f"""(SELECT GROUP_CONCAT(cause, '; ') FROM (
              SELECT {_CAUSE} AS cause
              {_CAUSE_FROM}
              ORDER BY x.attempt_no))""",
    "postgresql": f"""(SELECT STRING_AGG({_CAUSE}, '; ' ORDER BY x.attempt_no)
              {_CAUSE_FROM})""",
}


_OUTCOME_SUMS = """COUNT(*) AS attempts,
         SUM(CASE WHEN o.cost_usd > 0 THEN 1 ELSE 0 END) AS billed_attempts,
         COALESCE(SUM(o.prompt_tokens), 0) AS prompt_tokens,
         COALESCE(SUM(o.completion_tokens), 0) AS completion_tokens,
         SUM(o.cost_usd) AS cost_usd, COUNT(acc.attempt_id) AS accepted"""
_RATE = "CAST(SUM(accepted) AS DOUBLE PRECISION) / SUM(attempts)"
_PER_ACCEPTED = "SUM(cost_usd) / NULLIF(SUM(accepted), 0)"

# Covering indexes: each lets a view read narrow index entries in the order it groups by
# instead of sorting a million wide rows (outcomes and verdicts carry the full dialogue text).
INDEXES: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    ("ix_attempt_outcomes_model_cost", "attempt_outcomes",
     ("model_served", "cost_usd", "prompt_tokens", "completion_tokens"), None),
    ("ix_attempt_outcomes_error_cost", "attempt_outcomes", ("error_class", "cost_usd"), None),
    ("ix_attempts_run_id", "attempts", ("run_id",), None),
    ("ix_attempts_fallback", "attempts", ("chain_position",), "chain_position > 0"),
    # verdict_id second: "an attempt's newest verdict" is one step down this index on
    # PostgreSQL too (SQLite keys every index by rowid anyway).
    ("ix_verdicts_quality", "verdicts",
     ("attempt_id", "verdict_id", "filter_version", "passed", "turns", "tutor_questions",
      "self_corrected"), None),
    # passed is listed although the WHERE fixes it: SQLite 3.40 counts an index as covering
    # only for the columns it stores.
    ("ix_verdicts_rejected", "verdicts", ("attempt_id", "passed", "reasons_json"), "passed = 0"),
    ("ix_job_state_cell", "job_state",
     ("l1", "pattern", "level", "state", "spend_usd", "attempts"), None),
)


def _views(dialect: str) -> list[tuple[str, str]]:
    """(name, SELECT) in dependency order: a view only reads views listed before it."""
    return [
        ("model_prices", _bundled_prices_select()),
        ("v_effective_prices", """
SELECT p.model, p.prompt_usd_per_token, p.completion_usd_per_token, p.source
FROM prices p
WHERE NOT EXISTS (SELECT 1 FROM prices later WHERE later.model = p.model AND later.seq > p.seq)
UNION ALL
SELECT b.model, b.prompt_usd_per_token, b.completion_usd_per_token, 'bundled' AS source
FROM model_prices b
WHERE NOT EXISTS (SELECT 1 FROM prices p WHERE p.model = b.model)"""),
        # One row per attempt. The job's l1/pattern/level come from job_state, which is indexed
        # by them. Every join is a LEFT JOIN on a unique key, so SQLite skips the ones a query
        # takes no column from.
        ("v_attempt_facts", """
SELECT a.attempt_id, a.job_id, s.l1, s.pattern, s.level, a.attempt_no, a.run_id,
       a.model_requested, o.model_served,
       COALESCE(o.model_served, a.model_requested) AS model,
       a.chain_position, a.prompt_version, a.max_tokens, a.reserved_usd, a.started_at_utc,
       o.finished_at_utc,
       CASE WHEN o.attempt_id IS NULL THEN 0 ELSE 1 END AS has_outcome,
       o.error_class, o.http_status, o.provider, o.prompt_tokens, o.completion_tokens,
       COALESCE(o.cost_usd, 0.0) AS cost_usd, o.cost_source, o.latency_ms, o.finish_reason,
       CASE WHEN o.cost_usd > 0 THEN 1 ELSE 0 END AS billed,
       CASE WHEN acc.attempt_id IS NULL THEN 0 ELSE 1 END AS accepted
FROM attempts a
LEFT JOIN job_state s ON s.job_id = a.job_id
LEFT JOIN attempt_outcomes o ON o.attempt_id = a.attempt_id
LEFT JOIN acceptances acc ON acc.attempt_id = a.attempt_id"""),
        # An attempt re-judged under a newer filter version is judged by its newest verdict.
        ("v_latest_verdicts", """
SELECT v.verdict_id, v.attempt_id, v.filter_version, v.passed, v.reasons_json, v.turns,
       v.tutor_questions, v.self_corrected, v.created_at_utc
FROM verdicts v
WHERE NOT EXISTS (SELECT 1 FROM verdicts newer
                  WHERE newer.attempt_id = v.attempt_id AND newer.verdict_id > v.verdict_id)"""),
        ("v_rejection_reasons", f"""
SELECT v.verdict_id, v.attempt_id, v.filter_version, r.value AS reason
FROM v_latest_verdicts v
CROSS JOIN {_EACH_REASON[dialect]}
WHERE v.passed = 0"""),
        ("v_accepted_dialogues", """
SELECT j.job_id, j.l1, j.pattern, j.level, j.variant, j.topic, j.persona, j.erroneous,
       j.correct, j.source, a.attempt_id, a.attempt_no, a.run_id, a.model_requested,
       o.model_served, a.chain_position, a.prompt_version, v.filter_version,
       o.cost_usd, s.spend_usd AS job_spend_usd, v.turns, v.tutor_questions,
       v.self_corrected, v.messages_json, acc.seq AS accepted_seq,
       acc.created_at_utc AS accepted_at_utc
FROM acceptances acc
JOIN jobs j ON j.job_id = acc.job_id
JOIN attempts a ON a.attempt_id = acc.attempt_id
JOIN attempt_outcomes o ON o.attempt_id = acc.attempt_id
JOIN verdicts v ON v.verdict_id = acc.verdict_id
JOIN job_state s ON s.job_id = acc.job_id"""),
        ("v_job_state", """
SELECT j.job_id, j.l1, j.pattern, j.level, j.variant, j.topic, j.persona, j.source,
       j.erroneous, j.correct, j.planned_at_utc, s.state, s.attempts, s.spend_usd,
       s.lease_owner, s.lease_expires_at, acc.attempt_id AS accepted_attempt_id,
       COALESCE(o.model_served, a.model_requested) AS accepted_model,
       acc.created_at_utc AS accepted_at_utc
FROM jobs j
JOIN job_state s ON s.job_id = j.job_id
LEFT JOIN acceptances acc ON acc.job_id = j.job_id
LEFT JOIN attempts a ON a.attempt_id = acc.attempt_id
LEFT JOIN attempt_outcomes o ON o.attempt_id = acc.attempt_id"""),
        # An attempt without an outcome whose run has stopped is not in flight: its process
        # died between request and response, and the provider may have billed it. LEFT JOINs
        # keep the small open_attempts table as the driving one on SQLite.
        ("v_orphaned_attempts", """
SELECT oa.attempt_id, a.job_id, s.l1, s.pattern, a.attempt_no, a.run_id,
       a.model_requested, a.chain_position, a.reserved_usd, a.started_at_utc,
       CASE WHEN rs.run_id IS NULL THEN 0 ELSE 1 END AS run_stopped,
       rs.reason AS run_stop_reason,
       CASE WHEN rs.run_id IS NULL THEN 'in flight, or its run died unrecorded'
            ELSE 'may have been billed' END AS note
FROM open_attempts oa
LEFT JOIN attempts a ON a.attempt_id = oa.attempt_id
LEFT JOIN job_state s ON s.job_id = oa.job_id
LEFT JOIN run_stops rs ON rs.run_id = a.run_id"""),
        # Summed from three disjoint sources so the bulk (outcomes naming the model that
        # served them) is read in model order from ix_attempt_outcomes_model_cost, with no
        # sort: outcomes without model_served and attempts without an outcome fall back to
        # the model requested.
        ("v_cost_by_model", f"""
SELECT model, SUM(attempts) AS attempts, SUM(billed_attempts) AS billed_attempts,
       SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens,
       SUM(cost_usd) AS cost_usd, SUM(accepted) AS accepted,
       {_RATE} AS acceptance_rate, {_PER_ACCEPTED} AS cost_per_accepted_usd
FROM (
  SELECT o.model_served AS model, {_OUTCOME_SUMS}
  FROM attempt_outcomes o
  LEFT JOIN acceptances acc ON acc.attempt_id = o.attempt_id
  WHERE o.model_served IS NOT NULL
  GROUP BY o.model_served
  UNION ALL
  SELECT a.model_requested AS model, {_OUTCOME_SUMS}
  FROM attempt_outcomes o
  JOIN attempts a ON a.attempt_id = o.attempt_id
  LEFT JOIN acceptances acc ON acc.attempt_id = o.attempt_id
  WHERE o.model_served IS NULL
  GROUP BY a.model_requested
  UNION ALL
  SELECT a.model_requested AS model, COUNT(*) AS attempts, 0 AS billed_attempts,
         0 AS prompt_tokens, 0 AS completion_tokens, 0.0 AS cost_usd, 0 AS accepted
  FROM open_attempts oa
  JOIN attempts a ON a.attempt_id = oa.attempt_id
  GROUP BY a.model_requested
) by_source
GROUP BY model"""),
        ("v_cost_by_run", """
SELECT run_id, attempts, billed_attempts, prompt_tokens, completion_tokens, cost_usd,
       accepted, CAST(accepted AS DOUBLE PRECISION) / attempts AS acceptance_rate,
       cost_usd / NULLIF(accepted, 0) AS cost_per_accepted_usd
FROM (
  SELECT a.run_id, COUNT(*) AS attempts,
         SUM(CASE WHEN o.cost_usd > 0 THEN 1 ELSE 0 END) AS billed_attempts,
         COALESCE(SUM(o.prompt_tokens), 0) AS prompt_tokens,
         COALESCE(SUM(o.completion_tokens), 0) AS completion_tokens,
         COALESCE(SUM(o.cost_usd), 0.0) AS cost_usd, COUNT(acc.attempt_id) AS accepted
  FROM attempts a
  LEFT JOIN attempt_outcomes o ON o.attempt_id = a.attempt_id
  LEFT JOIN acceptances acc ON acc.attempt_id = a.attempt_id
  GROUP BY a.run_id
) per_run"""),
        # By L1 and by pattern, from the job_state projection: one row per job, read from
        # ix_job_state_cell in (l1, pattern) order.
        ("v_cost_by_l1", """
SELECT l1, COUNT(*) AS jobs, SUM(attempts) AS attempts,
       SUM(CASE WHEN state = 'accepted' THEN 1 ELSE 0 END) AS accepted,
       SUM(spend_usd) AS cost_usd,
       SUM(spend_usd) / NULLIF(SUM(CASE WHEN state = 'accepted' THEN 1 ELSE 0 END), 0)
           AS cost_per_accepted_usd
FROM job_state
GROUP BY l1"""),
        ("v_cost_by_pattern", """
SELECT pattern, SUM(jobs) AS jobs, SUM(attempts) AS attempts, SUM(accepted) AS accepted,
       SUM(cost_usd) AS cost_usd,
       SUM(cost_usd) / NULLIF(SUM(accepted), 0) AS cost_per_accepted_usd
FROM (
  SELECT l1, pattern, COUNT(*) AS jobs, SUM(attempts) AS attempts,
         SUM(CASE WHEN state = 'accepted' THEN 1 ELSE 0 END) AS accepted,
         SUM(spend_usd) AS cost_usd
  FROM job_state
  GROUP BY l1, pattern
) per_cell
GROUP BY pattern"""),
        # A rejected attempt counts once under every rule it failed, so the 'rejected' rows
        # add up to more than was spent on rejections. An attempt without a verdict got no
        # usable answer: it counts under its error class. CROSS JOIN fixes SQLite's join
        # order (PostgreSQL plans it as any inner join): outcomes come from the narrow
        # ix_attempt_outcomes_error_cost, which carries cost_usd, and rejected verdicts from
        # the partial ix_verdicts_rejected, which carries reasons_json.
        ("v_waste_by_reason", f"""
SELECT 'rejected' AS kind, r.value AS reason, COUNT(*) AS attempts, SUM(o.cost_usd) AS cost_usd
FROM attempt_outcomes o
CROSS JOIN verdicts v
CROSS JOIN {_EACH_REASON[dialect]}
WHERE v.attempt_id = o.attempt_id AND v.passed = 0
  AND NOT EXISTS (SELECT 1 FROM verdicts newer
                  WHERE newer.attempt_id = v.attempt_id AND newer.verdict_id > v.verdict_id)
  AND NOT EXISTS (SELECT 1 FROM acceptances acc WHERE acc.attempt_id = v.attempt_id)
GROUP BY r.value
UNION ALL
SELECT 'error' AS kind, o.error_class AS reason, COUNT(*) AS attempts,
       SUM(o.cost_usd) AS cost_usd
FROM attempt_outcomes o
WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.attempt_id = o.attempt_id)
GROUP BY o.error_class"""),
        ("v_fallback_audit", f"""
SELECT h.*, p.source AS first_model_price_source,
       h.job_cost_usd - (COALESCE(h.prompt_tokens, 0) * p.prompt_usd_per_token
                         + COALESCE(h.completion_tokens, 0) * p.completion_usd_per_token)
           AS extra_cost_usd
FROM (
  SELECT acc.job_id, j.l1, j.pattern, j.level, acc.attempt_id AS accepted_attempt_id,
         (SELECT f.model_requested FROM attempts f
          WHERE f.job_id = acc.job_id AND f.chain_position = 0
          ORDER BY f.attempt_no LIMIT 1) AS first_model,
         a.model_requested, o.model_served, a.chain_position, a.chain_position + 1 AS chain_depth,
         a.attempt_no AS attempts,
         {_HOP_CAUSES[dialect]} AS hop_causes,
         o.prompt_tokens, o.completion_tokens, o.cost_usd AS accepted_cost_usd,
         (SELECT SUM(jo.cost_usd) FROM attempts ja
          JOIN attempt_outcomes jo ON jo.attempt_id = ja.attempt_id
          WHERE ja.job_id = acc.job_id) AS job_cost_usd,
         acc.created_at_utc AS accepted_at_utc
  FROM attempts a
  JOIN acceptances acc ON acc.attempt_id = a.attempt_id
  JOIN jobs j ON j.job_id = a.job_id
  JOIN attempt_outcomes o ON o.attempt_id = a.attempt_id
  WHERE a.chain_position > 0
) h
LEFT JOIN v_effective_prices p ON p.model = h.first_model"""),
        ("v_coverage", """
SELECT l1, pattern, COUNT(*) AS planned,
       SUM(CASE WHEN state = 'accepted' THEN 1 ELSE 0 END) AS accepted,
       SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed,
       SUM(CASE WHEN state = 'accepted' THEN 0 ELSE 1 END) AS remaining,
       CAST(100.0 * SUM(CASE WHEN state = 'accepted' THEN 1 ELSE 0 END) AS DOUBLE PRECISION)
           / COUNT(*) AS accepted_pct
FROM job_state
GROUP BY l1, pattern"""),
        ("v_runs", """
SELECT r.run_id, r.started_at_utc, s.stopped_at_utc, s.reason, s.exit_code, s.limit_source,
       r.host, r.pid, r.prompt_version, r.filter_version,
       COALESCE(c.attempts, 0) AS attempts, COALESCE(c.accepted, 0) AS accepted,
       COALESCE(c.cost_usd, 0.0) AS spend_usd
FROM runs r
LEFT JOIN run_stops s ON s.run_id = r.run_id
LEFT JOIN v_cost_by_run c ON c.run_id = r.run_id"""),
        # The model that answered, looked up on the attempt only when the outcome lacks it.
        # Every verdict has an outcome; reading outcomes first (CROSS JOIN fixes the order on
        # SQLite) keeps both sides in narrow covering indexes.
        ("v_quality", """
SELECT model, filter_version, COUNT(*) AS verdicts, SUM(passed) AS passed,
       CAST(SUM(passed) AS DOUBLE PRECISION) / COUNT(*) AS pass_rate,
       CAST(AVG(turns) AS DOUBLE PRECISION) AS avg_turns,
       CAST(AVG(tutor_questions) AS DOUBLE PRECISION) AS avg_tutor_questions,
       CAST(SUM(self_corrected) AS DOUBLE PRECISION) / COUNT(*) AS self_correction_rate
FROM (
  SELECT COALESCE(o.model_served, (SELECT a.model_requested FROM attempts a
                                   WHERE a.attempt_id = o.attempt_id)) AS model,
         v.filter_version, v.passed, v.turns, v.tutor_questions, v.self_corrected
  FROM attempt_outcomes o
  CROSS JOIN verdicts v
  WHERE v.attempt_id = o.attempt_id
) judged
GROUP BY model, filter_version"""),
    ]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, table, columns, where in INDEXES:
        partial = {} if where is None else {"sqlite_where": sa.text(where),
                                            "postgresql_where": sa.text(where)}
        op.create_index(name, table, list(columns), unique=False, **partial)
    for name, select in _views(dialect):
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, _select in reversed(_views(dialect)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name, table, _columns, _where in reversed(INDEXES):
        op.drop_index(name, table_name=table)

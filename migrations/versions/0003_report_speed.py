"""report speed: narrow lookups by attempt for cost by run and the accepted verdicts

Two covering indexes keyed by attempt, for the reads that visit one row per attempt:
`ix_attempt_outcomes_attempt_cost` carries an outcome's model, cost and tokens, so summing
outcomes by run looks each attempt up in a narrow index instead of the outcome rows (which
hold the whole response text); `ix_acceptances_attempt_verdict` lets the accepted dialogues'
verdicts be read by (attempt, verdict) from two narrow indexes.

SQLite looks a row up by its INTEGER PRIMARY KEY whenever it can, even where a covering index
on the same key would read a tenth of the pages, so v_cost_by_run names the index on SQLite
(INDEXED BY). v_runs reads v_cost_by_run, so it is dropped and recreated with it; its text is
unchanged. Downgrade restores 0002's definitions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 02:30:00.000000
"""
from __future__ import annotations

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

INDEXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ix_attempt_outcomes_attempt_cost", "attempt_outcomes",
     ("attempt_id", "model_served", "cost_usd", "prompt_tokens", "completion_tokens")),
    ("ix_acceptances_attempt_verdict", "acceptances", ("attempt_id", "verdict_id")),
)

_OUTCOMES_BY_ATTEMPT = {
    "sqlite": "attempt_outcomes o INDEXED BY ix_attempt_outcomes_attempt_cost",
    "postgresql": "attempt_outcomes o",
}

_COST_BY_RUN = """
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
  LEFT JOIN {outcomes} ON o.attempt_id = a.attempt_id
  LEFT JOIN acceptances acc ON acc.attempt_id = a.attempt_id
  GROUP BY a.run_id
) per_run"""

_RUNS = """
SELECT r.run_id, r.started_at_utc, s.stopped_at_utc, s.reason, s.exit_code, s.limit_source,
       r.host, r.pid, r.prompt_version, r.filter_version,
       COALESCE(c.attempts, 0) AS attempts, COALESCE(c.accepted, 0) AS accepted,
       COALESCE(c.cost_usd, 0.0) AS spend_usd
FROM runs r
LEFT JOIN run_stops s ON s.run_id = r.run_id
LEFT JOIN v_cost_by_run c ON c.run_id = r.run_id"""


def _views(outcomes: str) -> list[tuple[str, str]]:
    """(name, SELECT) in dependency order."""
    return [("v_cost_by_run", _COST_BY_RUN.format(outcomes=outcomes)), ("v_runs", _RUNS)]


def _replace_views(views: list[tuple[str, str]]) -> None:
    for name, _select in reversed(views):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name, select in views:
        op.execute(f"CREATE VIEW {name} AS {select}")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, table, columns in INDEXES:
        op.create_index(name, table, list(columns), unique=False)
    _replace_views(_views(_OUTCOMES_BY_ATTEMPT[dialect]))


def downgrade() -> None:
    _replace_views(_views("attempt_outcomes o"))
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)

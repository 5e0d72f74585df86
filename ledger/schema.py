"""Table definitions: the insert-only event tables, the projections derived from them, and the DDL
that makes the event tables append-only.

Event tables carry `seq` (one global order over every event) and `row_hash` (SHA-256 chained to the
previous event), so `verify` can name the first altered or removed row. Projections are plain
tables rewritten in the same transaction as the events; `rebuild` derives them from events alone.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)

# Named constraints make Alembic batch-mode rebuilds and downgrades deterministic on SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Float(53) is a double on PostgreSQL: costs must round-trip exactly for the hash chain.
Money = Float(53)


def _chain_columns() -> list[Column]:
    return [
        Column("seq", Integer, nullable=False, unique=True),
        Column("row_hash", Text, nullable=False),
    ]


jobs = Table(
    "jobs",
    metadata,
    Column("job_id", Text, primary_key=True),
    *_chain_columns(),
    Column("l1", Text, nullable=False),
    Column("pattern", Text, nullable=False),
    Column("erroneous", Text, nullable=False),
    Column("correct", Text, nullable=False),
    Column("level", Text, nullable=False),
    Column("variant", Integer, nullable=False),
    Column("topic", Text, nullable=False),
    Column("persona", Text, nullable=False),
    Column("source", Text, nullable=False),  # 'plan' | 'import'
    Column("planned_at_utc", Text, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    *_chain_columns(),
    Column("started_at_utc", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("prompt_version", Text, nullable=False),
    Column("filter_version", Text, nullable=False),
    Column("config_json", Text, nullable=False),
)

run_stops = Table(
    "run_stops",
    metadata,
    Column("run_id", Text, ForeignKey("runs.run_id"), primary_key=True),
    *_chain_columns(),
    Column("stopped_at_utc", Text, nullable=False),
    # 'done' | 'credit' | 'budget' | 'key' | 'endpoint' | 'interrupted' | 'error' | 'died'
    Column("reason", Text, nullable=False),
    Column("exit_code", Integer, nullable=False),
    Column("limit_source", Text),
    Column("message", Text),
)

attempts = Table(
    "attempts",
    metadata,
    Column("attempt_id", Integer, primary_key=True, autoincrement=False),
    *_chain_columns(),
    Column("job_id", Text, ForeignKey("jobs.job_id"), nullable=False),
    Column("attempt_no", Integer, nullable=False),
    Column("run_id", Text, ForeignKey("runs.run_id")),
    Column("model_requested", Text, nullable=False),
    Column("chain_position", Integer, nullable=False),
    Column("prompt_version", Text, nullable=False),
    Column("max_tokens", Integer, nullable=False),
    Column("reserved_usd", Money, nullable=False),
    Column("started_at_utc", Text, nullable=False),
    UniqueConstraint("job_id", "attempt_no", name="uq_attempts_job_id_attempt_no"),
)

attempt_outcomes = Table(
    "attempt_outcomes",
    metadata,
    Column("attempt_id", Integer, ForeignKey("attempts.attempt_id"), primary_key=True,
           autoincrement=False),
    *_chain_columns(),
    Column("finished_at_utc", Text, nullable=False),
    Column("http_status", Integer),
    Column("error_class", Text, nullable=False),
    Column("error_code", Integer),
    Column("error_type", Text),
    Column("limit_source", Text),
    Column("retry_after_s", Money),
    Column("message", Text),
    Column("model_served", Text),
    Column("provider", Text),
    Column("generation_id", Text),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cost_usd", Money, nullable=False),
    Column("cost_source", Text, nullable=False),  # 'response' | 'generation' | 'estimate' | 'none'
    Column("latency_ms", Money),
    Column("finish_reason", Text),
    Column("content", Text),
)

verdicts = Table(
    "verdicts",
    metadata,
    Column("verdict_id", Integer, primary_key=True, autoincrement=False),
    *_chain_columns(),
    Column("attempt_id", Integer, ForeignKey("attempts.attempt_id"), nullable=False),
    Column("filter_version", Text, nullable=False),
    Column("passed", Integer, nullable=False),
    Column("reasons_json", Text, nullable=False),
    Column("turns", Integer, nullable=False),
    Column("tutor_questions", Integer, nullable=False),
    Column("self_corrected", Integer, nullable=False),
    Column("metrics_json", Text, nullable=False),
    Column("messages_json", Text),  # the normalised chat messages; what exports read
    Column("created_at_utc", Text, nullable=False),
    UniqueConstraint("attempt_id", "filter_version", name="uq_verdicts_attempt_id_filter_version"),
)

acceptances = Table(
    "acceptances",
    metadata,
    # One acceptance per job, enforced by the primary key.
    Column("job_id", Text, ForeignKey("jobs.job_id"), primary_key=True),
    *_chain_columns(),
    Column("attempt_id", Integer, ForeignKey("attempts.attempt_id"), nullable=False,
           unique=True),
    Column("verdict_id", Integer, ForeignKey("verdicts.verdict_id"), nullable=False),
    Column("created_at_utc", Text, nullable=False),
)

job_failures = Table(
    "job_failures",
    metadata,
    Column("failure_id", Integer, primary_key=True, autoincrement=False),
    *_chain_columns(),
    Column("job_id", Text, ForeignKey("jobs.job_id"), nullable=False),
    Column("run_id", Text, ForeignKey("runs.run_id")),
    Column("reasons_json", Text, nullable=False),
    Column("created_at_utc", Text, nullable=False),
)

job_reopens = Table(
    "job_reopens",
    metadata,
    Column("reopen_id", Integer, primary_key=True, autoincrement=False),
    *_chain_columns(),
    Column("job_id", Text, ForeignKey("jobs.job_id"), nullable=False),
    Column("run_id", Text, ForeignKey("runs.run_id")),
    Column("created_at_utc", Text, nullable=False),
)

imports = Table(
    "imports",
    metadata,
    Column("import_id", Integer, primary_key=True, autoincrement=False),
    *_chain_columns(),
    Column("source_path", Text, nullable=False),
    Column("source_sha256", Text, nullable=False),
    Column("lines_total", Integer, nullable=False),
    Column("lines_imported", Integer, nullable=False),
    Column("lines_skipped", Integer, nullable=False),
    Column("created_at_utc", Text, nullable=False),
)

prices = Table(
    "prices",
    metadata,
    Column("price_id", Integer, primary_key=True, autoincrement=False),
    *_chain_columns(),
    Column("model", Text, nullable=False),
    Column("prompt_usd_per_token", Money, nullable=False),
    Column("completion_usd_per_token", Money, nullable=False),
    Column("source", Text, nullable=False),  # 'bundled' | 'models_api' | 'config'
    Column("fetched_at_utc", Text, nullable=False),
)

EVENT_TABLES: tuple[Table, ...] = (
    jobs, runs, run_stops, attempts, attempt_outcomes, verdicts, acceptances, job_failures,
    job_reopens, imports, prices,
)

# --- projections: derived, rebuildable, written with the events they reflect -------------------

job_state = Table(
    "job_state",
    metadata,
    Column("job_id", Text, ForeignKey("jobs.job_id"), primary_key=True),
    Column("seq", Integer, nullable=False),  # plan order: claims take the oldest open job first
    Column("l1", Text, nullable=False),
    Column("pattern", Text, nullable=False),
    Column("level", Text, nullable=False),
    Column("state", Text, nullable=False),  # 'open' | 'accepted' | 'failed'
    Column("attempts", Integer, nullable=False),
    Column("last_attempt_no", Integer, nullable=False),
    Column("spend_usd", Money, nullable=False),
    # Leases are not events: they are claims that expire, and a rebuild starts with none.
    Column("lease_owner", Text),
    Column("lease_expires_at", Money),
)

# The partial index keeps "next open job" cheap when almost every job is already done.
Index("ix_job_state_open", job_state.c.seq, sqlite_where=text("state = 'open'"),
      postgresql_where=text("state = 'open'"))

open_attempts = Table(
    "open_attempts",
    metadata,
    # Attempts whose outcome is not recorded yet: in flight, or lost in a crash (maybe billed).
    Column("attempt_id", Integer, ForeignKey("attempts.attempt_id"), primary_key=True,
           autoincrement=False),
    Column("job_id", Text, nullable=False),
    Column("run_id", Text),
    Column("reserved_usd", Money, nullable=False),
)

ledger_totals = Table(
    "ledger_totals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("head_seq", Integer, nullable=False),
    Column("head_hash", Text, nullable=False),
    Column("next_id", Integer, nullable=False),
    Column("spend_usd", Money, nullable=False),
)

PROJECTION_TABLES: tuple[Table, ...] = (job_state, open_attempts, ledger_totals)

GENESIS_HASH = "0" * 64

# Per-job failure lookups. Attempts by job and verdicts by attempt use their unique keys
# (migration 0006 dropped the single-column indexes that were those keys' prefixes).
Index("ix_job_failures_job_id", job_failures.c.job_id)


def _unique_keys(table: Table) -> list[list[str]]:
    keys = [[c.name for c in table.primary_key.columns]]
    for c in table.columns:
        if c.unique:
            keys.append([c.name])
    for cons in table.constraints:
        if isinstance(cons, UniqueConstraint):
            keys.append([c.name for c in cons.columns])
    # A column marked unique also appears as its UniqueConstraint: guard each key once, since
    # every check is an index lookup on every insert.
    return [list(key) for key in dict.fromkeys(tuple(key) for key in keys)]


def insert_guard_ddl(table: Table) -> tuple[str, str]:
    """SQLite: (drop, create) of the BEFORE INSERT guard of one event table."""
    name = table.name
    collide = " OR ".join(
        "EXISTS (SELECT 1 FROM {t} WHERE {cond})".format(
            t=name, cond=" AND ".join(f"{c} = NEW.{c}" for c in key))
        for key in _unique_keys(table)
    )
    return (f"DROP TRIGGER IF EXISTS trg_{name}_no_replace",
            f"CREATE TRIGGER trg_{name}_no_replace BEFORE INSERT ON {name} WHEN {collide} "
            f"BEGIN SELECT RAISE(ABORT, '{name} is append-only: an event with this key exists'); END")


def append_only_ddl(dialect: str, table: Table) -> list[str]:
    """DDL that makes one event table insert-only.

    SQLite: UPDATE and DELETE abort; a BEFORE INSERT guard aborts an insert that would collide
    with an existing key, so `INSERT OR REPLACE` cannot delete-and-reinsert a row even on a
    connection (the sqlite3 shell, say) that lacks `recursive_triggers`.
    """
    name = table.name
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER trg_{name}_no_update BEFORE UPDATE ON {name} "
            f"BEGIN SELECT RAISE(ABORT, '{name} is append-only: event rows cannot be updated'); END",
            f"CREATE TRIGGER trg_{name}_no_delete BEFORE DELETE ON {name} "
            f"BEGIN SELECT RAISE(ABORT, '{name} is append-only: event rows cannot be deleted'); END",
            insert_guard_ddl(table)[1],
        ]
    if dialect == "postgresql":
        return [
            f"CREATE TRIGGER trg_{name}_append_only BEFORE UPDATE OR DELETE ON {name} "
            f"FOR EACH ROW EXECUTE FUNCTION ledger_append_only()",
            f"CREATE TRIGGER trg_{name}_no_truncate BEFORE TRUNCATE ON {name} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()",
        ]
    raise ValueError(f"unsupported database dialect: {dialect}")


POSTGRES_APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: event rows cannot be %d', TG_TABLE_NAME, lower(TG_OP);
END;
$$ LANGUAGE plpgsql
"""


def drop_append_only_ddl(dialect: str, table: Table) -> list[str]:
    name = table.name
    if dialect == "sqlite":
        return [f"DROP TRIGGER IF EXISTS trg_{name}_{k}" for k in ("no_update", "no_delete",
                                                                   "no_replace")]
    return [f"DROP TRIGGER IF EXISTS trg_{name}_append_only ON {name}",
            f"DROP TRIGGER IF EXISTS trg_{name}_no_truncate ON {name}"]

# Indexes the reporting views lean on (created in migration 0002). The two cost indexes carry
# attempt_id after their group column, so a new outcome goes in at the end of its group's range
# (migration 0007).
Index("ix_attempt_outcomes_model_cost", attempt_outcomes.c.model_served,
      attempt_outcomes.c.attempt_id, attempt_outcomes.c.cost_usd,
      attempt_outcomes.c.prompt_tokens, attempt_outcomes.c.completion_tokens)
Index("ix_attempt_outcomes_error_cost", attempt_outcomes.c.error_class,
      attempt_outcomes.c.attempt_id, attempt_outcomes.c.cost_usd)
Index("ix_attempts_run_id", attempts.c.run_id)
Index("ix_attempts_fallback", attempts.c.chain_position,
      sqlite_where=text("chain_position > 0"), postgresql_where=text("chain_position > 0"))
Index("ix_verdicts_quality", verdicts.c.attempt_id, verdicts.c.verdict_id,
      verdicts.c.filter_version, verdicts.c.passed, verdicts.c.turns,
      verdicts.c.tutor_questions, verdicts.c.self_corrected)
Index("ix_verdicts_rejected", verdicts.c.attempt_id, verdicts.c.passed, verdicts.c.reasons_json,
      sqlite_where=text("passed = 0"), postgresql_where=text("passed = 0"))
Index("ix_job_state_cell", job_state.c.l1, job_state.c.pattern, job_state.c.level,
      job_state.c.state, job_state.c.spend_usd, job_state.c.attempts)
# Indexes keyed by attempt for per-attempt lookups in the reports (migration 0003).
Index("ix_attempt_outcomes_attempt_cost", attempt_outcomes.c.attempt_id,
      attempt_outcomes.c.model_served, attempt_outcomes.c.cost_usd,
      attempt_outcomes.c.prompt_tokens, attempt_outcomes.c.completion_tokens)
Index("ix_acceptances_attempt_verdict", acceptances.c.attempt_id, acceptances.c.verdict_id)
# Status reads counts and spend by (l1, state), and jobs in flight from the leased few
# (migration 0004; the first replaces 0001's (l1, state) index, its prefix).
Index("ix_job_state_l1_state_spend", job_state.c.l1, job_state.c.state, job_state.c.spend_usd)
Index("ix_job_state_leased", job_state.c.lease_owner,
      sqlite_where=text("lease_owner IS NOT NULL"),
      postgresql_where=text("lease_owner IS NOT NULL"))

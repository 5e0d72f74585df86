"""event tables, projections, append-only triggers

The first schema: insert-only event tables guarded by triggers, the projections derived from
them, and the single ledger_totals row that carries the hash-chain head.

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 00:47:19.821374
"""
from alembic import op
import sqlalchemy as sa

from ledger.schema import (
    EVENT_TABLES,
    GENESIS_HASH,
    POSTGRES_APPEND_ONLY_FUNCTION,
    append_only_ddl,
    drop_append_only_ddl,
)


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('imports',
    sa.Column('import_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('source_path', sa.Text(), nullable=False),
    sa.Column('source_sha256', sa.Text(), nullable=False),
    sa.Column('lines_total', sa.Integer(), nullable=False),
    sa.Column('lines_imported', sa.Integer(), nullable=False),
    sa.Column('lines_skipped', sa.Integer(), nullable=False),
    sa.Column('created_at_utc', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('import_id', name=op.f('pk_imports')),
    sa.UniqueConstraint('seq', name=op.f('uq_imports_seq'))
    )
    op.create_table('jobs',
    sa.Column('job_id', sa.Text(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('l1', sa.Text(), nullable=False),
    sa.Column('pattern', sa.Text(), nullable=False),
    sa.Column('erroneous', sa.Text(), nullable=False),
    sa.Column('correct', sa.Text(), nullable=False),
    sa.Column('level', sa.Text(), nullable=False),
    sa.Column('variant', sa.Integer(), nullable=False),
    sa.Column('topic', sa.Text(), nullable=False),
    sa.Column('persona', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('planned_at_utc', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('seq', name=op.f('uq_jobs_seq'))
    )
    op.create_table('ledger_totals',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('head_seq', sa.Integer(), nullable=False),
    sa.Column('head_hash', sa.Text(), nullable=False),
    sa.Column('next_id', sa.Integer(), nullable=False),
    sa.Column('spend_usd', sa.Float(precision=53), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_totals'))
    )
    op.create_table('prices',
    sa.Column('price_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('prompt_usd_per_token', sa.Float(precision=53), nullable=False),
    sa.Column('completion_usd_per_token', sa.Float(precision=53), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('fetched_at_utc', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('price_id', name=op.f('pk_prices')),
    sa.UniqueConstraint('seq', name=op.f('uq_prices_seq'))
    )
    op.create_table('runs',
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('started_at_utc', sa.Text(), nullable=False),
    sa.Column('host', sa.Text(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('prompt_version', sa.Text(), nullable=False),
    sa.Column('filter_version', sa.Text(), nullable=False),
    sa.Column('config_json', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_runs')),
    sa.UniqueConstraint('seq', name=op.f('uq_runs_seq'))
    )
    op.create_table('attempts',
    sa.Column('attempt_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('job_id', sa.Text(), nullable=False),
    sa.Column('attempt_no', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=True),
    sa.Column('model_requested', sa.Text(), nullable=False),
    sa.Column('chain_position', sa.Integer(), nullable=False),
    sa.Column('prompt_version', sa.Text(), nullable=False),
    sa.Column('max_tokens', sa.Integer(), nullable=False),
    sa.Column('reserved_usd', sa.Float(precision=53), nullable=False),
    sa.Column('started_at_utc', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_attempts_job_id_jobs')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_attempts_run_id_runs')),
    sa.PrimaryKeyConstraint('attempt_id', name=op.f('pk_attempts')),
    sa.UniqueConstraint('job_id', 'attempt_no', name='uq_attempts_job_id_attempt_no'),
    sa.UniqueConstraint('seq', name=op.f('uq_attempts_seq'))
    )
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.create_index('ix_attempts_job_id', ['job_id'], unique=False)

    op.create_table('job_failures',
    sa.Column('failure_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('job_id', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=True),
    sa.Column('reasons_json', sa.Text(), nullable=False),
    sa.Column('created_at_utc', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_job_failures_job_id_jobs')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_job_failures_run_id_runs')),
    sa.PrimaryKeyConstraint('failure_id', name=op.f('pk_job_failures')),
    sa.UniqueConstraint('seq', name=op.f('uq_job_failures_seq'))
    )
    with op.batch_alter_table('job_failures', schema=None) as batch_op:
        batch_op.create_index('ix_job_failures_job_id', ['job_id'], unique=False)

    op.create_table('job_reopens',
    sa.Column('reopen_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('job_id', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=True),
    sa.Column('created_at_utc', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_job_reopens_job_id_jobs')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_job_reopens_run_id_runs')),
    sa.PrimaryKeyConstraint('reopen_id', name=op.f('pk_job_reopens')),
    sa.UniqueConstraint('seq', name=op.f('uq_job_reopens_seq'))
    )
    op.create_table('job_state',
    sa.Column('job_id', sa.Text(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('l1', sa.Text(), nullable=False),
    sa.Column('pattern', sa.Text(), nullable=False),
    sa.Column('level', sa.Text(), nullable=False),
    sa.Column('state', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_attempt_no', sa.Integer(), nullable=False),
    sa.Column('spend_usd', sa.Float(precision=53), nullable=False),
    sa.Column('lease_owner', sa.Text(), nullable=True),
    sa.Column('lease_expires_at', sa.Float(precision=53), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_job_state_job_id_jobs')),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_job_state'))
    )
    with op.batch_alter_table('job_state', schema=None) as batch_op:
        batch_op.create_index('ix_job_state_l1_state', ['l1', 'state'], unique=False)
        batch_op.create_index('ix_job_state_open', ['seq'], unique=False, sqlite_where=sa.text("state = 'open'"), postgresql_where=sa.text("state = 'open'"))

    op.create_table('run_stops',
    sa.Column('run_id', sa.Text(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('stopped_at_utc', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('exit_code', sa.Integer(), nullable=False),
    sa.Column('limit_source', sa.Text(), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.run_id'], name=op.f('fk_run_stops_run_id_runs')),
    sa.PrimaryKeyConstraint('run_id', name=op.f('pk_run_stops')),
    sa.UniqueConstraint('seq', name=op.f('uq_run_stops_seq'))
    )
    op.create_table('attempt_outcomes',
    sa.Column('attempt_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('finished_at_utc', sa.Text(), nullable=False),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('error_class', sa.Text(), nullable=False),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('error_type', sa.Text(), nullable=True),
    sa.Column('limit_source', sa.Text(), nullable=True),
    sa.Column('retry_after_s', sa.Float(precision=53), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('model_served', sa.Text(), nullable=True),
    sa.Column('provider', sa.Text(), nullable=True),
    sa.Column('generation_id', sa.Text(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=True),
    sa.Column('completion_tokens', sa.Integer(), nullable=True),
    sa.Column('cost_usd', sa.Float(precision=53), nullable=False),
    sa.Column('cost_source', sa.Text(), nullable=False),
    sa.Column('latency_ms', sa.Float(precision=53), nullable=True),
    sa.Column('finish_reason', sa.Text(), nullable=True),
    sa.Column('content', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['attempt_id'], ['attempts.attempt_id'], name=op.f('fk_attempt_outcomes_attempt_id_attempts')),
    sa.PrimaryKeyConstraint('attempt_id', name=op.f('pk_attempt_outcomes')),
    sa.UniqueConstraint('seq', name=op.f('uq_attempt_outcomes_seq'))
    )
    op.create_table('open_attempts',
    sa.Column('attempt_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('job_id', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Text(), nullable=True),
    sa.Column('reserved_usd', sa.Float(precision=53), nullable=False),
    sa.ForeignKeyConstraint(['attempt_id'], ['attempts.attempt_id'], name=op.f('fk_open_attempts_attempt_id_attempts')),
    sa.PrimaryKeyConstraint('attempt_id', name=op.f('pk_open_attempts'))
    )
    op.create_table('verdicts',
    sa.Column('verdict_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('attempt_id', sa.Integer(), nullable=False),
    sa.Column('filter_version', sa.Text(), nullable=False),
    sa.Column('passed', sa.Integer(), nullable=False),
    sa.Column('reasons_json', sa.Text(), nullable=False),
    sa.Column('turns', sa.Integer(), nullable=False),
    sa.Column('tutor_questions', sa.Integer(), nullable=False),
    sa.Column('self_corrected', sa.Integer(), nullable=False),
    sa.Column('metrics_json', sa.Text(), nullable=False),
    sa.Column('messages_json', sa.Text(), nullable=True),
    sa.Column('created_at_utc', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['attempt_id'], ['attempts.attempt_id'], name=op.f('fk_verdicts_attempt_id_attempts')),
    sa.PrimaryKeyConstraint('verdict_id', name=op.f('pk_verdicts')),
    sa.UniqueConstraint('attempt_id', 'filter_version', name='uq_verdicts_attempt_id_filter_version'),
    sa.UniqueConstraint('seq', name=op.f('uq_verdicts_seq'))
    )
    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.create_index('ix_verdicts_attempt_id', ['attempt_id'], unique=False)

    op.create_table('acceptances',
    sa.Column('job_id', sa.Text(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('row_hash', sa.Text(), nullable=False),
    sa.Column('attempt_id', sa.Integer(), nullable=False),
    sa.Column('verdict_id', sa.Integer(), nullable=False),
    sa.Column('created_at_utc', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['attempt_id'], ['attempts.attempt_id'], name=op.f('fk_acceptances_attempt_id_attempts')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_acceptances_job_id_jobs')),
    sa.ForeignKeyConstraint(['verdict_id'], ['verdicts.verdict_id'], name=op.f('fk_acceptances_verdict_id_verdicts')),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_acceptances')),
    sa.UniqueConstraint('attempt_id', name=op.f('uq_acceptances_attempt_id')),
    sa.UniqueConstraint('seq', name=op.f('uq_acceptances_seq'))
    )

    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(POSTGRES_APPEND_ONLY_FUNCTION)
    for table in EVENT_TABLES:
        for ddl in append_only_ddl(dialect, table):
            op.execute(ddl)
    op.execute(
        sa.text("INSERT INTO ledger_totals (id, head_seq, head_hash, next_id, spend_usd) "
                "VALUES (1, 0, :genesis, 1, 0.0)").bindparams(genesis=GENESIS_HASH)
    )

def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in EVENT_TABLES:
        for ddl in drop_append_only_ddl(dialect, table):
            op.execute(ddl)
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS ledger_append_only()")
    op.drop_table('acceptances')
    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.drop_index('ix_verdicts_attempt_id')

    op.drop_table('verdicts')
    op.drop_table('open_attempts')
    op.drop_table('attempt_outcomes')
    op.drop_table('run_stops')
    with op.batch_alter_table('job_state', schema=None) as batch_op:
        batch_op.drop_index('ix_job_state_open', sqlite_where=sa.text("state = 'open'"), postgresql_where=sa.text("state = 'open'"))
        batch_op.drop_index('ix_job_state_l1_state')

    op.drop_table('job_state')
    op.drop_table('job_reopens')
    with op.batch_alter_table('job_failures', schema=None) as batch_op:
        batch_op.drop_index('ix_job_failures_job_id')

    op.drop_table('job_failures')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_attempts_job_id')

    op.drop_table('attempts')
    op.drop_table('runs')
    op.drop_table('prices')
    op.drop_table('ledger_totals')
    op.drop_table('jobs')
    op.drop_table('imports')

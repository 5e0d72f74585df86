"""status speed: job counts and spend by (l1, state) from one index; leased jobs from a small one

`status` counts jobs by L1 and state and sums their spend. `ix_job_state_l1_state_spend`
(l1, state, spend_usd) answers that from narrow index entries, in group order, without visiting
the job rows; it replaces `ix_job_state_l1_state` (l1, state), which is its prefix, so a planned
job still costs the same number of index inserts.

`ix_job_state_leased` holds only the jobs with a lease (what the runs hold now, plus the
expired leases of runs that died): `status` counts jobs in flight from it, and a stopping run
releases its leases through it instead of scanning every job.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 02:45:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

LEASED = "lease_owner IS NOT NULL"


def upgrade() -> None:
    op.create_index("ix_job_state_l1_state_spend", "job_state", ["l1", "state", "spend_usd"],
                    unique=False)
    op.drop_index("ix_job_state_l1_state", table_name="job_state")
    op.create_index("ix_job_state_leased", "job_state", ["lease_owner"], unique=False,
                    sqlite_where=sa.text(LEASED), postgresql_where=sa.text(LEASED))


def downgrade() -> None:
    op.drop_index("ix_job_state_leased", table_name="job_state")
    op.create_index("ix_job_state_l1_state", "job_state", ["l1", "state"], unique=False)
    op.drop_index("ix_job_state_l1_state_spend", table_name="job_state")

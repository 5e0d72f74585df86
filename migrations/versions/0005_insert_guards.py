"""insert guards check each key once

The SQLite BEFORE INSERT guard of every event table (it stops `INSERT OR REPLACE` from
deleting and re-inserting an event, even on a connection without `recursive_triggers`) listed
a key twice where a column was both marked unique and named in a unique constraint, so every
insert paid for one or two redundant index lookups. The guards are re-created with each key
once; what they allow and refuse is unchanged, so downgrade keeps them as they are.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 05:20:00.000000
"""
from __future__ import annotations

from alembic import op

from ledger.schema import EVENT_TABLES, insert_guard_ddl

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL has no REPLACE and so no insert guard
    for table in EVENT_TABLES:
        for ddl in insert_guard_ddl(table):
            op.execute(ddl)


def downgrade() -> None:
    pass  # equivalent guards; nothing to undo

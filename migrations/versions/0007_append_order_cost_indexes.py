"""cost indexes keyed in append order within their group

`ix_attempt_outcomes_model_cost` and `ix_attempt_outcomes_error_cost` let the cost views sum
by model and by error class from narrow index entries. Keyed (group, cost, ...), each new
outcome went in at a random place inside its model's or error class's range: about one index
page written per outcome and per index. With attempt_id (which only grows) right after the
group column, a new outcome goes at the end of its group's range, where the other outcomes of
the same commit go too. The views read the same columns in the same group order.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:10:00.000000
"""
from __future__ import annotations

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_NEW = {"ix_attempt_outcomes_model_cost": ["model_served", "attempt_id", "cost_usd",
                                           "prompt_tokens", "completion_tokens"],
        "ix_attempt_outcomes_error_cost": ["error_class", "attempt_id", "cost_usd"]}
_OLD = {"ix_attempt_outcomes_model_cost": ["model_served", "cost_usd", "prompt_tokens",
                                           "completion_tokens"],
        "ix_attempt_outcomes_error_cost": ["error_class", "cost_usd"]}


def _recreate(columns_by_name: dict[str, list[str]]) -> None:
    for name, columns in columns_by_name.items():
        op.drop_index(name, table_name="attempt_outcomes")
        op.create_index(name, "attempt_outcomes", columns, unique=False)


def upgrade() -> None:
    _recreate(_NEW)


def downgrade() -> None:
    _recreate(_OLD)

"""shopper limits

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 04:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shoppers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("limit_per_payment", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("limit_per_day", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shoppers", schema=None) as batch_op:
        batch_op.drop_column("limit_per_day")
        batch_op.drop_column("limit_per_payment")

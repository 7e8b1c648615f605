"""phone hash and step-up ask: the full-number step-up

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 02:00:00.000000

The hash is keyed with the instance's phone key, which migrations do not hold: rows enrolled
before this revision are filled in by the server when it starts (`hash_missing_phones`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shoppers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone_hash", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_shoppers_phone_hash"), ["phone_hash"], unique=False)
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("step_up_ask", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("step_up_ask")
    with op.batch_alter_table("shoppers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_shoppers_phone_hash"))
        batch_op.drop_column("phone_hash")

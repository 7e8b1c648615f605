"""step-up failures: guess limits kept in the database

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 02:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_up_failures",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kiosk_id", sa.String(length=36), nullable=False),
        sa.Column("store", sa.String(length=100), nullable=False),
        sa.Column("shopper_id", sa.String(length=36), nullable=True),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("probe_pack", sa.String(length=80), nullable=True),
        sa.Column("probe_liveness", sa.String(length=32), nullable=True),
        sa.Column("sealed_probe", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["kiosk_id"], ["kiosks.id"], name=op.f("fk_step_up_failures_kiosk_id_kiosks")
        ),
        sa.ForeignKeyConstraint(
            ["shopper_id"], ["shoppers.id"], name=op.f("fk_step_up_failures_shopper_id_shoppers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_up_failures")),
    )
    op.create_index("ix_step_up_failures_kiosk_at", "step_up_failures", ["kiosk_id", "at"])
    op.create_index("ix_step_up_failures_shopper_at", "step_up_failures", ["shopper_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_step_up_failures_shopper_at", table_name="step_up_failures")
    op.drop_index("ix_step_up_failures_kiosk_at", table_name="step_up_failures")
    op.drop_table("step_up_failures")

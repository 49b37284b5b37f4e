"""attempt_costs, attempt_spend: what each attempt used (CPU, wall time, peak RSS) and what its
handler reported spending (ctx.cost), projected from its outcome event (costs.py).

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    json = sa.JSON().with_variant(JSONB(), "postgresql")
    op.create_table(
        "attempt_costs",
        sa.Column("key", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("job_id", sa.String(26), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("queue", sa.String(63), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("batch_id", sa.String(26), nullable=True),
        sa.Column("workflow_id", sa.String(26), nullable=True),
        sa.Column("labels", json, nullable=False),
        sa.Column("cpu_s", sa.Float(), nullable=False),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("peak_rss_bytes", sa.BigInteger(), nullable=True),
        sa.Column("measured", sa.String(8), nullable=False),
    )
    op.create_index("ix_attempt_costs_at", "attempt_costs", ["at"])
    op.create_index("ix_attempt_costs_job_id", "attempt_costs", ["job_id"])
    op.create_index("ix_attempt_costs_type_at", "attempt_costs", ["type", "at"])
    where = sa.text("batch_id IS NOT NULL")
    op.create_index(
        "ix_attempt_costs_batch", "attempt_costs", ["batch_id"], sqlite_where=where, postgresql_where=where
    )
    where = sa.text("workflow_id IS NOT NULL")
    op.create_index(
        "ix_attempt_costs_workflow",
        "attempt_costs",
        ["workflow_id"],
        sqlite_where=where,
        postgresql_where=where,
    )
    op.create_table(
        "attempt_spend",
        sa.Column("key", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("unit", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("amount", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("attempt_spend")
    op.drop_table("attempt_costs")

"""time and flow gates: jobs.run_at, approval, concurrency and rate keys; gate_keys

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("approval", JSON, nullable=True))
        batch_op.add_column(sa.Column("concurrency_key", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("concurrency", JSON, nullable=True))
        batch_op.add_column(sa.Column("rate_key", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("rate", JSON, nullable=True))
        batch_op.create_index("ix_jobs_status_run_at", ["status", "run_at"], unique=False)
        batch_op.create_index(
            "ix_jobs_concurrency_key_waiting",
            ["concurrency_key", "status", "priority", "created_at", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_jobs_rate_key_waiting", ["rate_key", "status", "priority", "created_at", "id"], unique=False
        )
    op.create_table(
        "gate_keys",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key"),
    )


def downgrade() -> None:
    op.drop_table("gate_keys")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_rate_key_waiting")
        batch_op.drop_index("ix_jobs_concurrency_key_waiting")
        batch_op.drop_index("ix_jobs_status_run_at")
        for column in ("rate", "rate_key", "concurrency", "concurrency_key", "approval", "run_at"):
            batch_op.drop_column(column)

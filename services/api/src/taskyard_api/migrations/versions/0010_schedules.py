"""schedules: cron/interval schedules and their fire times (one row per fire, unique)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("cron", sa.String(length=200), nullable=True),
        sa.Column("every_s", sa.Float(), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("template", JSON, nullable=False),
        sa.Column("overlap", sa.String(length=16), nullable=False),
        sa.Column("catch_up", sa.String(length=8), nullable=False),
        sa.Column("catch_up_max", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("anchor_at", sa.Float(), nullable=False),
        sa.Column("next_fire_at", sa.Float(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_schedules_next_fire_at", "schedules", ["next_fire_at"], unique=False)
    op.create_table(
        "schedule_fires",
        sa.Column("schedule_id", sa.String(length=26), nullable=False),
        sa.Column("fire_at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.String(length=26), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", "fire_at"),
    )
    op.create_index("ix_schedule_fires_job_id", "schedule_fires", ["job_id"], unique=False)
    op.create_index("ix_schedule_fires_at", "schedule_fires", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_schedule_fires_at", table_name="schedule_fires")
    op.drop_index("ix_schedule_fires_job_id", table_name="schedule_fires")
    op.drop_table("schedule_fires")
    op.drop_index("ix_schedules_next_fire_at", table_name="schedules")
    op.drop_table("schedules")

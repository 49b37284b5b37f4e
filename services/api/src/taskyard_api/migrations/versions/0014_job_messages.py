"""job_messages: a job's thread (what the job says and asks, what people answer or write to it)

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("key", sa.String(120), nullable=False, unique=True),
        sa.Column("job_id", sa.String(26), nullable=False),
        sa.Column("author_kind", sa.String(16), nullable=False),
        sa.Column("author", sa.String(100), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("checkpoint_id", sa.String(40), nullable=True),
    )
    op.create_index("ix_job_messages_job_id", "job_messages", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_messages_job_id", "job_messages")
    op.drop_table("job_messages")

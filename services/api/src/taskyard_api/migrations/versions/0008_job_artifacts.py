"""jobs.artifacts: a job's input files and output globs (JSON, NULL for a job without files)

The files themselves are in JetStream's Object Store; this column only says which ones a job
stages and collects, so the outbox can republish a job's full message from its row.

Revision ID: 0008
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("artifacts", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("artifacts")

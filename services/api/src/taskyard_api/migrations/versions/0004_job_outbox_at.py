"""outbox bookkeeping in its own column: `pending` is no status any more

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outbox_at", sa.Float(), nullable=True))
        batch_op.create_index("ix_jobs_outbox_at", ["outbox_at"], unique=False)
    # A row not yet in JOBS was `pending`: it is `queued`, its message due since its last change.
    op.execute("UPDATE jobs SET status = 'queued', outbox_at = updated_at WHERE status = 'pending'")


def downgrade() -> None:
    op.execute("UPDATE jobs SET status = 'pending' WHERE outbox_at IS NOT NULL AND status = 'queued'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_outbox_at")
        batch_op.drop_column("outbox_at")

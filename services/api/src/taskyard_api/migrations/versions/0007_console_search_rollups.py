"""the operator's console: per-minute rollups of outcomes and queue waits, and search indexes

Revision ID: 0007
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Spelled as job_search.ERROR_TEXT_PG: PostgreSQL uses an expression index only for the same text.
ERROR_TEXT_PG = "(coalesce(error ->> 'type', '') || ': ' || coalesce(error ->> 'message', ''))"


def upgrade() -> None:
    op.create_table(
        "job_rollups",
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("queue", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("error_class", sa.String(100), nullable=False, server_default=""),
        sa.Column("wait_bucket", sa.Integer(), nullable=False, server_default="-1"),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "queue", "kind", "error_class", "wait_bucket"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_finished_at_id", ["finished_at", "id"], unique=False)
        batch_op.create_index("ix_jobs_started_at_id", ["started_at", "id"], unique=False)
        # "dead jobs (of a queue) by when they ended": the status narrows, the order is the index's.
        batch_op.create_index("ix_jobs_status_finished_id", ["status", "finished_at", "id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(f"CREATE INDEX ix_jobs_error_text ON jobs USING gin ({ERROR_TEXT_PG} gin_trgm_ops)")
        op.execute("CREATE INDEX ix_jobs_payload ON jobs USING gin (payload jsonb_path_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_jobs_payload")
        op.execute("DROP INDEX IF EXISTS ix_jobs_error_text")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_finished_id")
        batch_op.drop_index("ix_jobs_started_at_id")
        batch_op.drop_index("ix_jobs_finished_at_id")
    op.drop_table("job_rollups")

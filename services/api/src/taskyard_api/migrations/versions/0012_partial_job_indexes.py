"""jobs: the indexes of columns most jobs leave NULL (keys, batch, workflow, run_at, outbox_at)
hold only the rows that have a value.

Every index is written on every insert and on every update of its columns. A plain job without
keys, batch, workflow or delay had entries in all six, rewritten as its status moved; its submit
and projection paid ~15 µs a job for them on SQLite (of ~60 µs of database work). Every query
that uses them names the column with `=`, `<`, `<=` or IS NOT NULL, which lets SQLite's and
PostgreSQL's planners use a partial index.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# name: (columns, the column that must be NOT NULL for a row to be in the index)
PARTIAL = {
    "ix_jobs_outbox_at": (["outbox_at"], "outbox_at"),
    "ix_jobs_batch_status": (["batch_id", "status"], "batch_id"),
    "ix_jobs_workflow": (["workflow_id"], "workflow_id"),
    "ix_jobs_status_run_at": (["status", "run_at"], "run_at"),
    "ix_jobs_concurrency_key_waiting": (
        ["concurrency_key", "status", "priority", "created_at", "id"],
        "concurrency_key",
    ),
    "ix_jobs_rate_key_waiting": (["rate_key", "status", "priority", "created_at", "id"], "rate_key"),
}


def upgrade() -> None:
    for name, (columns, present) in PARTIAL.items():
        op.drop_index(name, table_name="jobs")
        where = sa.text(f"{present} IS NOT NULL")
        op.create_index(name, "jobs", columns, sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name, (columns, _) in PARTIAL.items():
        op.drop_index(name, table_name="jobs")
        op.create_index(name, "jobs", columns)

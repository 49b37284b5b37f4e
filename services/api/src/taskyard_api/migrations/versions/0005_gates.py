"""gates: dependencies (job_edges), batches, workflows

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(length=26), nullable=True))
        batch_op.add_column(sa.Column("workflow_id", sa.String(length=26), nullable=True))
        batch_op.add_column(sa.Column("node", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("inputs", JSON, nullable=True))
        batch_op.create_index("ix_jobs_batch_status", ["batch_id", "status"], unique=False)
        batch_op.create_index("ix_jobs_workflow", ["workflow_id"], unique=False)
    op.create_table(
        "job_edges",
        sa.Column("parent_id", sa.String(length=26), nullable=False),
        sa.Column("child_id", sa.String(length=26), nullable=False),
        sa.Column("on", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("parent_id", "child_id"),
    )
    op.create_index("ix_job_edges_child_state", "job_edges", ["child_id", "state"], unique=False)
    op.create_index("ix_job_edges_state", "job_edges", ["state"], unique=False)
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("callbacks", JSON, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("completed_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "workflows",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("on_failure", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"]),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("workflows")
    op.drop_table("batches")
    op.drop_index("ix_job_edges_state", table_name="job_edges")
    op.drop_index("ix_job_edges_child_state", table_name="job_edges")
    op.drop_table("job_edges")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_workflow")
        batch_op.drop_index("ix_jobs_batch_status")
        batch_op.drop_column("inputs")
        batch_op.drop_column("node")
        batch_op.drop_column("workflow_id")
        batch_op.drop_column("batch_id")

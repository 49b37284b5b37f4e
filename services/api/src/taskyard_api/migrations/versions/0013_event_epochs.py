"""event_epochs: where EVENTS' sequences went back (a machine crash lost the stream's tail, or the
whole stream) and how far the projector shifts the sequences that follow (event_epochs.py).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_epochs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("after_seq", sa.BigInteger(), nullable=False),
        sa.Column("shift", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("event_epochs")

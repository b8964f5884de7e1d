"""contextual launches for the ANS statistics (ModelStat)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "launch_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("launch_stats", schema=None) as batch_op:
        batch_op.create_index("ix_launch_stats_at", ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("launch_stats", schema=None) as batch_op:
        batch_op.drop_index("ix_launch_stats_at")
    op.drop_table("launch_stats")

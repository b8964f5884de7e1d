"""report versions ordered by the CDA's own time; late-images re-checks

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document_time", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("recheck_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("rechecks_done", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.create_index("ix_reports_recheck", ["recheck_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index("ix_reports_recheck")
        batch_op.drop_column("rechecks_done")
        batch_op.drop_column("recheck_at")
        batch_op.drop_column("document_time")

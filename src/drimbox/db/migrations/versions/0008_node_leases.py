"""node leases, one row per report version, the node in the audit trail

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version_key", sa.String(length=160), nullable=True))
        batch_op.add_column(sa.Column("leased_by", sa.String(length=64), nullable=True))
    with op.batch_alter_table("dmp_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leased_by", sa.String(length=64), nullable=True))
    # The oldest row of each version received from the RIS gets the key; duplicates stored by
    # the former read-then-insert check keep none (the history stays as it was).
    op.execute(
        "UPDATE reports SET version_key = kind || '|' || document_id WHERE id IN ("
        "SELECT MIN(id) FROM reports WHERE document_id <> '' AND message_id IS NOT NULL "
        "GROUP BY kind, document_id)"
    )
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.create_index("uq_reports_version_key", ["version_key"], unique=True)
    # A plain ADD COLUMN: the append-only triggers refuse the UPDATE a table copy would need.
    op.add_column(
        "audit_events",
        sa.Column("node", sa.String(length=64), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_column("audit_events", "node")
    with op.batch_alter_table("dmp_jobs", schema=None) as batch_op:
        batch_op.drop_column("leased_by")
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index("uq_reports_version_key")
        batch_op.drop_column("leased_by")
        batch_op.drop_column("version_key")

"""KOS pre-integrated into the Conso (xdm import), and the history's notice

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conso_imported_kos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kos_sop_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_ins", sa.String(length=32), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("kos", sa.LargeBinary(), nullable=False),
        sa.Column("report", sa.LargeBinary(), nullable=True),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kos_sop_uid"),
    )
    with op.batch_alter_table("conso_imported_kos", schema=None) as batch_op:
        batch_op.create_index("ix_conso_imported_kos_ins", ["patient_ins"], unique=False)
    with op.batch_alter_table("conso_launches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("history_notice", sa.Text(), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("conso_launches", schema=None) as batch_op:
        batch_op.drop_column("history_notice")
    with op.batch_alter_table("conso_imported_kos", schema=None) as batch_op:
        batch_op.drop_index("ix_conso_imported_kos_ins")
    op.drop_table("conso_imported_kos")

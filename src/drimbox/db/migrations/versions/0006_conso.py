"""conso launches and their exam history

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conso_launches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("open_by", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("session_hash", sa.String(length=64), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("patient_ins", sa.String(length=32), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("history_loaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("conso_launches", schema=None) as batch_op:
        batch_op.create_index("ix_conso_launches_session", ["session_hash"], unique=False)
    op.create_table(
        "conso_exams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("launch_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("accession", sa.String(length=64), nullable=False),
        sa.Column("kos_sop_uid", sa.String(length=64), nullable=True),
        sa.Column("kos", sa.LargeBinary(), nullable=True),
        sa.Column("report", sa.LargeBinary(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["launch_id"], ["conso_launches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("conso_exams", schema=None) as batch_op:
        batch_op.create_index("ix_conso_exams_launch", ["launch_id"], unique=False)
        batch_op.create_index("ix_conso_exams_study", ["study_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("conso_exams", schema=None) as batch_op:
        batch_op.drop_index("ix_conso_exams_study")
        batch_op.drop_index("ix_conso_exams_launch")
    op.drop_table("conso_exams")
    with op.batch_alter_table("conso_launches", schema=None) as batch_op:
        batch_op.drop_index("ix_conso_launches_session")
    op.drop_table("conso_launches")

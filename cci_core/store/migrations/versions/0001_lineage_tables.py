"""The lineage schema as it was before migrations: ``artifacts`` and ``artifact_inputs``.

A database made before migrations existed holds exactly this and no version table; opening it
stamps it at this revision (:mod:`cci_core.store.migrations`) instead of creating it again.

Revision ID: 0001
Revises: (none)
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("code_version", sa.String(80), nullable=False),
        sa.Column("producer", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_artifacts_kind", "artifacts", ["kind"])
    op.create_index("ix_artifacts_name", "artifacts", ["name"])
    op.create_table(
        "artifact_inputs",
        sa.Column("artifact_id", sa.String(80), nullable=False),
        sa.Column("input_id", sa.String(80), nullable=False),
        sa.Column("role", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("artifact_id", "input_id"),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"]),
        sa.ForeignKeyConstraint(["input_id"], ["artifacts.id"]),
    )


def downgrade() -> None:
    op.drop_table("artifact_inputs")
    op.drop_index("ix_artifacts_name", table_name="artifacts")
    op.drop_index("ix_artifacts_kind", table_name="artifacts")
    op.drop_table("artifacts")

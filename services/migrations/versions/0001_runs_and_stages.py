"""Runs and stages: the schema the service made with ``create_all`` before it had migrations.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float()),
        sa.Column("ended_at", sa.Float()),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "stages",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spec_field", sa.String(64), nullable=False),
        sa.Column("given", sa.Boolean(), nullable=False),
        sa.Column("script", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("submission_id", sa.String(128)),
        sa.Column("entrypoint", sa.Text()),
        sa.Column("config", sa.JSON()),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("logs", sa.Text()),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON()),
        sa.Column("summary", sa.JSON()),
        sa.Column("submitted_at", sa.Float()),
        sa.Column("started_at", sa.Float()),
        sa.Column("ended_at", sa.Float()),
    )
    op.create_index("ix_stages_run_id", "stages", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_stages_run_id", "stages")
    op.drop_table("stages")
    op.drop_index("ix_runs_status", "runs")
    op.drop_table("runs")

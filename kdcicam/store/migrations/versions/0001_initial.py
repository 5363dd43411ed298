"""Initial run store: datasets, runs, epoch/final metrics, per-image records.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("root", sa.Text(), nullable=True),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("profile", sa.String(32), nullable=False),
        sa.Column("variant", sa.String(32), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(64), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("torch_version", sa.String(64), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.Column("eval_seconds", sa.Float(), nullable=True),
        sa.Column("artifacts_dir", sa.Text(), nullable=True),
        sa.Column("weights", sa.Text(), nullable=True),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'running', 'finished', 'failed')", name="ck_runs_status"),
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "epoch_metrics",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("run_id", "epoch", "split", "name", name="uq_epoch_metrics"),
    )
    op.create_table(
        "final_metrics",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("selection", sa.String(16), nullable=False),
        sa.Column("threshold_policy", sa.String(16), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("run_id", "protocol", "selection", "threshold_policy", "split", "name",
                            name="uq_final_metrics"),
    )
    op.create_table(
        "image_records",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("selection", sa.String(16), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("image_id", sa.String(255), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("top5", sa.Text(), nullable=False),
        sa.Column("top5_scores", sa.Text(), nullable=False),
        sa.Column("box", sa.Text(), nullable=True),
        sa.Column("iou", sa.Float(), nullable=True),
        sa.Column("correct_top1_cls", sa.Boolean(), nullable=False),
        sa.Column("correct_top5_cls", sa.Boolean(), nullable=False),
        sa.Column("correct_top1_loc", sa.Boolean(), nullable=False),
        sa.Column("correct_top5_loc", sa.Boolean(), nullable=False),
        sa.Column("correct_gt_known", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_image_records_group", "image_records", ["run_id", "protocol", "selection", "split"])


def downgrade() -> None:
    op.drop_index("ix_image_records_group", table_name="image_records")
    op.drop_table("image_records")
    op.drop_table("final_metrics")
    op.drop_table("epoch_metrics")
    op.drop_index("ix_runs_status", table_name="runs")
    op.drop_table("runs")
    op.drop_table("datasets")

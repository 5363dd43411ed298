"""Per-image records keep the threshold policy (fixed | val | oracle) they were scored under.

Records stored before this revision were all scored at the run's fixed θ: the new column is
filled with "fixed" for them. The group index gains the column.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image_records") as batch:
        batch.add_column(sa.Column("threshold_policy", sa.String(16), nullable=False, server_default="fixed"))
        batch.drop_index("ix_image_records_group")
        batch.create_index("ix_image_records_group",
                           ["run_id", "protocol", "selection", "split", "threshold_policy"])


def downgrade() -> None:
    op.execute("DELETE FROM image_records WHERE threshold_policy <> 'fixed'")
    with op.batch_alter_table("image_records") as batch:
        batch.drop_index("ix_image_records_group")
        batch.create_index("ix_image_records_group", ["run_id", "protocol", "selection", "split"])
        batch.drop_column("threshold_policy")

"""Per-image mechanism measures of the synthetic benchmark (docs/synthetic.md, "Mechanism measures").

Five nullable columns on image_records: the GT class's CAM mass shares on the part, the body and the
background, whether the image's context is its class's preferred one, and Top-1 correctness on its
context-swapped copy. Records stored before this revision, and records of real datasets or of the
paper protocol, hold NULL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None

_FLOATS = ("cam_mass_part", "cam_mass_body", "cam_mass_background")
_FLAGS = ("context_preferred", "correct_top1_cls_context_swapped")


def upgrade() -> None:
    with op.batch_alter_table("image_records") as batch:
        for name in _FLOATS:
            batch.add_column(sa.Column(name, sa.Float, nullable=True))
        for name in _FLAGS:
            batch.add_column(sa.Column(name, sa.Boolean, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_records") as batch:
        for name in (*_FLOATS, *_FLAGS):
            batch.drop_column(name)

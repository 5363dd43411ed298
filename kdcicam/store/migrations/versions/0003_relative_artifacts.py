"""Artifact folders are recorded relative to the store's folder, so a project folder can be moved.

For a SQLite store, each absolute ``runs.artifacts_dir`` inside the folder of the database file
becomes relative to it. An absolute path outside it whose tail (ending in the run id) exists under
the store's folder, as in a store copied with its ``runs/`` folder, is pointed at that copy. Any
other path stays absolute. Other backends keep absolute paths. Downgrading makes them absolute again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import op

from kdcicam.store.run_folder import from_stored, relocate_legacy, store_folder, to_stored

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None

_runs = sa.table("runs", sa.column("id", sa.String), sa.column("artifacts_dir", sa.Text))


def _folder(conn: sa.Connection) -> Path | None:
    """The folder of the SQLite file the connection is on (None: in memory, or another backend)."""
    if conn.dialect.name != "sqlite":
        return None
    for row in conn.exec_driver_sql("PRAGMA database_list"):
        if row[1] == "main" and row[2]:
            return store_folder(Path(row[2]))
    return None


def _rewrite(convert) -> None:
    conn = op.get_bind()
    folder = _folder(conn)
    if folder is None:
        return
    rows = conn.execute(sa.select(_runs.c.id, _runs.c.artifacts_dir)
                        .where(_runs.c.artifacts_dir.is_not(None))).all()
    for run_id, stored in rows:
        new = convert(run_id, stored, folder)
        if new != stored:
            conn.execute(_runs.update().where(_runs.c.id == run_id).values(artifacts_dir=new))


def _to_relative(run_id: str, stored: str, folder: Path) -> str:
    if not Path(stored).is_absolute():
        return stored
    relative = to_stored(stored, folder)
    if relative is not None and not Path(relative).is_absolute():
        return relative
    return relocate_legacy(stored, run_id, folder) or stored


def upgrade() -> None:
    _rewrite(_to_relative)


def downgrade() -> None:
    _rewrite(lambda _run_id, stored, folder: from_stored(stored, folder))

"""A finished run's rows as plain data, and back: how runs move from one store to another.

A run's *dump* holds its row and its dataset's row as ``{column: value}``, and its epoch metrics,
final metrics and per-image records as ``{column: [value per row]}`` (times as ISO 8601 text, naive
UTC as stored; the autoincrement row ids are left out). The dump is JSON-ready, so it can be written to a file, kept
in git, and loaded into any store (SQLite or PostgreSQL) at the same schema revision.

A run's id is its resolved config and data (``kdcicam.core.identity``): a run with the same id in
the target store is the same run. :meth:`RunTransfer.load_run` therefore keeps a finished or running
run already there, and replaces a pending or failed one (its metrics and records too).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Table, delete, insert, select
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from kdcicam.core.errors import StoreError
from kdcicam.store.run_folder import to_stored
from kdcicam.store.schema import RESULT_MODELS, Dataset, Run

DUMP_FORMAT = 1  # bump when a dump's layout changes
REPLACEABLE = ("pending", "failed")  # a run in the target store a dump may replace


def _row_dict(table: Table, row: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """One row as {column: JSON-ready value}, times as ISO text."""
    out = {}
    for column in table.columns:
        if column.name in skip:
            continue
        value = getattr(row, column.name)
        out[column.name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _db_values(table: Table, values: dict[str, Any], **fixed: Any) -> dict[str, Any]:
    """A dumped row as column values for ``table``; columns the dump lacks are left to their defaults.

    Raises:
        StoreError: the dump names a column the table does not have (a dump from another schema).
    """
    columns = {c.name: c for c in table.columns}
    unknown = sorted(set(values) - set(columns))
    if unknown:
        raise StoreError(f"the dump's {table.name} rows have column(s) this store does not: {', '.join(unknown)}")
    out = {}
    for name, value in {**values, **fixed}.items():
        if value is not None and isinstance(columns[name].type, DateTime):
            value = datetime.fromisoformat(value)
        out[name] = value
    return out


def _by_row(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """``{column: [values]}`` -> one dict per row.

    Raises:
        StoreError: the columns have different lengths.
    """
    if not isinstance(columns, dict) or not all(isinstance(v, list) for v in columns.values()):
        raise StoreError("a run dump's metrics or records are not {column: [values]}")
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise StoreError(f"a run dump's columns have different lengths ({sorted(lengths)})")
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


class RunTransfer:
    """Dumps and loads of whole runs; a mixin of :class:`~kdcicam.store.api.Store` (its ``_tx``,
    ``_require_run`` and ``folder``)."""

    def dump_run(self, run_id: str) -> dict[str, Any]:
        """The run's rows (see module doc); ``artifacts_dir`` is left out (the reader puts the files)."""

        def op(session: Session) -> dict[str, Any]:
            run = self._require_run(session, run_id)
            dataset = None if run.dataset_fingerprint is None else session.get(Dataset, run.dataset_fingerprint)
            out: dict[str, Any] = {
                "format": DUMP_FORMAT,
                "run": _row_dict(Run.__table__, run, skip=("artifacts_dir",)),
                "dataset": None if dataset is None else _row_dict(Dataset.__table__, dataset),
            }
            for key, model in RESULT_MODELS.items():
                rows = session.scalars(select(model).where(model.run_id == run_id).order_by(model.id)).all()
                dicts = [_row_dict(model.__table__, row, skip=("id", "run_id")) for row in rows]
                out[key] = {c.name: [d[c.name] for d in dicts] for c in model.__table__.columns
                            if c.name not in ("id", "run_id")}  # by column: half the gzipped size of rows
            return out

        return self._tx(op, write=False)

    def load_run(self, dump: dict[str, Any], artifacts_dir: str | None) -> str:
        """Put a dumped run into this store, with its artifacts at ``artifacts_dir`` (absolute, or None).

        Returns:
            "added", "replaced" (a pending or failed run of that id was there) or "kept" (a finished or
            running run of that id was there: nothing written).

        Raises:
            StoreError: the dump is not one this version reads, or does not fit this store's schema.
        """
        if not isinstance(dump, dict) or dump.get("format") != DUMP_FORMAT:
            found = dump.get("format") if isinstance(dump, dict) else type(dump).__name__
            raise StoreError(f"not a run dump of format {DUMP_FORMAT} (found {found!r})")
        try:
            run_values = dict(dump["run"])
            run_id = run_values["id"]
        except (KeyError, TypeError):
            raise StoreError("a run dump without its run row") from None
        stored_dir = to_stored(artifacts_dir, self.folder)

        def op(session: Session) -> str:
            existing = session.get(Run, run_id, with_for_update={"key_share": True})
            if existing is not None and existing.status not in REPLACEABLE:
                return "kept"
            if existing is not None:
                for model in RESULT_MODELS.values():
                    session.execute(delete(model).where(model.run_id == run_id))
                session.execute(delete(Run).where(Run.id == run_id))
            dataset = dump.get("dataset")
            if dataset and session.get(Dataset, dataset["fingerprint"]) is None:
                session.execute(insert(Dataset.__table__).values(**_db_values(Dataset.__table__, dataset)))
            session.execute(insert(Run.__table__).values(
                **_db_values(Run.__table__, run_values, artifacts_dir=stored_dir)))
            for key, model in RESULT_MODELS.items():
                rows = [_db_values(model.__table__, row, run_id=run_id) for row in _by_row(dump.get(key) or {})]
                if rows:
                    session.execute(insert(model.__table__), rows)
            session.flush()
            return "added" if existing is None else "replaced"

        try:
            return self._tx(op, write=True)
        except (IntegrityError, StatementError, ValueError, TypeError) as exc:
            raise StoreError(f"the dump of run {str(run_id)[:12]} does not fit this store "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None

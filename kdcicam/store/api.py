"""The :class:`Store`: every read or write of runs, metrics and records, one transaction each.

Callers get plain frozen dataclasses (:class:`RunInfo`, :class:`DatasetInfo`) or pandas frames,
never live ORM objects, so nothing can hit a detached-instance error after the session closes.

SQLite and PostgreSQL give the same results:

- Write transactions begin IMMEDIATE on SQLite (see ``_open.begin_mode``): one writer at a time.
  PostgreSQL runs writers concurrently (READ COMMITTED), so every write that reads a run before
  changing it or its metrics/records first locks that run's row (``FOR NO KEY UPDATE``; SQLite
  ignores the clause): writers of one run queue up, writers of different runs do not.
- A transaction that lost a race is run again: "database is locked" (SQLite, after the busy
  timeout), lock timeout, deadlock, serialization failure, or a duplicate key another process
  inserted first (PostgreSQL). The retry re-reads, so it sees the other process's row.
- Text is ordered bytewise (PostgreSQL: ``COLLATE "C"``), run-id prefixes match ASCII
  case-insensitively, and values a PostgreSQL column would reject (a string longer than its
  VARCHAR, an integer beyond 32 bits) are refused on both backends with a StoreError.
- A damaged SQLite file is one StoreError naming ``sqlite3 FILE .recover``; a single row that cannot
  be decoded is skipped with a :class:`~kdcicam.core.errors.StoreWarning` instead of failing every read.

This module holds the transactions, datasets and runs; the run lifecycle (claim, heartbeat, finish,
fail) is in ``lifecycle.py``, metrics and per-image records in ``results.py``, whole runs as plain data
(moving them between stores) in ``transfer.py``, the row snapshots and conversions in ``rows.py``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.orm import Session

from kdcicam.core.errors import StoreError, StoreWarning
from kdcicam.store._open import begin_mode, damaged_error, display_url, one_line, sqlite_file
from kdcicam.store.lifecycle import LifecycleMixin
from kdcicam.store.results import ResultsMixin
from kdcicam.store.rows import (
    IMAGE_RECORD_FIELDS,
    DatasetInfo,
    RunInfo,
    check_choice,
    check_fits,
    check_keys,
    dataset_info,
    dumps,
    run_info,
    to_db_time,
    utc_now,
)
from kdcicam.store.run_folder import store_folder, to_stored
from kdcicam.store.schema import RUN_STATUSES, Dataset, EpochMetric, FinalMetric, ImageRecord, Run
from kdcicam.store.transfer import RunTransfer

__all__ = ["IMAGE_RECORD_FIELDS", "DatasetInfo", "RunInfo", "Store", "utc_now"]

T = TypeVar("T")

MIN_PREFIX = 4  # shortest run-id prefix resolve_run accepts
_LOCK_RETRIES = 4  # extra attempts after "database is locked" (each after a full busy timeout)
_LOCK_BACKOFF_S = 0.2  # first backoff, doubled each retry
# PostgreSQL SQLSTATEs of a transaction that lost a race and is safe to run again: a key another
# process inserted first (it has committed), serialization failure, deadlock, lock_timeout expired.
_UNIQUE_VIOLATION = "23505"
_RETRY_SQLSTATES = frozenset({_UNIQUE_VIOLATION, "40001", "40P01", "55P03"})

# get_or_create_run: fields a new run must have, and fields it may have.
_REQUIRED_RUN_FIELDS = ("config_hash", "role", "profile", "variant", "dataset", "seed", "config")
_OPTIONAL_RUN_FIELDS = ("dataset_fingerprint", "git_commit", "device", "torch_version", "host",
                        "artifacts_dir", "weights", "labels")


def _is_locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _sqlstate(exc: DBAPIError) -> str | None:
    """The PostgreSQL error code of a failed statement (None for SQLite)."""
    return getattr(exc.orig, "sqlstate", None)


def _is_retryable(exc: DBAPIError) -> bool:
    """Whether the transaction lost a race with another process and may simply be run again."""
    state = _sqlstate(exc)
    if state is not None:
        return state in _RETRY_SQLSTATES
    return isinstance(exc, OperationalError) and _is_locked(exc)


class Store(LifecycleMixin, ResultsMixin, RunTransfer):
    """The run store. Build it with :func:`kdcicam.store.open_store`; close it (or use ``with``).

    Args:
        engine: an engine whose schema is already at head (``open_store`` sees to that).
        url: the store's URL, for messages (``url`` keeps it with any password masked).
        clock: returns "now" as an aware datetime; tests inject a fake one.
    """

    def __init__(self, engine: Engine, url: str, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self.url = display_url(url)
        self._clock = clock
        db_file = sqlite_file(url)
        # relative artifact paths are resolved against the SQLite file's folder (run_folder module doc)
        self.folder = store_folder(db_file)
        self.label = self.url if db_file is None else str(Path(os.path.abspath(db_file)))
        # Bytewise text order, as SQLite's default BINARY collation (a server's locale would differ).
        self._collation = "C" if engine.dialect.name == "postgresql" else None

    def close(self) -> None:
        """Release every pooled connection (SQLite then checkpoints and removes its WAL files)."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- plumbing -------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return to_db_time(self._clock())

    def _tx(self, fn: Callable[[Session], T], *, write: bool) -> T:
        """Run ``fn(session)`` in one transaction; run it again when it lost a race (see module doc).

        ``fn`` must read what it depends on inside the transaction, so a retry sees the winner's rows.
        """
        delay = _LOCK_BACKOFF_S
        for attempt in range(_LOCK_RETRIES + 1):
            try:
                with self._engine.connect() as conn:
                    conn.execution_options(**begin_mode(write))
                    with Session(bind=conn, expire_on_commit=False, autoflush=False) as session:
                        with session.begin():
                            return fn(session)
            except DBAPIError as exc:
                retryable = _is_retryable(exc)
                if retryable and attempt < _LOCK_RETRIES:
                    if _sqlstate(exc) != _UNIQUE_VIOLATION:  # the winner has committed: no wait
                        time.sleep(delay)
                        delay *= 2
                    continue
                damaged = damaged_error(self.label, exc)
                if damaged is not None:
                    raise damaged from None
                if retryable or isinstance(exc, (OperationalError, DataError)):
                    raise StoreError(f"run store {self.url}: {one_line(exc)}") from None
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def _require_run(session: Session, run_id: str, *, lock: bool = False) -> Run:
        """The run row; ``lock`` holds it until commit, so this run's writers take turns (PostgreSQL)."""
        row = session.get(Run, run_id, with_for_update={"key_share": True} if lock else None)
        if row is None:
            raise StoreError(f"no run matches '{run_id}'")
        return row

    def _info(self, row: Run) -> RunInfo:
        """The row as a RunInfo; a row whose JSON columns are damaged is a one-line StoreError."""
        try:
            return run_info(row, self.folder)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"the store at {self.label}: run {row.id}'s row is damaged "
                             f"({type(exc).__name__}: {str(exc)[:80]})") from None

    def _decoded(self, row: Run) -> RunInfo | None:
        """The row as a RunInfo, or None (with a StoreWarning) when its JSON columns are damaged."""
        try:
            return run_info(row, self.folder)
        except (ValueError, TypeError) as exc:
            warnings.warn(f"the store at {self.label}: run {row.id} skipped, its row is damaged "
                          f"({type(exc).__name__}: {str(exc)[:80]})", StoreWarning, stacklevel=2)
            return None

    def _rows_one_by_one(self, session: Session, query: Any) -> list[Run]:
        """The rows of ``query`` loaded one at a time, skipping (with a StoreWarning) those that cannot be."""
        rows = []
        for run_id in session.scalars(query.with_only_columns(Run.id)).all():
            try:
                rows.append(session.scalars(select(Run).where(Run.id == run_id)).one())
            except (ValueError, TypeError) as exc:
                session.expunge_all()
                warnings.warn(f"the store at {self.label}: run {run_id} skipped, its row is damaged "
                              f"({type(exc).__name__}: {str(exc)[:80]})", StoreWarning, stacklevel=3)
        return rows

    def _text_order(self, column: Any) -> Any:
        """``column`` for ORDER BY, compared bytewise on every backend."""
        return column if self._collation is None else column.collate(self._collation)

    # -- datasets and runs ----------------------------------------------------------------------

    def ensure_dataset(self, fingerprint: str, name: str, root: str | None,
                       meta: Mapping[str, Any]) -> DatasetInfo:
        """Record a dataset once; an existing fingerprint is returned unchanged.

        Args:
            fingerprint: content hash of the dataset (its identity).
            name: dataset kind ("synthetic", "cub", ...).
            root: folder it was read from.
            meta: JSON-able description (generator parameters or index-file hashes).

        Returns:
            The stored dataset.
        """
        check_fits(Dataset.__table__, {"fingerprint": fingerprint, "name": name}, "dataset")

        def op(session: Session) -> DatasetInfo:
            row = session.get(Dataset, fingerprint)
            if row is None:
                row = Dataset(fingerprint=fingerprint, name=name, root=root, meta=dumps(dict(meta)),
                              created_at=self._now())
                session.add(row)
                session.flush()
            return dataset_info(row)

        return self._tx(op, write=True)

    def get_dataset(self, fingerprint: str) -> DatasetInfo | None:
        """The dataset with this fingerprint, or None."""
        def op(session: Session) -> DatasetInfo | None:
            row = session.get(Dataset, fingerprint)
            return None if row is None else dataset_info(row)

        return self._tx(op, write=False)

    def get_or_create_run(self, run_id: str, **fields: Any) -> RunInfo:
        """Return the run ``run_id``, creating it as "pending" if it does not exist yet.

        Args:
            run_id: the run's identity (hash of resolved config + dataset fingerprint + seed).
            **fields: for a new run: config_hash, role, profile, variant, dataset, seed, config
                (dict or JSON text) and optionally dataset_fingerprint, git_commit, device,
                torch_version, host, artifacts_dir, weights (JSON-able), labels (dict).
                An existing run is returned unchanged.

        Returns:
            The run as stored.

        Raises:
            ValueError: unknown or missing fields, or an existing run whose config_hash differs.
            StoreError: a value the store cannot hold (e.g. a seed beyond 32 bits).
        """
        check_keys(fields, _REQUIRED_RUN_FIELDS + _OPTIONAL_RUN_FIELDS, "run field")
        check_fits(Run.__table__, {"id": run_id, **fields}, "run")

        def op(session: Session) -> RunInfo:
            row = session.get(Run, run_id)
            if row is not None:
                wanted = fields.get("config_hash", row.config_hash)
                if wanted != row.config_hash:
                    raise ValueError(f"run {run_id} exists with config_hash {row.config_hash}, "
                                     f"not {wanted}")
                return self._info(row)
            missing = [key for key in _REQUIRED_RUN_FIELDS if key not in fields]
            if missing:
                raise ValueError(f"new run {run_id} needs fields: {', '.join(missing)}")
            values = dict(fields)
            values["artifacts_dir"] = to_stored(values.get("artifacts_dir"), self.folder)
            if not isinstance(values["config"], str):
                values["config"] = dumps(values["config"])
            values["labels"] = dumps(values.get("labels") or {})
            if values.get("weights") is not None:
                values["weights"] = dumps(values["weights"])
            row = Run(id=run_id, status="pending", created_at=self._now(), **values)
            session.add(row)
            session.flush()
            return self._info(row)

        return self._tx(op, write=True)

    def get_run(self, run_id: str) -> RunInfo:
        """The run with exactly this id.

        Raises:
            StoreError: no such run.
        """
        return self._tx(lambda session: self._info(self._require_run(session, run_id)), write=False)

    def resolve_run(self, name: str) -> RunInfo:
        """Find a run by full id or by a unique id prefix of at least 4 characters.

        Raises:
            StoreError: nothing matches, the prefix is too short, or several runs match.
        """
        name = name.strip()

        def op(session: Session) -> RunInfo:
            row = session.get(Run, name)
            if row is not None:
                return self._info(row)
            if len(name) < MIN_PREFIX:
                raise StoreError(f"no run matches '{name}' (a prefix needs at least {MIN_PREFIX} characters)")
            match = Run.id.istartswith(name, autoescape=True)  # SQLite's LIKE ignores ASCII case
            count = session.scalar(select(func.count()).select_from(Run).where(match)) or 0
            if count == 0:
                raise StoreError(f"no run matches '{name}'")
            rows = session.scalars(select(Run).where(match).order_by(self._text_order(Run.id))
                                   .limit(5)).all()
            if count > 1:
                shown = ", ".join(r.id[:12] for r in rows) + (", ..." if count > 5 else "")
                raise StoreError(f"'{name}' matches {count} runs ({shown}); give more characters")
            return self._info(rows[0])

        return self._tx(op, write=False)

    def list_runs(self, status: str | None = None, role: str | None = None,
                  labels_contain: str | tuple[str, str] | None = None) -> list[RunInfo]:
        """Runs, oldest first, optionally filtered.

        Args:
            status: keep runs with this status.
            role: keep runs with this role.
            labels_contain: a report table name (keep runs labelled for it) or a (table, cell) pair.

        Returns:
            Matching runs ordered by creation time, then id.
        """
        if status is not None:
            check_choice(status, RUN_STATUSES, "status")

        def op(session: Session) -> list[RunInfo]:
            query = select(Run).order_by(Run.created_at, self._text_order(Run.id))
            if status is not None:
                query = query.where(Run.status == status)
            if role is not None:
                query = query.where(Run.role == role)
            try:
                rows = list(session.scalars(query))
            except (ValueError, TypeError):  # a column the ORM cannot convert (e.g. a damaged timestamp)
                rows = self._rows_one_by_one(session, query)
            return [info for info in (self._decoded(row) for row in rows) if info is not None]

        runs = self._tx(op, write=False)
        if labels_contain is None:
            return runs
        if isinstance(labels_contain, str):
            return [run for run in runs if labels_contain in run.labels]
        table, cell = labels_contain
        return [run for run in runs if cell in run.labels.get(table, [])]

    def delete_runs(self, run_ids: Iterable[str]) -> int:
        """Delete runs and everything stored of them (epoch and final metrics, per-image records), in one
        transaction: all of them or none. Their files are the caller's (``kdcicam runs delete``).

        Raises:
            StoreError: one of the runs does not exist.
        """
        ids = list(dict.fromkeys(run_ids))

        def op(session: Session) -> int:
            for run_id in ids:
                self._require_run(session, run_id, lock=True)
            for model in (ImageRecord, FinalMetric, EpochMetric):  # explicit: a store opened without
                session.execute(delete(model).where(model.run_id.in_(ids)))  # foreign keys keeps no orphans
            session.execute(delete(Run).where(Run.id.in_(ids)))
            return len(ids)

        return self._tx(op, write=True)

    def add_labels(self, run_id: str, table: str, cell: str) -> dict[str, list[str]]:
        """Mark a run as the result of ``cell`` in report ``table`` (idempotent).

        Returns:
            The run's labels after the change.
        """
        def op(session: Session) -> dict[str, list[str]]:
            row = self._require_run(session, run_id, lock=True)  # read-modify-write of the JSON
            labels = json.loads(row.labels)
            cells = labels.setdefault(table, [])
            if cell not in cells:
                cells.append(cell)
                row.labels = dumps(labels)
            return labels

        return self._tx(op, write=True)

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
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import (
    Engine,
    Integer,
    String,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.orm import Session

from kdcicam.core.config import PROTOCOLS, SELECTIONS
from kdcicam.core.errors import StoreError, StoreWarning
from kdcicam.store._open import begin_mode, damaged_error, display_url, one_line, sqlite_file
from kdcicam.store.run_folder import from_stored, store_folder, to_stored
from kdcicam.store.schema import (
    EVAL_SPLITS,
    METRIC_SPLITS,
    RUN_STATUSES,
    THRESHOLD_POLICIES,
    Dataset,
    EpochMetric,
    FinalMetric,
    ImageRecord,
    Run,
)

T = TypeVar("T")

MIN_PREFIX = 4  # shortest run-id prefix resolve_run accepts
_LOCK_RETRIES = 4  # extra attempts after "database is locked" (each after a full busy timeout)
_LOCK_BACKOFF_S = 0.2  # first backoff, doubled each retry
# PostgreSQL SQLSTATEs of a transaction that lost a race and is safe to run again: a key another
# process inserted first (it has committed), serialization failure, deadlock, lock_timeout expired.
_UNIQUE_VIOLATION = "23505"
_RETRY_SQLSTATES = frozenset({_UNIQUE_VIOLATION, "40001", "40P01", "55P03"})
_INT32 = (-(2**31), 2**31 - 1)  # PostgreSQL INTEGER

# get_or_create_run: fields a new run must have, and fields it may have.
_REQUIRED_RUN_FIELDS = ("config_hash", "role", "profile", "variant", "dataset", "seed", "config")
_OPTIONAL_RUN_FIELDS = ("dataset_fingerprint", "git_commit", "device", "torch_version", "host",
                        "artifacts_dir", "weights", "labels")
# claim_run: facts about the attempt that may be (re)recorded when a process takes the run.
_ATTEMPT_FIELDS = ("git_commit", "device", "torch_version", "artifacts_dir")
_TIMING_FIELDS = ("train_seconds", "eval_seconds")

IMAGE_RECORD_FIELDS: tuple[str, ...] = (
    "image_id", "label", "top5", "top5_scores", "box", "iou", "correct_top1_cls",
    "correct_top5_cls", "correct_top1_loc", "correct_top5_loc", "correct_gt_known",
)
_FINAL_COLUMNS = ["run_id", "protocol", "selection", "threshold_policy", "split", "name", "value",
                  "created_at"]
_EPOCH_COLUMNS = ["run_id", "epoch", "split", "name", "value", "created_at"]


@dataclass(frozen=True)
class RunInfo:
    """A snapshot of one run row; JSON columns decoded, timestamps aware UTC."""

    id: str
    config_hash: str
    role: str
    profile: str
    variant: str
    dataset: str
    dataset_fingerprint: str | None
    seed: int
    config: dict[str, Any]
    status: str
    message: str | None
    git_commit: str | None
    device: str | None
    torch_version: str | None
    host: str | None
    pid: int | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    train_seconds: float | None
    eval_seconds: float | None
    artifacts_dir: str | None
    weights: Any
    labels: dict[str, list[str]]

    @property
    def short_id(self) -> str:
        """The first 12 characters of the id, as the CLI shows it."""
        return self.id[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (timestamps as ISO 8601 strings)."""
        return {key: value.isoformat() if isinstance(value, datetime) else value
                for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class DatasetInfo:
    """A snapshot of one dataset row."""

    fingerprint: str
    name: str
    root: str | None
    meta: dict[str, Any]
    created_at: datetime


def utc_now() -> datetime:
    """The default clock: now, aware UTC."""
    return datetime.now(timezone.utc)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _to_db_time(moment: datetime) -> datetime:
    """Aware (any zone) or naive-UTC datetime -> naive UTC, as the DateTime columns hold it."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _from_db_time(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=timezone.utc)


def _db_float(value: Any) -> float | None:
    """A metric value as stored: float, with NaN as NULL (SQLite turns NaN into NULL anyway)."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _run_info(row: Run, folder: Path | None = None) -> RunInfo:
    """The row as a RunInfo; a relative artifacts_dir is resolved against ``folder`` (the store's)."""
    return RunInfo(
        id=row.id, config_hash=row.config_hash, role=row.role, profile=row.profile,
        variant=row.variant, dataset=row.dataset, dataset_fingerprint=row.dataset_fingerprint,
        seed=row.seed, config=json.loads(row.config), status=row.status, message=row.message,
        git_commit=row.git_commit, device=row.device, torch_version=row.torch_version,
        host=row.host, pid=row.pid, heartbeat_at=_from_db_time(row.heartbeat_at),
        created_at=_from_db_time(row.created_at), started_at=_from_db_time(row.started_at),
        finished_at=_from_db_time(row.finished_at), train_seconds=row.train_seconds,
        eval_seconds=row.eval_seconds, artifacts_dir=from_stored(row.artifacts_dir, folder),
        weights=None if row.weights is None else json.loads(row.weights),
        labels=json.loads(row.labels),
    )


def _dataset_info(row: Dataset) -> DatasetInfo:
    return DatasetInfo(fingerprint=row.fingerprint, name=row.name, root=row.root,
                       meta=json.loads(row.meta), created_at=_from_db_time(row.created_at))


def _check_choice(value: str, choices: Iterable[str], what: str) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")


def _check_keys(given: Iterable[str], allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)} (allowed: {', '.join(allowed)})")


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


def _check_fits(table: Table, values: Mapping[str, Any], what: str) -> None:
    """Refuse values a column cannot hold on every backend (SQLite would store them anyway).

    Raises:
        StoreError: a string longer than its VARCHAR(n) or an integer outside 32 bits.
    """
    for key, value in values.items():
        kind = table.c[key].type
        if isinstance(value, str) and isinstance(kind, String) and kind.length is not None:
            if len(value) > kind.length:
                raise StoreError(f"{what} {key} is {len(value)} characters long; the run store holds "
                                 f"at most {kind.length}: {value[:40]!r}...")
        elif isinstance(value, int) and isinstance(kind, Integer) and not _INT32[0] <= value <= _INT32[1]:
            raise StoreError(f"{what} {key}={value} does not fit the run store's 32-bit integer column")


def _image_row(record: Mapping[str, Any], group: dict[str, str]) -> dict[str, Any]:
    """One per-image record as an image_records row (lists JSON-encoded, flags as bools)."""
    if record.keys() != _IMAGE_FIELD_SET:
        missing = sorted(_IMAGE_FIELD_SET - record.keys())
        extra = sorted(record.keys() - _IMAGE_FIELD_SET)
        raise ValueError(f"image record {record.get('image_id')!r}: missing {missing}, unknown {extra}")
    box = record["box"]
    image_id = str(record["image_id"])
    _check_fits(ImageRecord.__table__, {"image_id": image_id}, "image record")
    return {
        **group,
        "image_id": image_id,
        "label": int(record["label"]),
        "top5": _dumps([int(c) for c in record["top5"]]),
        "top5_scores": _dumps([float(s) for s in record["top5_scores"]]),
        "box": None if box is None else _dumps([float(v) for v in box]),
        "iou": _db_float(record["iou"]),
        "correct_top1_cls": bool(record["correct_top1_cls"]),
        "correct_top5_cls": bool(record["correct_top5_cls"]),
        "correct_top1_loc": bool(record["correct_top1_loc"]),
        "correct_top5_loc": bool(record["correct_top5_loc"]),
        "correct_gt_known": bool(record["correct_gt_known"]),
    }


_IMAGE_FIELD_SET = frozenset(IMAGE_RECORD_FIELDS)


class Store:
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
        return _to_db_time(self._clock())

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

    def _decoded(self, row: Run) -> RunInfo | None:
        """The row as a RunInfo, or None (with a StoreWarning) when its JSON columns are damaged."""
        try:
            return _run_info(row, self.folder)
        except (ValueError, TypeError) as exc:
            warnings.warn(f"the store at {self.label}: run {row.id} skipped, its row is damaged "
                          f"({type(exc).__name__}: {str(exc)[:80]})", StoreWarning, stacklevel=2)
            return None

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
        _check_fits(Dataset.__table__, {"fingerprint": fingerprint, "name": name}, "dataset")

        def op(session: Session) -> DatasetInfo:
            row = session.get(Dataset, fingerprint)
            if row is None:
                row = Dataset(fingerprint=fingerprint, name=name, root=root, meta=_dumps(dict(meta)),
                              created_at=self._now())
                session.add(row)
                session.flush()
            return _dataset_info(row)

        return self._tx(op, write=True)

    def get_dataset(self, fingerprint: str) -> DatasetInfo | None:
        """The dataset with this fingerprint, or None."""
        def op(session: Session) -> DatasetInfo | None:
            row = session.get(Dataset, fingerprint)
            return None if row is None else _dataset_info(row)

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
        _check_keys(fields, _REQUIRED_RUN_FIELDS + _OPTIONAL_RUN_FIELDS, "run field")
        _check_fits(Run.__table__, {"id": run_id, **fields}, "run")

        def op(session: Session) -> RunInfo:
            row = session.get(Run, run_id)
            if row is not None:
                wanted = fields.get("config_hash", row.config_hash)
                if wanted != row.config_hash:
                    raise ValueError(f"run {run_id} exists with config_hash {row.config_hash}, "
                                     f"not {wanted}")
                return _run_info(row, self.folder)
            missing = [key for key in _REQUIRED_RUN_FIELDS if key not in fields]
            if missing:
                raise ValueError(f"new run {run_id} needs fields: {', '.join(missing)}")
            values = dict(fields)
            values["artifacts_dir"] = to_stored(values.get("artifacts_dir"), self.folder)
            if not isinstance(values["config"], str):
                values["config"] = _dumps(values["config"])
            values["labels"] = _dumps(values.get("labels") or {})
            if values.get("weights") is not None:
                values["weights"] = _dumps(values["weights"])
            row = Run(id=run_id, status="pending", created_at=self._now(), **values)
            session.add(row)
            session.flush()
            return _run_info(row, self.folder)

        return self._tx(op, write=True)

    def get_run(self, run_id: str) -> RunInfo:
        """The run with exactly this id.

        Raises:
            StoreError: no such run.
        """
        return self._tx(lambda session: _run_info(self._require_run(session, run_id), self.folder), write=False)

    def resolve_run(self, name: str) -> RunInfo:
        """Find a run by full id or by a unique id prefix of at least 4 characters.

        Raises:
            StoreError: nothing matches, the prefix is too short, or several runs match.
        """
        name = name.strip()

        def op(session: Session) -> RunInfo:
            row = session.get(Run, name)
            if row is not None:
                return _run_info(row, self.folder)
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
            return _run_info(rows[0], self.folder)

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
            _check_choice(status, RUN_STATUSES, "status")

        def op(session: Session) -> list[RunInfo]:
            query = select(Run).order_by(Run.created_at, self._text_order(Run.id))
            if status is not None:
                query = query.where(Run.status == status)
            if role is not None:
                query = query.where(Run.role == role)
            return [info for info in (self._decoded(row) for row in session.scalars(query)) if info is not None]

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
                row.labels = _dumps(labels)
            return labels

        return self._tx(op, write=True)

    # -- lifecycle ------------------------------------------------------------------------------

    def claim_run(self, run_id: str, pid: int, host: str, stale_after_s: float = 120.0,
                  **attempt: str | None) -> bool:
        """Atomically take a run for training: exactly one of several concurrent claimers wins.

        A run can be taken when it is pending or failed, or running with a heartbeat older than
        ``stale_after_s`` (its process died). One conditional UPDATE does the test and the set.
        SQLite runs one write transaction at a time. On PostgreSQL (READ COMMITTED) the UPDATE
        locks the row; a second claimer blocks on that lock, and once the first commits it
        re-evaluates the WHERE clause on the committed row ("running", fresh heartbeat), which
        no longer matches: it updates nothing and gets False. If the first rolls back, the
        second claims the unchanged row. So exactly one wins, and no claimable run is skipped
        (as ``SELECT ... FOR UPDATE SKIP LOCKED`` would skip a row that is merely locked by,
        say, ``add_labels``). Heartbeats use the callers' clocks: keep the hosts in NTP sync.

        Args:
            run_id: the run to take.
            pid: this process's id.
            host: this machine's name.
            stale_after_s: heartbeat age after which a running run is considered dead.
            **attempt: git_commit, device, torch_version, artifacts_dir of this attempt.

        Returns:
            True when this caller now owns the run.

        Raises:
            StoreError: no such run.
        """
        _check_keys(attempt, _ATTEMPT_FIELDS, "claim field")
        if "artifacts_dir" in attempt:
            attempt = {**attempt, "artifacts_dir": to_stored(attempt["artifacts_dir"], self.folder)}
        _check_fits(Run.__table__, {"pid": pid, "host": host, **attempt}, "claim")

        def op(session: Session) -> bool:
            now = self._now()
            stale_before = now - timedelta(seconds=stale_after_s)
            claimable = or_(
                Run.status.in_(("pending", "failed")),
                and_(Run.status == "running",
                     or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < stale_before)),
            )
            result = session.execute(
                update(Run).where(Run.id == run_id, claimable)
                .values(status="running", pid=pid, host=host, heartbeat_at=now, started_at=now,
                        finished_at=None, message=None, **attempt)
                .execution_options(synchronize_session=False))
            if result.rowcount == 1:
                return True
            self._require_run(session, run_id)
            return False

        return self._tx(op, write=True)

    def heartbeat(self, run_id: str, pid: int | None = None) -> bool:
        """Tell the store the running run is alive.

        Args:
            run_id: the run.
            pid: when given, only beat if this process still owns the run.

        Returns:
            False when the run is no longer running (under ``pid``): another process took it.
        """
        def op(session: Session) -> bool:
            query = update(Run).where(Run.id == run_id, Run.status == "running")
            if pid is not None:
                query = query.where(Run.pid == pid)
            result = session.execute(query.values(heartbeat_at=self._now())
                                     .execution_options(synchronize_session=False))
            return result.rowcount == 1

        return self._tx(op, write=True)

    def finish_run(self, run_id: str, **timings: float | None) -> RunInfo:
        """Mark a run finished, with train_seconds / eval_seconds if given."""
        _check_keys(timings, _TIMING_FIELDS, "timing")
        return self._set_status(run_id, "finished", **timings)

    def fail_run(self, run_id: str, message: str) -> RunInfo:
        """Mark a run failed with the reason (shown by ``kdcicam runs show``)."""
        return self._set_status(run_id, "failed", message=message)

    def _set_status(self, run_id: str, status: str, **values: Any) -> RunInfo:
        def op(session: Session) -> RunInfo:
            row = self._require_run(session, run_id, lock=True)
            row.status = status
            row.finished_at = self._now()
            for key, value in values.items():
                setattr(row, key, value)
            session.flush()
            return _run_info(row, self.folder)

        return self._tx(op, write=True)

    # -- metrics --------------------------------------------------------------------------------

    def add_epoch_metrics(self, run_id: str, epoch: int, split: str, metrics: Mapping[str, float]) -> None:
        """Record one epoch's values (re-recording a name for the same epoch and split replaces it)."""
        _check_choice(split, METRIC_SPLITS, "split")
        if not metrics:
            return

        for name in metrics:
            _check_fits(EpochMetric.__table__, {"name": name}, "epoch metric")

        def op(session: Session) -> None:
            self._require_run(session, run_id, lock=True)
            session.execute(delete(EpochMetric).where(
                EpochMetric.run_id == run_id, EpochMetric.epoch == epoch, EpochMetric.split == split,
                EpochMetric.name.in_(list(metrics))))
            now = self._now()
            session.execute(insert(EpochMetric), [
                {"run_id": run_id, "epoch": int(epoch), "split": split, "name": name,
                 "value": _db_float(value), "created_at": now}
                for name, value in metrics.items()])

        self._tx(op, write=True)

    def set_final_metrics(self, run_id: str, protocol: str, selection: str, threshold_policy: str,
                          split: str, metrics: Mapping[str, float]) -> None:
        """Record evaluated numbers; a name already stored for this group is replaced.

        Args:
            run_id: the run evaluated.
            protocol: "paper" | "standard".
            selection: checkpoint criterion: "top1_loc" | "gt_known_loc" | "top1_cls" | "last".
            threshold_policy: how θ was chosen: "fixed" | "val" | "oracle".
            split: "test" | "val".
            metrics: name -> value (e.g. top1_cls, top1_loc, gt_known_loc, maxboxacc_v2, theta).
        """
        _check_choice(protocol, PROTOCOLS, "protocol")
        _check_choice(selection, SELECTIONS, "selection")
        _check_choice(threshold_policy, THRESHOLD_POLICIES, "threshold_policy")
        _check_choice(split, EVAL_SPLITS, "split")
        if not metrics:
            return
        group = {"run_id": run_id, "protocol": protocol, "selection": selection,
                 "threshold_policy": threshold_policy, "split": split}

        for name in metrics:
            _check_fits(FinalMetric.__table__, {"name": name}, "final metric")

        def op(session: Session) -> None:
            self._require_run(session, run_id, lock=True)
            session.execute(delete(FinalMetric).where(
                *(getattr(FinalMetric, key) == value for key, value in group.items()),
                FinalMetric.name.in_(list(metrics))))
            now = self._now()
            session.execute(insert(FinalMetric), [
                {**group, "name": name, "value": _db_float(value), "created_at": now}
                for name, value in metrics.items()])

        self._tx(op, write=True)

    def final_metrics(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Final metrics in long format.

        Args:
            run_ids: restrict to these runs (full ids); None = every run.

        Returns:
            Columns run_id, protocol, selection, threshold_policy, split, name, value (NaN for a
            stored NaN), created_at (UTC).
        """
        ids = None if run_ids is None else list(run_ids)

        def op(session: Session) -> list[tuple]:
            table = FinalMetric.__table__
            query = select(*(table.c[col] for col in _FINAL_COLUMNS)).order_by(
                *(self._text_order(table.c[col]) for col in _FINAL_COLUMNS[:6]))
            if ids is not None:
                query = query.where(table.c.run_id.in_(ids))
            return [tuple(row) for row in session.execute(query)]

        return _frame(self._tx(op, write=False), _FINAL_COLUMNS)

    def epoch_metrics(self, run_id: str) -> pd.DataFrame:
        """One run's training curves in long format: run_id, epoch, split, name, value, created_at."""
        def op(session: Session) -> list[tuple]:
            table = EpochMetric.__table__
            query = (select(*(table.c[col] for col in _EPOCH_COLUMNS))
                     .where(table.c.run_id == run_id)
                     .order_by(table.c.epoch, self._text_order(table.c.split),
                               self._text_order(table.c.name)))
            return [tuple(row) for row in session.execute(query)]

        return _frame(self._tx(op, write=False), _EPOCH_COLUMNS)

    # -- per-image records ----------------------------------------------------------------------

    def add_image_records(self, run_id: str, protocol: str, selection: str, split: str,
                          records: Iterable[Mapping[str, Any]], threshold_policy: str = "fixed") -> int:
        """Replace the per-image records of one (run, protocol, selection, split, θ policy) in one bulk insert.

        Args:
            run_id: the run evaluated.
            protocol: "paper" | "standard".
            selection: the checkpoint criterion evaluated.
            split: "test" | "val".
            records: dicts with exactly the keys of :data:`IMAGE_RECORD_FIELDS`; top5 and
                top5_scores are length-5 lists, box is [x0, y0, x1, y1] or None, iou a float or None.
            threshold_policy: how θ was chosen: "fixed" | "val" | "oracle".

        Returns:
            The number of records stored.
        """
        _check_choice(protocol, PROTOCOLS, "protocol")
        _check_choice(selection, SELECTIONS, "selection")
        _check_choice(split, EVAL_SPLITS, "split")
        _check_choice(threshold_policy, THRESHOLD_POLICIES, "threshold_policy")
        group = {"run_id": run_id, "protocol": protocol, "selection": selection, "split": split,
                 "threshold_policy": threshold_policy}
        rows = [_image_row(record, group) for record in records]  # encode before taking the lock
        table = ImageRecord.__table__

        def op(session: Session) -> int:
            self._require_run(session, run_id, lock=True)  # two evaluators replace in turn, not mixed
            session.execute(delete(table).where(*(table.c[key] == value for key, value in group.items())))
            if rows:
                session.execute(insert(table), rows)  # executemany: one statement, many rows
            return len(rows)

        return self._tx(op, write=True)

    def get_image_records(self, run_id: str, protocol: str, selection: str, split: str,
                          threshold_policy: str = "fixed") -> pd.DataFrame:
        """The per-image records of one group, in insertion order.

        Returns:
            One row per image with the columns of :data:`IMAGE_RECORD_FIELDS` (lists decoded,
            box None when there was none, correctness flags as bool).
        """
        table = ImageRecord.__table__

        def op(session: Session) -> list[tuple]:
            query = (select(*(table.c[col] for col in IMAGE_RECORD_FIELDS))
                     .where(table.c.run_id == run_id, table.c.protocol == protocol,
                            table.c.selection == selection, table.c.split == split,
                            table.c.threshold_policy == threshold_policy)
                     .order_by(table.c.id))
            return [_decode_image_row(row) for row in session.execute(query)]

        frame = _frame(self._tx(op, write=False), list(IMAGE_RECORD_FIELDS))
        for col in IMAGE_RECORD_FIELDS[6:]:
            frame[col] = frame[col].astype(bool)
        return frame


def _decode_image_row(row: Any) -> tuple:
    """An image_records row with its JSON columns (top5, top5_scores, box) decoded."""
    image_id, label, top5, top5_scores, box, *rest = row
    return (image_id, label, json.loads(top5), json.loads(top5_scores),
            None if box is None else json.loads(box), *rest)


def _frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    """A DataFrame of query rows; created_at becomes tz-aware UTC, value float (NULL -> NaN).

    A value that is not a number (a damaged row) is dropped with a StoreWarning.
    """
    frame = pd.DataFrame(rows, columns=columns)
    if "value" in frame:
        values = pd.to_numeric(frame["value"], errors="coerce").astype(float)
        bad = values.isna() & frame["value"].notna()
        for row in frame[bad].itertuples(index=False):
            warnings.warn(f"run {row.run_id}: metric {row.name!r} skipped, its stored value {row.value!r} "
                          "is not a number", StoreWarning, stacklevel=3)
        frame = frame[~bad].reset_index(drop=True)
        frame["value"] = values[~bad].reset_index(drop=True)
    if "created_at" in frame:
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame

"""The run store: every run of the harness, its lifecycle, metrics and per-image records.

A run is one trained model, identified by the hash of its resolved config, dataset fingerprint and
seed (computed by the caller with :func:`kdcicam.core.identity.config_hash`). The store is a SQLite file by
default (WAL mode, so trainers write while reports read), migrated with alembic on open.

Example::

    store = open_store(resolve_db_url(cli_db, os.environ.get("KDCICAM_DB")))
    store.get_or_create_run(run_id, config_hash=..., role="student", ...)
    if store.claim_run(run_id, pid=os.getpid(), host=socket.gethostname()):
        ...train, store.add_epoch_metrics(...), store.heartbeat(run_id)...
        store.finish_run(run_id, train_seconds=...)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from kdcicam.store._open import (
    BUSY_TIMEOUT_S,
    DEFAULT_DB_URL,
    head_revision,
    open_engine,
    resolve_db_url,
    sqlite_file,
)
from kdcicam.store.api import IMAGE_RECORD_FIELDS, DatasetInfo, RunInfo, Store, utc_now
from kdcicam.store.schema import EVAL_SPLITS, METRIC_SPLITS, RUN_STATUSES, THRESHOLD_POLICIES

__all__ = [
    "DEFAULT_DB_URL", "EVAL_SPLITS", "IMAGE_RECORD_FIELDS", "METRIC_SPLITS", "RUN_STATUSES",
    "THRESHOLD_POLICIES", "DatasetInfo", "RunInfo", "Store", "head_revision", "open_store",
    "resolve_db_url", "sqlite_file",
]


def open_store(url: str | None = None, *, create: bool = True, busy_timeout_s: float = BUSY_TIMEOUT_S,
               clock: Callable[[], datetime] = utc_now) -> Store:
    """Open (creating or migrating as needed) the run store at ``url``.

    Args:
        url: SQLAlchemy URL; None = ``sqlite:///runs.db`` in the current folder. The CLI gets it
            from :func:`resolve_db_url`.
        create: when False, a missing SQLite file is a StoreError instead of a new, empty store.
        busy_timeout_s: how long a write waits for another process's transaction.
        clock: returns "now" as an aware datetime (tests inject a fake one).

    Returns:
        An open :class:`Store` at the newest schema.

    Raises:
        StoreError: the file is not SQLite, not a run store, from a newer kdcicam, read-only, or
            cannot be created; the store is then left exactly as it was.
    """
    url = url or DEFAULT_DB_URL
    engine = open_engine(url, create=create, busy_timeout_s=busy_timeout_s)
    return Store(engine, url, clock=clock)

"""Opening the run store: URL resolution, safety checks, the engine, schema migrations.

Two backends behave the same: a SQLite file (one machine) and PostgreSQL (a server shared by many
machines, e.g. a SLURM cluster). Order matters for the promise that a store we refuse is left
untouched: the SQLite file checks (:func:`_check_sqlite_file`) read the database through an
``immutable`` (lock-free, write-free) SQLite connection *before* an engine exists, because the
engine's connect hook switches the file to WAL mode, which rewrites its header. On PostgreSQL the
same checks run inside :func:`migrate`'s transaction, before alembic writes anything, and DDL is
transactional there, so a refused or failed migration leaves the database as it was.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from kdcicam.core.errors import StoreError

DEFAULT_DB_URL = "sqlite:///runs.db"
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another process's transaction
_SQLITE_HEADER = b"SQLite format 3\x00"
_BEGIN_OPTION = "kdcicam_sqlite_begin"  # execution option: DEFERRED (reads) or IMMEDIATE (writes)
# PostgreSQL: transaction-scoped advisory lock taken by every migrate(), so processes opening a
# fresh database at once migrate one after the other (SQLite gets this from BEGIN IMMEDIATE).
_PG_MIGRATE_LOCK = int.from_bytes(b"kdcicam", "big")
_PG_DRIVER = "postgresql+psycopg"  # psycopg 3; a bare postgresql:// would mean psycopg2
_PG_INSTALL_HINT = "pip install 'psycopg[binary]' (the kdcicam[postgres] extra)"
_BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def resolve_db_url(cli_value: str | None, env: str | None) -> str:
    """Pick the store URL: ``--db`` wins over ``KDCICAM_DB``, else ``sqlite:///runs.db`` in the CWD.

    Args:
        cli_value: the ``--db`` option (None or "" when not given).
        env: the value of ``KDCICAM_DB`` (None or "" when unset); the caller reads the environment.

    Returns:
        A SQLAlchemy URL. A plain path (no ``://``) is taken as a SQLite file.
    """
    for value in (cli_value, env):
        if value and value.strip():
            value = value.strip()
            return value if "://" in value else f"sqlite:///{value}"
    return DEFAULT_DB_URL


def sqlite_file(url: str) -> Path | None:
    """The database file behind a SQLite URL; None for in-memory SQLite and other backends.

    Raises:
        StoreError: ``url`` is not a database URL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"'{url}' is not a database URL (expected e.g. sqlite:///runs.db)") from None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def display_url(url: str) -> str:
    """The URL as messages show it: any password replaced by ``***``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


@functools.cache
def _migrations_dir() -> str:
    return str(resources.files("kdcicam.store").joinpath("migrations"))


def _alembic_config() -> Config:
    cfg = Config()  # no alembic.ini: everything is set here
    cfg.set_main_option("script_location", _migrations_dir())
    return cfg


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every schema revision this kdcicam knows (the alembic scripts it ships)."""
    script = ScriptDirectory.from_config(_alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def head_revision() -> str:
    """The schema revision a store is migrated to on open."""
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"store migrations have {len(heads)} heads: {heads}")
    return heads[0]


def _newer_error(label: str, revisions: list[str]) -> StoreError:
    return StoreError(f"{label} was written by a newer kdcicam (schema {', '.join(revisions)}); "
                      "upgrade kdcicam")


def _check_sqlite_file(path: Path, *, read_only: bool = False) -> None:
    """Refuse, without touching it, a file that is not a run store of a schema we know.

    Raises:
        StoreError: a folder, a non-SQLite file, a foreign SQLite database, a newer schema, or a
            read-only file or folder.
    """
    folder = path.parent  # Path("runs.db").parent is Path(".")
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a SQLite database file")
    if not path.exists():
        if not folder.is_dir():
            raise StoreError(f"cannot create run store {path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StoreError(f"cannot create run store {path}: folder {folder} is not writable")
        return
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"cannot read run store {path}: {exc.strerror}") from None
    if head and head != _SQLITE_HEADER:
        raise StoreError(f"{path} is not a SQLite database (it starts with {head[:8]!r}); "
                         "point --db/KDCICAM_DB at a run store or a new file")
    if head:
        tables, revisions = _read_tables_and_revisions(path)
        if tables and "alembic_version" not in tables:
            shown = ", ".join(sorted(tables)[:5])
            raise StoreError(f"{path} is a SQLite database but not a kdcicam run store (tables: {shown})")
        unknown = [rev for rev in revisions if rev not in known_revisions()]
        if unknown:
            raise _newer_error(str(path), unknown)
        if read_only and revisions != [head_revision()]:
            raise StoreError(f"run store {path} is read-only and at schema {', '.join(revisions) or 'none'}, "
                             f"not {head_revision()}: make it writable once so that it can be upgraded")
    if read_only:
        return
    if not os.access(path, os.W_OK):
        raise StoreError(f"run store {path} is read-only")
    if not os.access(folder, os.W_OK | os.X_OK):  # WAL mode needs its -wal/-shm files beside it
        raise StoreError(f"run store {path} is in a folder that is not writable ({folder}); "
                         "SQLite needs it for the -wal/-shm journal files")


def _read_tables_and_revisions(path: Path) -> tuple[set[str], list[str]]:
    """Table names and alembic revisions of a SQLite file, read without writing anything."""
    # immutable=1 takes no locks and creates no -wal/-shm; if a -wal exists a writer may be live,
    # so read through it (mode=ro reuses the existing journal files instead of creating them).
    has_wal = path.with_name(path.name + "-wal").exists()
    query = "mode=ro" if has_wal else "immutable=1"
    uri = f"{path.resolve().as_uri()}?{query}"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            revisions = []
            if "alembic_version" in tables:
                revisions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise damaged_error(str(path), exc) or StoreError(f"cannot read run store {path}: {exc}") from None
    return tables, revisions


def _install_sqlite_hooks(engine: Engine, *, in_memory: bool, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below): pysqlite's implicit transactions start late and skip DDL.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching to WAL may have to wait for another process.
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")  # readers never block the one writer
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode, much faster
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front, so a read-then-write transaction never has to
        # upgrade its lock (which SQLite answers with SQLITE_BUSY instead of waiting).
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get(_BEGIN_OPTION, 'DEFERRED')}")


def _install_postgres_hooks(engine: Engine, *, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect", insert=True)
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # lock_timeout is PostgreSQL's busy timeout: a write waiting longer on another process's
        # row lock fails with SQLSTATE 55P03, which Store._tx retries like "database is locked".
        # Set per session (not via the URL's ``options``), so a user's own options still apply.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {int(busy_timeout_s * 1000)}")
        dbapi_connection.autocommit = autocommit


def create_store_engine(url: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Engine:
    """A SQLAlchemy engine for the store.

    SQLite gets WAL, a busy timeout and foreign keys. PostgreSQL gets psycopg 3 (also for a bare
    ``postgresql://``), READ COMMITTED (which :meth:`Store.claim_run` relies on), a
    ``lock_timeout`` of ``busy_timeout_s`` and pre-ping (jobs hold connections for hours).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername=_PG_DRIVER)
        engine = create_engine(parsed, isolation_level="READ COMMITTED", pool_pre_ping=True)
        _install_postgres_hooks(engine, busy_timeout_s=busy_timeout_s)
        return engine
    if backend != "sqlite":
        return create_engine(url)
    in_memory = sqlite_file(url) is None
    kwargs: dict[str, Any] = {"connect_args": {"timeout": busy_timeout_s}}
    if in_memory:  # one shared connection, or every checkout would see a new empty database
        kwargs = {"connect_args": {"check_same_thread": False}, "poolclass": StaticPool}
    engine = create_engine(url, **kwargs)
    _install_sqlite_hooks(engine, in_memory=in_memory, busy_timeout_s=busy_timeout_s)
    return engine


def begin_mode(write: bool) -> dict[str, str]:
    """Execution options that make the next transaction a SQLite write (IMMEDIATE) or read one."""
    return {_BEGIN_OPTION: "IMMEDIATE" if write else "DEFERRED"}


def migrate(engine: Engine, label: str, *, create: bool = True) -> None:
    """Upgrade the store's schema to this kdcicam's head revision, in one write transaction.

    Args:
        engine: the store's engine.
        label: how messages name the store.
        create: when False, a database that is not a run store yet is refused, not initialised.

    Raises:
        StoreError: the database carries a revision this kdcicam does not know (a newer one), holds
            other tables but no run store, or (``create=False``) holds no run store.
    """
    cfg = _alembic_config()
    with engine.connect() as conn:
        conn.execution_options(**begin_mode(write=True))
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATE_LOCK})")
            current = MigrationContext.configure(conn).get_current_heads()
            unknown = [rev for rev in current if rev not in known_revisions()]
            if unknown:  # checked again here, under the write lock, in case it changed meanwhile
                raise _newer_error(label, unknown)
            if not current:
                _check_new_store(conn, label, create=create)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")


def _check_new_store(conn: Connection, label: str, *, create: bool) -> None:
    """Refuse to turn a database that holds other tables (or, unless ``create``, any) into a store."""
    tables = sorted(set(inspect(conn).get_table_names()) - {"alembic_version"})
    if tables:
        shown = ", ".join(tables[:5])
        raise StoreError(f"{label} is a {_BACKEND_NAMES.get(conn.dialect.name, conn.dialect.name)} "
                         f"database but not a kdcicam run store (tables: {shown})")
    if not create:
        raise StoreError(f"no run store at {label} (nothing has been trained with this --db yet)")


def open_engine(url: str, *, create: bool = True, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Engine:
    """Check, connect to and migrate the store at ``url``; every failure is one StoreError line.

    Args:
        url: SQLAlchemy URL of the store.
        create: when False, a missing SQLite file, or a database without a run store, is an error
            instead of a new store.
        busy_timeout_s: how long to wait for another process's write lock.

    Returns:
        An engine whose schema is at the head revision.
    """
    path = sqlite_file(url)
    label = str(path) if path is not None else display_url(url)
    read_only = False
    if path is not None:
        if not create and (not path.exists() or path.stat().st_size == 0):
            raise StoreError(f"no run store at {path} (nothing has been trained with this --db yet)")
        # a store that may not be created may be read from a read-only file or folder (writes then fail)
        read_only = not create and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK))
        _check_sqlite_file(path, read_only=read_only)
    if read_only:
        return _read_only_engine(path, busy_timeout_s)
    try:
        engine = create_store_engine(url, busy_timeout_s=busy_timeout_s)
    except ImportError as exc:
        hint = f"; {_PG_INSTALL_HINT}" if make_url(url).get_backend_name() == "postgresql" else ""
        raise StoreError(f"cannot open run store {label}: {exc}{hint}") from None
    except ArgumentError as exc:
        raise StoreError(f"cannot open run store {label}: {exc}") from None
    try:
        migrate(engine, label, create=create)
    except StoreError:
        engine.dispose()
        raise
    except (SQLAlchemyError, CommandError, OSError) as exc:
        engine.dispose()
        text = one_line(exc)
        if "duplicate column" in text.lower() or "already exists" in text.lower():
            raise StoreError(f"the store at {label} records an older schema revision than its tables have "
                             f"({text}): it was downgraded or edited outside kdcicam; restore it from a copy") from None
        raise damaged_error(label, exc) or StoreError(f"cannot open run store {label}: {text}") from None
    return engine


def _read_only_engine(path: Path, busy_timeout_s: float) -> Engine:
    """An engine that reads a SQLite store it may not write (no WAL switch, no migration)."""
    # a -wal beside it means a writer may be live (mode=ro reads through it); none: immutable
    query = "mode=ro" if path.with_name(path.name + "-wal").exists() else "immutable=1"
    uri = f"{path.resolve().as_uri()}?{query}"
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=busy_timeout_s,
                                                                         check_same_thread=False))
    _install_sqlite_hooks(engine, in_memory=True, busy_timeout_s=busy_timeout_s)  # in_memory: no WAL pragmas
    return engine


_DAMAGE_SIGNS = ("malformed", "file is not a database", "disk i/o error", "database corrupt")


def damaged_error(label: str, exc: BaseException) -> StoreError | None:
    """The one-line error for a store whose file is damaged, or None when ``exc`` says nothing of that."""
    text = one_line(exc)
    if not any(sign in text.lower() for sign in _DAMAGE_SIGNS):
        return None
    return StoreError(f"the store at {label} is damaged: {text}; `sqlite3 {label} .recover` may save it")


def one_line(exc: BaseException) -> str:
    """The first line of a (DB-API) error message, without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

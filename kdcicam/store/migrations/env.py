"""Alembic environment of the run store.

kdcicam runs migrations programmatically (:func:`kdcicam.store._open.migrate`), handing over an open
connection in ``config.attributes["connection"]``; that connection is already inside a transaction.
Run by the ``alembic`` command instead, the database comes from ``-x url=...`` or the
``sqlalchemy.url`` option, opened with the store's own engine settings (psycopg 3 for
``postgresql://``, WAL for SQLite). The same revisions serve SQLite and PostgreSQL; on PostgreSQL
they run inside one transaction (its DDL is transactional), so a failed upgrade changes nothing.
"""

from __future__ import annotations

from alembic import context

from kdcicam.store._open import create_store_engine
from kdcicam.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # the alembic command line, for developers
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_store_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()

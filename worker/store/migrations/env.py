"""Alembic environment: run the migrations on the connection pqkms hands over.

pqkms never lets Alembic open its own connection: :mod:`worker.store.database` opens
one on the async engine, starts the transaction, takes the schema lock and passes the
synchronous side of that connection in ``config.attributes["connection"]`` (see
:func:`worker.store.migrations.runner.alembic_config`). Alembic sees a transaction it
did not begin and leaves committing to the caller, so a failed migration rolls back
whole (PostgreSQL and SQLite both have transactional DDL).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from worker.store import tables as _tables  # noqa: F401  (registers every table)
from worker.store.migrations.runner import CONNECTION_ATTRIBUTE


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("pqkms migrations run online only; use `pqkms db upgrade`")
    connection = context.config.attributes.get(CONNECTION_ATTRIBUTE)
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "pqkms migrations need a connection from pqkms; run `pqkms db upgrade`"
        )
    _run_on(connection)


_main()

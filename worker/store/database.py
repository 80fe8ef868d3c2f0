"""Async engines for SQLite (aiosqlite, WAL) and PostgreSQL (asyncpg) from one code path.

SQLite: every connection gets WAL, ``synchronous=FULL`` (a commit is on disk before the
reply that announces a key version leaves), a busy timeout and foreign keys. pysqlite's
own transaction handling is switched off and SQLAlchemy emits ``BEGIN`` itself:
``BEGIN IMMEDIATE`` for write transactions, so writers from several processes queue on
the database lock instead of failing half-way with "database is locked", and a plain
deferred ``BEGIN`` for reads, which WAL lets run beside a writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import SQLModel

from worker.store import tables as _tables  # noqa: F401  (registers the tables)

__all__ = [
    "POOL_SIZE",
    "SQLITE_BUSY_TIMEOUT_MS",
    "STATUS_POOL_OPTIONS",
    "WRITE_TRANSACTION",
    "create_engine_for",
    "create_schema",
    "is_sqlite",
]

# Execution option naming a write transaction; see the module docstring.
WRITE_TRANSACTION = "pqkms_write_transaction"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Pooled connections per engine, all kept open: a worker runs many requests at once,
# and SQLAlchemy's default (5, plus 10 overflow connections closed on return) churned
# connections under load. Past this many, requests wait for a connection (the status
# read, the one per-request query, does not use this pool on SQLite).
POOL_SIZE = 10
# The PostgreSQL engine of the per-request status read: no pre-ping round trip per
# checkout (KeyStore retries once on a dead connection instead).
STATUS_POOL_OPTIONS: dict[str, Any] = {
    "pool_size": POOL_SIZE,
    "max_overflow": 0,
    "pool_pre_ping": False,
}
# Any constant: serialises concurrent schema creation on PostgreSQL.
_PG_SCHEMA_LOCK_ID = 0x70716B6D73


def create_engine_for(
    url: str,
    *,
    connect_args: Mapping[str, Any] | None = None,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An async engine for ``url``, configured for the key store.

    ``sqlite:///path`` and ``postgresql://`` URLs without a driver get the async driver
    (aiosqlite, asyncpg). ``connect_args`` go to the DBAPI ``connect()`` (for asyncpg
    e.g. ``{"server_settings": {"search_path": "myschema"}}``); ``engine_kwargs`` go
    to :func:`sqlalchemy.ext.asyncio.create_async_engine`.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    args = dict(connect_args or {})
    # Bound parameters (wrapped seeds, key hashes) must never appear in error text or logs.
    engine_kwargs.setdefault("hide_parameters", True)
    if backend == "sqlite":
        if parsed.drivername == "sqlite":
            parsed = parsed.set(drivername="sqlite+aiosqlite")
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # (In-memory databases get a single-connection pool that takes no sizes.)
            engine_kwargs.setdefault("pool_size", POOL_SIZE)
            engine_kwargs.setdefault("max_overflow", 0)
        engine = create_async_engine(parsed, connect_args=args, **engine_kwargs)
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+asyncpg")
        engine_kwargs.setdefault("pool_pre_ping", True)
        engine_kwargs.setdefault("pool_size", POOL_SIZE)
        engine_kwargs.setdefault("max_overflow", 0)
        return create_async_engine(parsed, connect_args=args, **engine_kwargs)
    raise ValueError(f"Unsupported database backend {backend!r}; use SQLite or PostgreSQL")


def is_sqlite(engine: AsyncEngine) -> bool:
    """Whether the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Autocommit at the driver level: SQLAlchemy's "begin" hook below decides BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first, so switching to WAL waits for a lock instead of failing.
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = bool(conn.get_execution_options().get(WRITE_TRANSACTION, False))
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


async def create_schema(engine: AsyncEngine) -> None:
    """Create every table and index that does not exist yet (idempotent, safe concurrently)."""
    async with engine.connect() as conn:
        await conn.execution_options(**{WRITE_TRANSACTION: True})
        async with conn.begin():
            if engine.dialect.name == "postgresql":
                # Two workers starting together must not both try CREATE TABLE.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:lock_id)"),
                    {"lock_id": _PG_SCHEMA_LOCK_ID},
                )
            await conn.run_sync(SQLModel.metadata.create_all)

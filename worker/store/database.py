"""Async engines for SQLite (aiosqlite, WAL) and PostgreSQL (asyncpg) from one code path.

SQLite: every connection gets WAL, ``synchronous=FULL`` (a commit is on disk before the
reply that announces a key version leaves), a busy timeout and foreign keys. pysqlite's
own transaction handling is switched off and SQLAlchemy emits ``BEGIN`` itself:
``BEGIN IMMEDIATE`` for write transactions, so writers from several processes queue on
the database lock instead of failing half-way with "database is locked", and a plain
deferred ``BEGIN`` for reads, which WAL lets run beside a writer.

The schema is managed by Alembic (:mod:`worker.store.migrations`): :func:`create_schema`
upgrades to the newest revision under a lock, :func:`require_current_schema` only checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_only
from sqlalchemy.util.concurrency import in_greenlet
from sqlmodel.ext.asyncio.session import AsyncSession

from worker.store import migrations
from worker.store import tables as _tables  # noqa: F401  (registers the tables)
from worker.store.migrations import SchemaState, SchemaUpgrade
from worker.store.sqlite_wal import switch_to_wal
from worker.store.write_deadline import remaining_seconds

__all__ = [
    "POOL_SIZE",
    "SQLITE_BUSY_TIMEOUT_MS",
    "STATUS_POOL_OPTIONS",
    "WRITE_TRANSACTION",
    "DatabaseNotFound",
    "UnsupportedDatabaseURL",
    "async_database_url",
    "create_engine_for",
    "create_schema",
    "is_sqlite",
    "open_session",
    "require_current_schema",
    "require_existing_database",
    "schema_state",
    "sqlite_database_file",
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
# Any constant: serialises concurrent schema upgrades on PostgreSQL.
_PG_SCHEMA_LOCK_ID = 0x70716B6D73
# URL scheme → the async driver it means; the store speaks only these two drivers.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class UnsupportedDatabaseURL(ValueError):
    """A database URL whose scheme (backend or driver) the key store does not speak."""


class DatabaseNotFound(Exception):
    """A SQLite database that should exist does not (a mistyped path, say)."""


def async_database_url(url: str) -> URL:
    """``url`` parsed, with the async driver its scheme stands for.

    ``sqlite://`` means ``sqlite+aiosqlite://``; ``postgresql://`` and ``postgres://``
    mean ``postgresql+asyncpg://``. Any other scheme raises
    :class:`UnsupportedDatabaseURL` with a one-line message naming the accepted ones
    (and nothing else of the URL, which may hold a password).
    """
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise UnsupportedDatabaseURL(
            f"unsupported database URL scheme {parsed.drivername!r}: use "
            "sqlite+aiosqlite:///PATH (or sqlite:///PATH) or "
            "postgresql+asyncpg://USER@HOST/DB (or postgresql://, postgres://)"
        )
    return parsed.set(drivername=driver)


def sqlite_database_file(url: str) -> Path | None:
    """The file of a SQLite URL; ``None`` for PostgreSQL, in-memory and ``file:`` URI
    databases. Raises :class:`UnsupportedDatabaseURL` like :func:`async_database_url`."""
    parsed = async_database_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def require_existing_database(url: str) -> None:
    """Refuse, before anything is created, a URL this store cannot use or a SQLite file
    that does not exist: connecting would create an empty database (and the worker its
    ``-keystate`` file) at a mistyped path. For commands that read an existing store."""
    path = sqlite_database_file(url)
    if path is not None and not path.is_file():
        raise DatabaseNotFound(
            f"no SQLite database at {path} (a mistyped path? `pqkms db init` creates one)"
        )


def create_engine_for(
    url: str,
    *,
    connect_args: Mapping[str, Any] | None = None,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An async engine for ``url``, configured for the key store.

    ``sqlite:///path``, ``postgresql://`` and ``postgres://`` URLs get the async driver
    (aiosqlite, asyncpg); other schemes raise :class:`UnsupportedDatabaseURL` (see
    :func:`async_database_url`). ``connect_args`` go to the DBAPI ``connect()`` (for asyncpg
    e.g. ``{"server_settings": {"search_path": "myschema"}}``); ``engine_kwargs`` go
    to :func:`sqlalchemy.ext.asyncio.create_async_engine`.
    """
    parsed = async_database_url(url)
    args = dict(connect_args or {})
    # Bound parameters (wrapped seeds, key hashes) must never appear in error text or logs.
    engine_kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine_kwargs.setdefault("pool_size", POOL_SIZE)
            engine_kwargs.setdefault("max_overflow", 0)
        else:  # in-memory databases get a single-connection pool that takes no sizes
            engine_kwargs.pop("pool_size", None)
            engine_kwargs.pop("max_overflow", None)
        engine = create_async_engine(parsed, connect_args=args, **engine_kwargs)
        _configure_sqlite(engine)
        return engine
    engine_kwargs.setdefault("pool_pre_ping", True)
    engine_kwargs.setdefault("pool_size", POOL_SIZE)
    engine_kwargs.setdefault("max_overflow", 0)
    return create_async_engine(parsed, connect_args=args, **engine_kwargs)


@asynccontextmanager
async def open_session(engine: AsyncEngine, *, write: bool) -> AsyncIterator[AsyncSession]:
    """A session whose connection is taken at once, so that the begin hook knows whether
    it is a write (SQLite then begins with BEGIN IMMEDIATE)."""
    async with AsyncSession(engine, expire_on_commit=False) as session:
        await session.connection(execution_options={WRITE_TRANSACTION: write})
        yield session


def is_sqlite(engine: AsyncEngine) -> bool:
    """Whether the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


def _pause(seconds: float) -> None:
    # Connect hooks run in SQLAlchemy's greenlet on the event loop: wait without
    # blocking it (a synchronous engine, outside any greenlet, sleeps).
    if in_greenlet():
        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Autocommit at the driver level: SQLAlchemy's "begin" hook below decides BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first, so switching to WAL waits for a lock where SQLite lets
            # it; where it does not, the switch is retried (worker.store.sqlite_wal).
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            switch_to_wal(cursor.execute, SQLITE_BUSY_TIMEOUT_MS / 1000, _pause)
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = bool(conn.get_execution_options().get(WRITE_TRANSACTION, False))
        if not write:
            conn.exec_driver_sql("BEGIN")
            return
        left = remaining_seconds()  # a request's deadline (raises once it has passed)
        if left is None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # Wait for the write lock no longer than the request may (worker.store.write_deadline).
        wait_ms = max(1, min(int(left * 1000), SQLITE_BUSY_TIMEOUT_MS))
        conn.exec_driver_sql(f"PRAGMA busy_timeout={wait_ms}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


async def create_schema(engine: AsyncEngine) -> SchemaUpgrade:
    """Upgrade the schema to the newest revision; idempotent and safe concurrently.

    An empty database gets every migration; one created before migrations (pqkms
    tables, no revision) is adopted at the baseline first, keeping its rows. Concurrent
    callers queue: on PostgreSQL on an advisory lock, on SQLite on the ``BEGIN
    IMMEDIATE`` write lock; the second one finds the schema at head and does nothing.
    Raises :class:`~worker.store.migrations.SchemaTooNew` for a revision this code
    does not know.
    """
    async with engine.connect() as conn:
        await conn.execution_options(**{WRITE_TRANSACTION: True})
        async with conn.begin():
            if engine.dialect.name == "postgresql":
                # Held until commit: two processes must not both run the same migration.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:lock_id)"),
                    {"lock_id": _PG_SCHEMA_LOCK_ID},
                )
            return await conn.run_sync(migrations.upgrade_to_head)


async def schema_state(engine: AsyncEngine) -> SchemaState:
    """The database's schema revision and this code's head; changes nothing."""
    async with engine.connect() as conn:
        return await conn.run_sync(migrations.read_schema_state)


async def require_current_schema(engine: AsyncEngine) -> SchemaState:
    """The schema state if it is at head; else raise ``SchemaOutOfDate`` (its message
    names ``pqkms db upgrade``) or ``SchemaTooNew``. Changes nothing."""
    async with engine.connect() as conn:
        return await conn.run_sync(migrations.require_head)

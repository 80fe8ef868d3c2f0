"""The database side of the audit log: sealed entries appended in one transaction per
flush, chains read back for verification.

Appends go through one connection held for the life of the log (no pool checkout, no
ORM session, one multi-row ``INSERT`` per flush); after any failure that connection is
dropped and the next append opens a fresh one. The ``pqkms_audit_chain`` row of a chain
is inserted with its open record and completed with its close record, in the same
transactions.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.audit import AuditKind
from worker.audit.entry import AuditEntry
from worker.store.audit_sqlite_writer import SqliteAuditWriter
from worker.store.database import WRITE_TRANSACTION, create_engine_for
from worker.store.status_reader import sqlite_reader_path
from worker.store.tables import ROW_SCHEMA_VERSION, AuditChain, AuditRecord, KeyVersion

__all__ = ["AuditLog", "AuditSnapshot", "ChainHead"]

_RECORDS: Table = AuditRecord.__table__  # type: ignore[attr-defined]
_CHAINS: Table = AuditChain.__table__  # type: ignore[attr-defined]
_KEY_VERSIONS: Table = KeyVersion.__table__  # type: ignore[attr-defined]
# Rows fetched per round trip when a snapshot streams every record.
_READ_BATCH = 2000


@dataclass(frozen=True, slots=True)
class ChainHead:
    """A ``pqkms_audit_chain`` row: when a chain opened and, once closed, where it ended."""

    chain_id: str
    worker_id: str
    opened_at: datetime
    closed_at: datetime | None
    last_seq: int | None
    last_hash: str | None
    # Records 1..archived_seq are in archive files; archived_hash is the last one's hash.
    archived_seq: int = 0
    archived_hash: str | None = None


def _record_row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "chain_id": entry.chain_id,
        "seq": entry.seq,
        "kind": entry.kind,
        "worker_id": entry.worker_id,
        "recorded_at": entry.recorded_at,
        "operation": entry.operation,
        "request_id": entry.request_id,
        "tenant_id": entry.tenant_id,
        "algorithm": entry.algorithm,
        "key_version": entry.key_version,
        "outcome": entry.outcome,
        "items": entry.items,
        "duration_us": entry.duration_us,
        "prev_hash": entry.prev_hash,
        "record_hash": entry.record_hash,
        "schema_version": entry.schema_version,
    }


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        chain_id=row.chain_id,
        seq=row.seq,
        kind=row.kind,
        worker_id=row.worker_id,
        recorded_at=row.recorded_at,
        operation=row.operation,
        request_id=row.request_id,
        tenant_id=row.tenant_id,
        algorithm=row.algorithm,
        key_version=row.key_version,
        outcome=row.outcome,
        items=row.items,
        duration_us=row.duration_us,
        prev_hash=row.prev_hash,
        record_hash=row.record_hash,
        schema_version=row.schema_version,
    )


@dataclass(frozen=True, slots=True)
class KeyVersionRow:
    """A key version as the audit cross-check sees it."""

    tenant_id: str
    algorithm: str
    version: int
    created_at: datetime


class AuditSnapshot:
    """A consistent read of the whole audit log (one read transaction)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def chains(self) -> list[ChainHead]:
        """Every ``pqkms_audit_chain`` row."""
        result = await self._connection.execute(select(_CHAINS).order_by(_CHAINS.c.chain_id))
        return [
            ChainHead(row.chain_id, row.worker_id, row.opened_at, row.closed_at,
                      row.last_seq, row.last_hash, row.archived_seq, row.archived_hash)
            for row in result
        ]

    async def key_versions(self) -> list[KeyVersionRow]:
        """Every key version that exists (tenant, algorithm, version, created_at)."""
        query = select(_KEY_VERSIONS.c.tenant_id, _KEY_VERSIONS.c.algorithm,
                       _KEY_VERSIONS.c.version, _KEY_VERSIONS.c.created_at)
        return [KeyVersionRow(row.tenant_id, row.algorithm, row.version, row.created_at)
                for row in await self._connection.execute(query)]

    async def entries_of(self, operation: str) -> list[AuditEntry]:
        """The records of one operation (a scan: for rare operations only)."""
        query = select(_RECORDS).where(_RECORDS.c.operation == operation) \
            .order_by(_RECORDS.c.chain_id, _RECORDS.c.seq)
        return [_entry(row) for row in await self._connection.execute(query)]

    async def entries(self) -> AsyncIterator[AuditEntry]:
        """Every record, ordered by chain and sequence number (streamed, not all in memory)."""
        query = select(_RECORDS).order_by(_RECORDS.c.chain_id, _RECORDS.c.seq)
        result = await self._connection.stream(
            query.execution_options(yield_per=_READ_BATCH)
        )
        async for row in result:
            yield _entry(row)


class AuditLog:
    """Appends and reads ``pqkms_audit_record`` / ``pqkms_audit_chain``."""

    def __init__(self, engine: AsyncEngine, *, owns_engine: bool = False,
                 fsync: bool = False) -> None:
        """Use ``engine`` (the key store's, in a worker); ``owns_engine``: :meth:`close`
        disposes of it. ``fsync``: on SQLite, each append is fsync'd before it returns
        (``synchronous=FULL``); by default it is in the WAL (``NORMAL``). On PostgreSQL
        a commit is as durable as the server's ``synchronous_commit`` makes it."""
        self._engine = engine
        self._owns_engine = owns_engine
        self._writer: AsyncConnection | None = None
        path = sqlite_reader_path(engine.url) if engine.dialect.name == "sqlite" else None
        # A SQLite file gets the direct writer; PostgreSQL and in-memory SQLite the engine.
        self._sqlite = None if path is None else SqliteAuditWriter(path, fsync=fsync)

    @classmethod
    def connect(cls, database_url: str, *,
                connect_args: Mapping[str, Any] | None = None) -> AuditLog:
        """A log on its own small engine (for the ``pqkms audit`` commands and tests)."""
        engine = create_engine_for(database_url, connect_args=connect_args)
        return cls(engine, owns_engine=True)

    @property
    def engine(self) -> AsyncEngine:
        """The engine the log reads and writes through."""
        return self._engine

    async def close(self) -> None:
        """Return the append connection (and dispose of an engine of our own)."""
        if self._sqlite is not None:
            self._sqlite.close()
        await self._drop_writer()
        if self._owns_engine:
            await self._engine.dispose()

    async def _writer_connection(self) -> AsyncConnection:
        if self._writer is None:
            connection = await self._engine.connect()
            # Every transaction on this connection writes: BEGIN IMMEDIATE on SQLite.
            await connection.execution_options(**{WRITE_TRANSACTION: True})
            self._writer = connection
        return self._writer

    async def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.close()

    async def append(self, entries: Sequence[AuditEntry]) -> None:
        """Write ``entries`` (consecutive records of chains) in one transaction, durably
        committed on return; on any exception nothing was written, or the outcome is
        unknown (a connection lost during ``COMMIT``): :meth:`last_record` tells."""
        if not entries:
            return
        if self._sqlite is not None:
            await self._sqlite.append(entries)
            return
        opened = [
            {"chain_id": entry.chain_id, "worker_id": entry.worker_id,
             "opened_at": entry.recorded_at, "schema_version": ROW_SCHEMA_VERSION}
            for entry in entries if entry.kind == AuditKind.OPEN
        ]
        closed = [entry for entry in entries if entry.kind == AuditKind.CLOSE]
        connection = await self._writer_connection()
        try:
            async with connection.begin():
                if opened:
                    await connection.execute(insert(_CHAINS), opened)
                await connection.execute(insert(_RECORDS), [_record_row(e) for e in entries])
                for entry in closed:
                    await connection.execute(
                        update(_CHAINS)
                        .where(_CHAINS.c.chain_id == entry.chain_id)
                        .values(closed_at=entry.recorded_at, last_seq=entry.seq,
                                last_hash=entry.record_hash)
                    )
        except BaseException:
            await self._drop_writer()
            raise

    async def last_record(self, chain_id: str) -> tuple[int, str] | None:
        """``(seq, record_hash)`` of the chain's last stored record, or ``None``."""
        async with self._engine.connect() as connection:
            last_seq = (
                select(func.max(_RECORDS.c.seq))
                .where(_RECORDS.c.chain_id == chain_id)
                .scalar_subquery()
            )
            row = (
                await connection.execute(
                    select(_RECORDS.c.seq, _RECORDS.c.record_hash).where(
                        _RECORDS.c.chain_id == chain_id, _RECORDS.c.seq == last_seq
                    )
                )
            ).first()
        return None if row is None else (int(row.seq), str(row.record_hash))

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AuditSnapshot]:
        """A consistent view of every chain and record while the context is open."""
        async with self._engine.connect() as connection:
            if self._engine.dialect.name == "postgresql":
                # One snapshot for both queries: a chain closing meanwhile must not be
                # seen closed in one and open in the other.
                await connection.execution_options(isolation_level="REPEATABLE READ")
            # (SQLite: the deferred BEGIN's first read fixes the WAL snapshot.)
            async with connection.begin():
                yield AuditSnapshot(connection)

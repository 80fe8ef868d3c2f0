"""The SQLite side of audit appends: one ``sqlite3`` transaction per flush, no ORM.

Through SQLAlchemy and aiosqlite a flush was ``BEGIN IMMEDIATE``, ``INSERT`` and
``COMMIT``, each a hand-off to aiosqlite's thread and back (≈ 80-95 µs of CPU apiece on
the 2-core machine, docs/performance.md). Here the whole transaction is one call:

- ``fsync=False`` (the default, ``synchronous=NORMAL`` in WAL mode): a commit is in the
  WAL, and survives the worker's crash, when the call returns; a power cut may lose the
  records of the last instants (they are also in ``PQKMS_AUDIT``). It costs tens of
  microseconds, so it runs on the event loop, taking the write lock without waiting
  (``busy_timeout=0``); when another process holds the lock, the same call runs in the
  writer's own thread with the normal busy timeout.
- ``fsync=True`` (``synchronous=FULL``): the WAL is fsync'd before the call returns
  (1-3 ms on this machine's disk), always in the writer's thread.

Values are stored exactly as SQLAlchemy's SQLite dialect stores them (naive UTC
``YYYY-MM-DD HH:MM:SS.ffffff`` timestamps), so the ORM reads the rows back unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from schemas.audit import AuditKind
from worker.audit.entry import AuditEntry
from worker.store.sqlite_wal import is_busy, switch_to_wal
from worker.store.tables import ROW_SCHEMA_VERSION

__all__ = ["SqliteAuditWriter", "sqlite_timestamp"]

_BUSY_TIMEOUT_MS = 30_000
_INSERT_RECORD = (
    "INSERT INTO pqkms_audit_record (chain_id, seq, kind, worker_id, recorded_at, operation, "
    "request_id, tenant_id, algorithm, key_version, outcome, items, duration_us, prev_hash, "
    "record_hash, schema_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_CHAIN = (
    "INSERT INTO pqkms_audit_chain (chain_id, worker_id, opened_at, schema_version) "
    "VALUES (?, ?, ?, ?)"
)
_CLOSE_CHAIN = (
    "UPDATE pqkms_audit_chain SET closed_at = ?, last_seq = ?, last_hash = ? "
    "WHERE chain_id = ?"
)

_Row = tuple[object, ...]


def sqlite_timestamp(moment: datetime) -> str:
    """``moment`` as SQLAlchemy's SQLite ``DATETIME`` stores it (naive UTC)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime in an audit record")
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(sep=" ", timespec="microseconds")


def _stored_time(entry: AuditEntry) -> str:
    canonical = entry.recorded_text
    if canonical is not None:  # 2026-01-02T03:04:05.000006Z → 2026-01-02 03:04:05.000006
        return f"{canonical[:10]} {canonical[11:26]}"
    return sqlite_timestamp(entry.recorded_at)


def _record_row(entry: AuditEntry) -> _Row:
    return (
        entry.chain_id, entry.seq, entry.kind, entry.worker_id,
        _stored_time(entry), entry.operation, entry.request_id,
        entry.tenant_id, entry.algorithm, entry.key_version, entry.outcome, entry.items,
        entry.duration_us, entry.prev_hash, entry.record_hash, entry.schema_version,
    )


class SqliteAuditWriter:
    """Appends sealed entries to a SQLite file on one connection of its own."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self._path = path
        self._fsync = fsync
        self._connection: sqlite3.Connection | None = None
        self._busy_timeout_ms = _BUSY_TIMEOUT_MS  # the connection's, as _connect sets it
        self._thread: ThreadPoolExecutor | None = None

    def _connect(self, wait: bool) -> sqlite3.Connection:
        # isolation_level=None: the transaction is ours (BEGIN IMMEDIATE ... COMMIT).
        connection = sqlite3.connect(self._path, isolation_level=None,
                                     check_same_thread=False, cached_statements=8)
        try:
            connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            if wait:  # (in the writer's thread: retried while another process has it)
                switch_to_wal(connection.execute, _BUSY_TIMEOUT_MS / 1000)
            else:  # (on the event loop: busy goes to the thread, see append)
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
        except BaseException:
            connection.close()
            raise
        return connection

    async def append(self, entries: Sequence[AuditEntry]) -> None:
        """Write ``entries`` in one transaction; committed (see the module docstring) on
        return. On any exception nothing was written, or the outcome is unknown."""
        if not entries:
            return
        records: list[_Row] = [_record_row(entry) for entry in entries]
        opened: list[_Row] = [
            (entry.chain_id, entry.worker_id, _stored_time(entry), ROW_SCHEMA_VERSION)
            for entry in entries if entry.kind == AuditKind.OPEN
        ]
        closed: list[_Row] = [
            (_stored_time(entry), entry.seq, entry.record_hash, entry.chain_id)
            for entry in entries if entry.kind == AuditKind.CLOSE
        ]
        if not self._fsync:
            try:
                self._write(records, opened, closed, wait=False)
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
            # Another process holds the write lock: wait for it off the event loop.
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pqkms-audit")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._write, records, opened, closed, True)

    def _write(self, records: list[_Row], opened: list[_Row], closed: list[_Row],
               wait: bool) -> None:
        connection = self._connection
        if connection is None:
            connection = self._connection = self._connect(wait)
            self._busy_timeout_ms = _BUSY_TIMEOUT_MS
        try:
            timeout_ms = _BUSY_TIMEOUT_MS if wait else 0
            if timeout_ms != self._busy_timeout_ms:  # (a statement saved on most commits)
                connection.execute(f"PRAGMA busy_timeout={timeout_ms}")
                self._busy_timeout_ms = timeout_ms
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):  # (busy: nothing began; the caller retries, waiting)
                self._drop_connection()
            raise
        except BaseException:
            self._drop_connection()
            raise
        try:
            if opened:
                connection.executemany(_INSERT_CHAIN, opened)
            connection.executemany(_INSERT_RECORD, records)
            if closed:
                connection.executemany(_CLOSE_CHAIN, closed)
            connection.execute("COMMIT")
        except BaseException:
            # Rolled back, or (a failed COMMIT) unknown: drop the connection either way.
            self._drop_connection()
            raise

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()  # (rolls back an open transaction)

    def close(self) -> None:
        """Close the connection (a later append opens a new one) and the thread."""
        self._drop_connection()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)

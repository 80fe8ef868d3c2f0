"""The direct SQLite audit writer: its durability setting, and a write lock held by
another process (it waits off the event loop, then commits)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.audit import AuditKind
from worker.audit.entry import GENESIS_HASH, AuditEntry
from worker.store import MasterKey
from worker.store.audit_log import AuditLog
from worker.store.audit_sqlite_writer import SqliteAuditWriter, sqlite_timestamp
from worker.store.repository import KeyStore


def _entries(count: int) -> list[AuditEntry]:
    chain_id, prev = str(uuid.uuid4()), GENESIS_HASH
    entries = []
    for seq in range(1, count + 1):
        entry = AuditEntry.seal(
            chain_id=chain_id, seq=seq, kind=AuditKind.OPEN if seq == 1 else AuditKind.REQUEST,
            worker_id="test:1", recorded_at=datetime.now(UTC), prev_hash=prev, record=None,
        )
        entries.append(entry)
        prev = entry.record_hash
    return entries


@pytest.fixture
async def database(tmp_path: Path, master_key: MasterKey) -> Path:
    path = tmp_path / "audit.db"
    store = await KeyStore.open(f"sqlite+aiosqlite:///{path}", master_key, create_schema=True)
    await store.close()
    return path


def _count(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM pqkms_audit_record").fetchone()[0])


class _Ticker:
    """Counts turns of the event loop (one per 10 ms) while it runs: a blocked loop stops
    counting."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.ticks += 1

    def stop(self) -> None:
        self._task.cancel()


def test_timestamps_are_spelled_as_sqlalchemy_stores_them() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert sqlite_timestamp(moment) == "2026-01-02 03:04:05.000006"
    with pytest.raises(ValueError, match="naive"):
        sqlite_timestamp(datetime(2026, 1, 2))


@pytest.mark.parametrize(("fsync", "level"), [(False, 1), (True, 2)])
async def test_durability_setting_picks_the_synchronous_level(
    database: Path, fsync: bool, level: int
) -> None:
    writer = SqliteAuditWriter(database, fsync=fsync)
    try:
        await writer.append(_entries(3))
        connection = writer._connection
        assert connection is not None
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == level
    finally:
        writer.close()
    assert _count(database) == 3


async def test_a_held_write_lock_is_waited_for_off_the_event_loop(database: Path) -> None:
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    writer = SqliteAuditWriter(database)
    ticker = _Ticker()
    try:
        append = asyncio.create_task(writer.append(_entries(2)))
        await asyncio.sleep(0.3)
        assert not append.done()  # waiting for the lock...
        assert ticker.ticks >= 10  # ...while the loop goes on
        holder.execute("COMMIT")
        started = time.monotonic()
        await asyncio.wait_for(append, 5)
        assert time.monotonic() - started < 5
    finally:
        ticker.stop()
        writer.close()
        holder.close()
    assert _count(database) == 2


async def test_after_a_waited_commit_the_next_tries_without_waiting_again(
    database: Path,
) -> None:
    # The writer sets the busy timeout only when it changes: after a commit that waited
    # for the lock, the next one on the event loop must again not wait.
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    writer = SqliteAuditWriter(database)
    entries = _entries(4)
    ticker = _Ticker()
    try:
        for batch in (entries[:2], entries[2:]):
            holder.execute("BEGIN IMMEDIATE")
            before = ticker.ticks
            append = asyncio.create_task(writer.append(batch))
            await asyncio.sleep(0.3)
            assert not append.done()
            assert ticker.ticks - before >= 10  # the loop went on while the append waited
            holder.execute("COMMIT")
            await asyncio.wait_for(append, 5)
        await writer.append(_entries(1))  # and with the lock free, at once on the loop
    finally:
        ticker.stop()
        writer.close()
        holder.close()
    assert _count(database) == 5


async def test_a_failed_insert_writes_nothing_and_the_next_append_works(database: Path) -> None:
    log = AuditLog.connect(f"sqlite+aiosqlite:///{database}")
    entries = _entries(3)
    try:
        await log.append(entries[:2])
        with pytest.raises(sqlite3.IntegrityError):
            await log.append([entries[2], entries[1]])  # seq 2 again: primary key
        assert _count(database) == 2
        await log.append(entries[2:])
    finally:
        await log.close()
    assert _count(database) == 3


def test_what_seal_keeps_equals_what_a_stored_entry_recomputes() -> None:
    from dataclasses import fields

    from worker.store.audit_sqlite_writer import _stored_time

    for entry in _entries(3):
        assert entry.message is not None and entry.recorded_text is not None
        stored = AuditEntry(**{f.name: getattr(entry, f.name) for f in fields(AuditEntry)
                               if f.name not in ("message", "recorded_text")})
        assert stored.message is None
        assert stored.to_message() == entry.to_message()
        assert stored.computed_hash() == entry.record_hash
        assert _stored_time(entry) == _stored_time(stored) == sqlite_timestamp(entry.recorded_at)

"""Opening a store: schema creation, the master-key check, SQLite settings."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text, update

from schemas.algorithms import Plan
from worker.store import KeyStore, MasterKey, MasterKeyMismatch
from worker.store.tables import MasterKeyCheck

from .conftest import Backend


async def test_reopen_with_the_same_key_keeps_data(backend: Backend, master_key: MasterKey) -> None:
    store = await backend.open(master_key)
    tenant, api_key = await store.create_tenant("acme", Plan.PRO)
    await store.close()

    reopened = await backend.open(MasterKey(master_key.key))
    try:
        assert await reopened.authenticate(api_key) == tenant
    finally:
        await reopened.close()


async def test_wrong_master_key_is_refused(backend: Backend, master_key: MasterKey) -> None:
    store = await backend.open(master_key)
    await store.close()
    with pytest.raises(MasterKeyMismatch, match="does not match this database"):
        await backend.open(MasterKey(os.urandom(32)))


async def test_tampered_check_value_is_refused(backend: Backend, master_key: MasterKey) -> None:
    store = await backend.open(master_key)
    async with store.engine.begin() as conn:
        await conn.execute(update(MasterKeyCheck).values(check_value=b"\x00" * 16))
    await store.close()
    with pytest.raises(MasterKeyMismatch):
        await backend.open(master_key)


async def test_open_without_schema_creation_on_existing_db(
    backend: Backend, master_key: MasterKey
) -> None:
    store = await backend.open(master_key)
    await store.close()
    again = await backend.open(master_key, create_schema=False)
    await again.close()


async def test_sqlite_is_in_wal_mode_with_durable_commits(
    tmp_path: Path, master_key: MasterKey
) -> None:
    path = tmp_path / "new-dir" / "pqkms.db"
    store = await KeyStore.open(f"sqlite:///{path}", master_key)  # driver added for us
    try:
        await store.create_tenant("t", Plan.FREE)
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
    finally:
        await store.close()
    # journal_mode=WAL is stored in the file: a plain sqlite3 connection sees it.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


async def test_pool_size_bounds_every_pool_of_the_store(
    backend: Backend, master_key: MasterKey
) -> None:
    store = await KeyStore.open(backend.url, master_key, connect_args=backend.connect_args,
                                pool_size=3)
    try:
        engines = [store._engine, store._status_engine]
        sizes = [engine.pool.size() for engine in engines if engine is not None]  # type: ignore[attr-defined]
        assert sizes == ([3] if backend.name == "sqlite" else [3, 3])
    finally:
        await store.close()


async def test_an_in_memory_sqlite_store_takes_a_pool_size() -> None:
    store = await KeyStore.open("sqlite+aiosqlite:///:memory:", MasterKey(os.urandom(32)),
                                pool_size=3)
    await store.close()

"""The per-request status read: never stale once a change is answered, tenant-scoped.

On SQLite it runs on a synchronous ``sqlite3`` connection kept open between reads, its
answers remembered until a status changes (``worker.store.key_state``); these tests
prove that a change committed by another store or another process is still seen on the
next read, and that a busy database falls back to the async path.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from schemas.algorithms import Algorithm, KeyStatus, Plan
from tests.store.conftest import Backend
from worker.store import KeyStore, MasterKey, NewKeyMaterial, TenantRecord
from worker.store.status_reader import SqliteStatusReader

K = Algorithm.KYBER768
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


async def test_status_of_each_version_and_nothing_else(
    store: KeyStore, tenant: TenantRecord, new_material: Callable[[], NewKeyMaterial]
) -> None:
    await store.generate_first(tenant.tenant_id, K, new_material(), None)
    await store.rotate(tenant.tenant_id, K, new_material(), None)
    assert await store.get_key_status(tenant.tenant_id, K, 1) is KeyStatus.RETIRED
    assert await store.get_key_status(tenant.tenant_id, K, 2) is KeyStatus.ACTIVE
    assert await store.get_key_status(tenant.tenant_id, K, 3) is None
    assert await store.get_key_status(tenant.tenant_id, Algorithm.DILITHIUM3, 1) is None


async def test_another_tenants_version_is_not_found(
    store: KeyStore, tenant: TenantRecord, new_material: Callable[[], NewKeyMaterial]
) -> None:
    await store.generate_first(tenant.tenant_id, K, new_material(), None)
    other, _ = await store.create_tenant("other", Plan.FREE)
    assert await store.get_key_status(other.tenant_id, K, 1) is None


async def test_a_change_committed_by_another_store_is_seen_at_once(
    backend: Backend,
    master_key: MasterKey,
    store: KeyStore,
    tenant: TenantRecord,
    new_material: Callable[[], NewKeyMaterial],
) -> None:
    tid = tenant.tenant_id
    await store.generate_first(tid, K, new_material(), None)
    # The reader is warm now and, on SQLite, the status remembered (worker.store.key_state).
    assert await store.get_key_status(tid, K, 1) is KeyStatus.ACTIVE
    other = await backend.open(master_key)  # as another worker would
    try:
        await other.rotate(tid, K, new_material(), None)
        assert await store.get_key_status(tid, K, 1) is KeyStatus.RETIRED
        await other.archive(tid, K, 1)
        assert await store.get_key_status(tid, K, 1) is KeyStatus.ARCHIVED
    finally:
        await other.close()


async def test_a_change_committed_by_another_process_is_seen_at_once(
    backend: Backend,
    master_key: MasterKey,
    store: KeyStore,
    tenant: TenantRecord,
    new_material: Callable[[], NewKeyMaterial],
) -> None:
    tid = tenant.tenant_id
    await store.generate_first(tid, K, new_material(), None)
    await store.rotate(tid, K, new_material(), None)
    assert await store.get_key_status(tid, K, 1) is KeyStatus.RETIRED
    script = textwrap.dedent(
        """
        import asyncio, base64, os, sys
        from schemas.algorithms import Algorithm
        from worker.store import KeyStore, MasterKey

        async def main() -> None:
            url, schema, tenant_id = sys.argv[1:]
            key = base64.b64decode(os.environ["PQKMS_TEST_MASTER_KEY"])
            connect_args = {"server_settings": {"search_path": schema}} if schema else None
            store = await KeyStore.open(url, MasterKey(key),
                                        create_schema=False, connect_args=connect_args)
            await store.archive(tenant_id, Algorithm.KYBER768, 1)
            await store.close()

        asyncio.run(main())
        """
    )
    schema = backend.connect_args.get("server_settings", {}).get("search_path", "")
    # The key goes through the environment, not the command line (visible in ps).
    env = {**os.environ, "PQKMS_TEST_MASTER_KEY": base64.b64encode(master_key.key).decode()}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, backend.url, schema, tid, env=env, cwd=_PROJECT_ROOT
    )
    assert await asyncio.wait_for(process.wait(), timeout=60) == 0
    assert await store.get_key_status(tid, K, 1) is KeyStatus.ARCHIVED


async def test_sqlite_busy_falls_back_to_the_async_path(
    backend: Backend,
    store: KeyStore,
    tenant: TenantRecord,
    new_material: Callable[[], NewKeyMaterial],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend.name != "sqlite":
        pytest.skip("the synchronous reader exists on SQLite only")
    await store.generate_first(tenant.tenant_id, K, new_material(), None)

    def busy(*_: object) -> str | None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SqliteStatusReader, "status", busy)
    assert await store.get_key_status(tenant.tenant_id, K, 1) is KeyStatus.ACTIVE
    assert await store.get_key_status(tenant.tenant_id, K, 2) is None


async def test_sqlite_reader_cannot_write(backend: Backend, store: KeyStore) -> None:
    if backend.sqlite_path is None:
        pytest.skip("the synchronous reader exists on SQLite only")
    reader = SqliteStatusReader(backend.sqlite_path)
    try:
        assert reader.status("nobody", K.value, 1) is None
        connection = reader._connect()
        try:
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                connection.execute("DELETE FROM pqkms_key_version")
        finally:
            connection.close()
    finally:
        reader.close()


async def test_sqlite_reader_leaves_no_read_transaction_open(
    backend: Backend, store: KeyStore, tenant: TenantRecord,
    new_material: Callable[[], NewKeyMaterial],
) -> None:
    if backend.sqlite_path is None:
        pytest.skip("the synchronous reader exists on SQLite only")
    await store.generate_first(tenant.tenant_id, K, new_material(), None)
    reader = SqliteStatusReader(backend.sqlite_path)
    try:
        assert reader.status(tenant.tenant_id, K.value, 1) == "active"
        assert reader._connection is not None
        # An open read transaction would pin an old snapshot (and block checkpoints).
        assert not reader._connection.in_transaction
    finally:
        reader.close()

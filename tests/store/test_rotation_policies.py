"""Rotation policies in the store, on SQLite and PostgreSQL: set/get/list/delete per
tenant, the due-key scan, and the conditional rotate that lets racing schedulers
rotate a due key once."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlmodel import SQLModel

from schemas.algorithms import Algorithm, KeyStatus, Plan
from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.store import KeyStore, MasterKey, NewKeyMaterial, TenantRecord
from worker.store.repository import ActiveVersionChanged
from worker.store.rotation_policies import RotationPolicyStore

from .conftest import Backend

K = Algorithm.KYBER768
D = Algorithm.DILITHIUM3
Material = Callable[[], NewKeyMaterial]


@pytest.fixture
def policies(store: KeyStore) -> RotationPolicyStore:
    return RotationPolicyStore(store.engine)


async def _other_tenant(store: KeyStore) -> TenantRecord:
    record, _ = await store.create_tenant(f"other-{secrets.token_hex(4)}", Plan.ENTERPRISE)
    return record


async def test_set_get_replace_list_delete(
    store: KeyStore, policies: RotationPolicyStore, tenant: TenantRecord
) -> None:
    tid = tenant.tenant_id
    assert await policies.get_policy(tid, K) is None
    first = await policies.set_policy(tid, K, 3600)
    assert (first.algorithm, first.rotation_period_seconds) == (K, 3600)
    replaced = await policies.set_policy(tid, K, 7200)
    assert replaced.rotation_period_seconds == 7200
    assert replaced.created_at == first.created_at and replaced.updated_at >= first.updated_at
    await policies.set_policy(tid, D, 86_400)
    listed = await policies.list_policies(tid)
    assert [(p.algorithm, p.rotation_period_seconds) for p in listed] == [(D, 86_400), (K, 7200)]
    assert await policies.delete_policy(tid, K) is True
    assert await policies.delete_policy(tid, K) is False
    assert await policies.get_policy(tid, K) is None
    assert [p.algorithm for p in await policies.list_policies(tid)] == [D]


async def test_policies_are_per_tenant(
    store: KeyStore, policies: RotationPolicyStore, tenant: TenantRecord
) -> None:
    other = await _other_tenant(store)
    await policies.set_policy(tenant.tenant_id, K, 3600)
    assert await policies.get_policy(other.tenant_id, K) is None
    assert await policies.list_policies(other.tenant_id) == []
    assert await policies.delete_policy(other.tenant_id, K) is False
    assert await policies.get_policy(tenant.tenant_id, K) is not None


async def test_unknown_tenant_cannot_get_a_policy(policies: RotationPolicyStore) -> None:
    with pytest.raises(ServiceError) as caught:
        await policies.set_policy("00000000-0000-0000-0000-000000000000", K, 3600)
    assert caught.value.code is ErrorCode.NOT_FOUND


async def test_due_keys_are_active_versions_past_their_period(
    store: KeyStore, policies: RotationPolicyStore, tenant: TenantRecord,
    new_material: Material,
) -> None:
    tid = tenant.tenant_id
    other = await _other_tenant(store)
    v1 = await store.generate_first(tid, K, new_material(), None)
    await store.generate_first(tid, D, new_material(), None)  # no policy for it
    await store.generate_first(other.tenant_id, K, new_material(), None)  # nor for this one
    await policies.set_policy(tid, K, 3600)

    assert await policies.due_keys(v1.created_at + timedelta(seconds=3599)) == []
    due = await policies.due_keys(v1.created_at + timedelta(seconds=3600))
    assert [(d.tenant_id, d.algorithm, d.version, d.plan) for d in due] == [
        (tid, K, 1, Plan.FREE)
    ]
    assert due[0].due_at == v1.created_at + timedelta(seconds=3600)

    # The clock restarts with the new active version; the retired one is never due.
    v2, _ = await store.rotate(tid, K, new_material(), None)
    assert await policies.due_keys(v1.created_at + timedelta(seconds=3600)) == []
    due = await policies.due_keys(v2.created_at + timedelta(seconds=3600))
    assert [d.version for d in due] == [2]

    await policies.delete_policy(tid, K)
    assert await policies.due_keys(v2.created_at + timedelta(days=365)) == []


async def test_conditional_rotate_changes_nothing_when_superseded(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    tid = tenant.tenant_id
    await store.generate_first(tid, K, new_material(), None)
    await store.rotate(tid, K, new_material(), None)  # v2 active
    with pytest.raises(ActiveVersionChanged) as caught:
        await store.rotate(tid, K, new_material(), None, expected_active_version=1)
    assert (caught.value.expected, caught.value.current) == (1, 2)
    keys = await store.list_keys(tid, K)
    assert [(k.version, k.status) for k in keys] == [
        (1, KeyStatus.RETIRED), (2, KeyStatus.ACTIVE)
    ]
    record, old = await store.rotate(tid, K, new_material(), None, expected_active_version=2)
    assert (record.version, old) == (3, 2)


async def test_conditional_rotate_without_an_active_version(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    with pytest.raises(ActiveVersionChanged) as caught:
        await store.rotate(tenant.tenant_id, K, new_material(), None, expected_active_version=1)
    assert caught.value.current is None


async def test_racing_conditional_rotates_rotate_once(
    backend: Backend, master_key: MasterKey, new_material: Material
) -> None:
    """Like several workers' schedulers finding the same due key at the same moment."""
    stores = [await backend.open(master_key) for _ in range(3)]
    try:
        tenant, _ = await stores[0].create_tenant("race", Plan.ENTERPRISE)
        tid = tenant.tenant_id
        await stores[0].generate_first(tid, K, new_material(), None)

        async def attempt(store: KeyStore) -> int | None:
            try:
                record, _ = await store.rotate(
                    tid, K, new_material(), None, expected_active_version=1
                )
            except ActiveVersionChanged:
                return None
            return record.version

        outcomes = await asyncio.gather(*(attempt(stores[i % 3]) for i in range(9)))
        assert sorted(o for o in outcomes if o is not None) == [2]
        keys = await stores[1].list_keys(tid, K)
        assert [(k.version, k.status) for k in keys] == [
            (1, KeyStatus.RETIRED), (2, KeyStatus.ACTIVE)
        ]
    finally:
        for store in stores:
            await store.close()


async def test_conditional_rotate_respects_the_plan_cap(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    tid = tenant.tenant_id
    await store.generate_first(tid, K, new_material(), None)
    await store.rotate(tid, K, new_material(), 2)
    with pytest.raises(ServiceError) as caught:
        await store.rotate(tid, K, new_material(), 2, expected_active_version=2)
    assert caught.value.code is ErrorCode.FORBIDDEN
    assert [k.version for k in await store.list_keys(tid, K)] == [1, 2]


async def test_tenant_by_name(store: KeyStore, tenant: TenantRecord) -> None:
    found = await store.get_tenant_by_name(tenant.name)
    assert found == tenant
    assert await store.get_tenant_by_name("no-such-tenant") is None


def _schema_differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection)
    differences = compare_metadata(context, SQLModel.metadata)
    return [diff for diff in differences if "pqkms_rotation_policy" in repr(diff)]


async def test_migration_creates_the_table_the_model_declares(store: KeyStore) -> None:
    """The schema came from the migrations (0002 for this table), not from create_all."""
    async with store.engine.connect() as conn:
        assert await conn.run_sync(_schema_differences) == []

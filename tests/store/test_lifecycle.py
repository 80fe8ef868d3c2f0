"""Key version lifecycle: generate, rotate, retire, archive, plan caps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC

import pytest
from sqlalchemy import update

from schemas.algorithms import Algorithm, KeyStatus
from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.store import KeyRecord, KeyStore, NewKeyMaterial, TenantRecord
from worker.store.tables import KeyVersion

K = Algorithm.KYBER768
D = Algorithm.DILITHIUM3
Material = Callable[[], NewKeyMaterial]


async def _statuses(store: KeyStore, tenant_id: str, algorithm: Algorithm) -> dict[int, str]:
    return {k.version: k.status.value for k in await store.list_keys(tenant_id, algorithm)}


def _assert_error(exc: pytest.ExceptionInfo[ServiceError], code: ErrorCode, message: str) -> None:
    assert exc.value.code is code
    assert exc.value.message == message


async def test_generate_first_creates_version_1_active(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    material = new_material()
    record = await store.generate_first(tenant.tenant_id, K, material, 3)
    assert record.version == 1
    assert record.status is KeyStatus.ACTIVE
    assert record.algorithm is K
    assert record.public_key == material.public_key
    assert record.created_at.tzinfo is UTC
    assert record.status_changed_at == record.created_at
    assert await store.get_active_key(tenant.tenant_id, K) == record
    assert await store.get_key(tenant.tenant_id, K, 1) == record
    assert await store.list_keys(tenant.tenant_id) == [record]


async def test_generate_when_active_exists(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    await store.generate_first(tenant.tenant_id, K, new_material(), None)
    await store.rotate(tenant.tenant_id, K, new_material(), None)
    with pytest.raises(ServiceError) as exc:
        await store.generate_first(tenant.tenant_id, K, new_material(), None)
    _assert_error(
        exc,
        ErrorCode.KMS_ACTIVE_KEY_EXISTS,
        "An active Kyber768 key already exists (version 2); use rotate to create a new version",
    )
    assert await _statuses(store, tenant.tenant_id, K) == {1: "retired", 2: "active"}


async def test_algorithms_are_independent(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    await store.generate_first(tenant.tenant_id, K, new_material(), 3)
    dilithium = await store.generate_first(tenant.tenant_id, D, new_material(), 3)
    assert dilithium.version == 1
    keys = await store.list_keys(tenant.tenant_id)
    assert [(k.algorithm, k.version) for k in keys] == [(D, 1), (K, 1)]  # by algorithm, version
    assert [k.algorithm for k in await store.list_keys(tenant.tenant_id, D)] == [D]


async def test_rotate_retires_old_and_numbers_without_gaps(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    first = await store.generate_first(tenant.tenant_id, K, new_material(), None)
    material = new_material()
    new, old_version = await store.rotate(tenant.tenant_id, K, material, None)
    assert old_version == 1
    assert new.version == 2
    assert new.status is KeyStatus.ACTIVE
    assert new.public_key == material.public_key
    old = await store.get_key(tenant.tenant_id, K, 1)
    assert old is not None
    assert old.status is KeyStatus.RETIRED
    assert old.created_at == first.created_at
    assert old.status_changed_at > first.status_changed_at
    await store.rotate(tenant.tenant_id, K, new_material(), None)
    assert await _statuses(store, tenant.tenant_id, K) == {
        1: "retired",
        2: "retired",
        3: "active",
    }


async def test_rotate_without_active_key(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    with pytest.raises(ServiceError) as exc:
        await store.rotate(tenant.tenant_id, K, new_material(), 3)
    _assert_error(
        exc, ErrorCode.KMS_KEY_NOT_FOUND, "No active Kyber768 key to rotate; generate one first"
    )
    assert await store.list_keys(tenant.tenant_id) == []


async def test_version_cap_on_rotate_and_generate(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    cap_message = (
        "Plan limit reached: at most 3 non-archived Kyber768 key versions; "
        "archive an old version first"
    )
    await store.generate_first(tenant.tenant_id, K, new_material(), 3)
    await store.rotate(tenant.tenant_id, K, new_material(), 3)
    await store.rotate(tenant.tenant_id, K, new_material(), 3)
    with pytest.raises(ServiceError) as exc:
        await store.rotate(tenant.tenant_id, K, new_material(), 3)
    _assert_error(exc, ErrorCode.FORBIDDEN, cap_message)
    assert await _statuses(store, tenant.tenant_id, K) == {
        1: "retired",
        2: "retired",
        3: "active",
    }

    # Archiving frees a slot; the number continues.
    await store.archive(tenant.tenant_id, K, 1)
    new, old = await store.rotate(tenant.tenant_id, K, new_material(), 3)
    assert (new.version, old) == (4, 3)

    # None means unlimited.
    new, _ = await store.rotate(tenant.tenant_id, K, new_material(), None)
    assert new.version == 5

    # Generate obeys the cap too (a cap of 0 forbids any key of that algorithm).
    with pytest.raises(ServiceError) as exc:
        await store.generate_first(tenant.tenant_id, D, new_material(), 0)
    assert exc.value.code is ErrorCode.FORBIDDEN
    assert await store.list_keys(tenant.tenant_id, D) == []


async def test_retire_rules(store: KeyStore, tenant: TenantRecord, new_material: Material) -> None:
    tid = tenant.tenant_id
    await store.generate_first(tid, K, new_material(), None)
    await store.rotate(tid, K, new_material(), None)

    with pytest.raises(ServiceError) as exc:
        await store.retire(tid, K, 2)
    _assert_error(
        exc,
        ErrorCode.KMS_CANNOT_RETIRE_ACTIVE,
        "Cannot retire the active key version 2; rotate to a new version first",
    )

    with pytest.raises(ServiceError) as exc:
        await store.retire(tid, K, 7)
    _assert_error(exc, ErrorCode.KMS_KEY_NOT_FOUND, "Key version 7 not found for Kyber768")

    before = await store.get_key(tid, K, 1)
    again = await store.retire(tid, K, 1)
    assert again == before  # retired stays retired, unchanged

    await store.archive(tid, K, 1)
    with pytest.raises(ServiceError) as exc:
        await store.retire(tid, K, 1)
    _assert_error(
        exc,
        ErrorCode.FORBIDDEN,
        "Key version 1 is archived; archived keys cannot change state",
    )
    assert await _statuses(store, tid, K) == {1: "archived", 2: "active"}


async def test_archive_rules(store: KeyStore, tenant: TenantRecord, new_material: Material) -> None:
    tid = tenant.tenant_id
    await store.generate_first(tid, K, new_material(), None)
    await store.rotate(tid, K, new_material(), None)

    with pytest.raises(ServiceError) as exc:
        await store.archive(tid, K, 2)
    _assert_error(
        exc,
        ErrorCode.KMS_CANNOT_RETIRE_ACTIVE,
        "Cannot archive the active key version 2; rotate to a new version first",
    )

    with pytest.raises(ServiceError) as exc:
        await store.archive(tid, K, 7)
    _assert_error(exc, ErrorCode.KMS_KEY_NOT_FOUND, "Key version 7 not found for Kyber768")

    archived = await store.archive(tid, K, 1)
    assert archived.status is KeyStatus.ARCHIVED
    assert archived.version == 1
    again = await store.archive(tid, K, 1)
    assert again == archived  # unchanged
    assert await store.get_key(tid, K, 1) == archived
    assert [k.version for k in await store.list_keys(tid, K, KeyStatus.ARCHIVED)] == [1]
    assert [k.version for k in await store.list_keys(tid, status=KeyStatus.ACTIVE)] == [2]


async def test_generate_when_no_version_is_active_takes_the_next_number(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    """A tenant with no active version (all retired/archived) generates the next number."""
    tid = tenant.tenant_id
    await store.generate_first(tid, K, new_material(), None)
    await store.rotate(tid, K, new_material(), None)
    # The API never leaves a tenant without an active version once it has one, so put the
    # database in that state directly (as an operator repair or migration could).
    async with store.engine.begin() as conn:
        await conn.execute(
            update(KeyVersion)
            .where(KeyVersion.tenant_id == tid, KeyVersion.version == 2)  # type: ignore[arg-type]
            .values(status="retired")
        )
    assert await store.get_active_key(tid, K) is None
    with pytest.raises(ServiceError) as exc:
        await store.generate_first(tid, K, new_material(), 2)
    _assert_error(
        exc,
        ErrorCode.FORBIDDEN,
        "Plan limit reached: at most 2 non-archived Kyber768 key versions; "
        "archive an old version first",
    )
    record: KeyRecord = await store.generate_first(tid, K, new_material(), 3)
    assert record.version == 3
    assert await _statuses(store, tid, K) == {1: "retired", 2: "retired", 3: "active"}


async def test_unknown_tenant_cannot_get_keys(store: KeyStore, new_material: Material) -> None:
    ghost = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(ServiceError):
        await store.generate_first(ghost, K, new_material(), None)
    with pytest.raises(ServiceError) as exc:
        await store.retire(ghost, K, 1)
    assert exc.value.code is ErrorCode.KMS_KEY_NOT_FOUND

"""Wrapped seeds, tenant isolation and the database-enforced single active version."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from schemas.algorithms import Algorithm, Plan
from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.store import KeyStore, NewKeyMaterial, TenantRecord
from worker.store.tables import KeyVersion, utc_now

K = Algorithm.KYBER768
Material = Callable[[], NewKeyMaterial]


def test_material_repr_hides_the_seed() -> None:
    material = NewKeyMaterial(seed=b"\x01" * 64, public_key=b"pk")
    assert "seed" not in repr(material)
    assert "\\x01" not in repr(material)


async def test_seed_round_trip_and_not_stored_in_clear(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    first, second = new_material(), new_material()
    await store.generate_first(tenant.tenant_id, K, first, None)
    await store.rotate(tenant.tenant_id, K, second, None)

    loaded = await store.load_seed(tenant.tenant_id, K, 1)
    assert loaded is not None
    record, seed = loaded
    assert seed == first.seed
    assert record.version == 1
    loaded = await store.load_seed(tenant.tenant_id, K, 2)
    assert loaded is not None and loaded[1] == second.seed
    assert await store.load_seed(tenant.tenant_id, K, 3) is None

    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(KeyVersion.wrapped_seed, KeyVersion.kek_id))).all()  # type: ignore[call-overload]
    assert len(rows) == 2
    for wrapped, kek_id in rows:
        assert first.seed not in wrapped and second.seed not in wrapped
        assert kek_id == store.kek_id


async def _swap_seeds(store: KeyStore, tenant_id: str) -> None:
    async with store.engine.begin() as conn:
        rows = (
            await conn.execute(
                select(KeyVersion.version, KeyVersion.wrapped_seed, KeyVersion.seed_nonce)  # type: ignore[call-overload]
                .where(KeyVersion.tenant_id == tenant_id)
                .order_by(KeyVersion.version)
            )
        ).all()
        (v1, w1, n1), (v2, w2, n2) = rows
        for version, wrapped, nonce in ((v1, w2, n2), (v2, w1, n1)):
            await conn.execute(
                update(KeyVersion)
                .where(KeyVersion.tenant_id == tenant_id, KeyVersion.version == version)  # type: ignore[arg-type]
                .values(wrapped_seed=wrapped, seed_nonce=nonce)
            )


async def test_swapped_wrapped_seeds_fail_integrity(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    await store.generate_first(tenant.tenant_id, K, new_material(), None)
    await store.rotate(tenant.tenant_id, K, new_material(), None)
    await _swap_seeds(store, tenant.tenant_id)
    for version in (1, 2):
        with pytest.raises(ServiceError) as exc:
            await store.load_seed(tenant.tenant_id, K, version)
        assert exc.value.code is ErrorCode.INTERNAL
        assert exc.value.message == "Stored key material failed its integrity check"


async def test_seed_moved_to_another_tenant_fails_integrity(
    store: KeyStore, new_material: Material
) -> None:
    a, _ = await store.create_tenant("a", Plan.FREE)
    b, _ = await store.create_tenant("b", Plan.FREE)
    await store.generate_first(a.tenant_id, K, new_material(), None)
    await store.generate_first(b.tenant_id, K, new_material(), None)
    async with store.engine.begin() as conn:
        wrapped, nonce = (
            await conn.execute(
                select(KeyVersion.wrapped_seed, KeyVersion.seed_nonce).where(  # type: ignore[call-overload]
                    KeyVersion.tenant_id == a.tenant_id
                )
            )
        ).one()
        await conn.execute(
            update(KeyVersion)
            .where(KeyVersion.tenant_id == b.tenant_id)  # type: ignore[arg-type]
            .values(wrapped_seed=wrapped, seed_nonce=nonce)
        )
    with pytest.raises(ServiceError) as exc:
        await store.load_seed(b.tenant_id, K, 1)
    assert exc.value.code is ErrorCode.INTERNAL


async def test_tampered_ciphertext_fails_integrity(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    await store.generate_first(tenant.tenant_id, K, new_material(), None)
    async with store.engine.begin() as conn:
        wrapped = (await conn.execute(select(KeyVersion.wrapped_seed))).scalar_one()  # type: ignore[call-overload]
        flipped = bytes([wrapped[0] ^ 1]) + wrapped[1:]
        await conn.execute(update(KeyVersion).values(wrapped_seed=flipped))
    with pytest.raises(ServiceError) as exc:
        await store.load_seed(tenant.tenant_id, K, 1)
    assert exc.value.code is ErrorCode.INTERNAL


async def test_tenants_are_isolated(store: KeyStore, new_material: Material) -> None:
    a, _ = await store.create_tenant("a", Plan.FREE)
    b, _ = await store.create_tenant("b", Plan.FREE)
    await store.generate_first(a.tenant_id, K, new_material(), None)
    await store.rotate(a.tenant_id, K, new_material(), None)

    assert await store.list_keys(b.tenant_id) == []
    assert await store.get_key(b.tenant_id, K, 1) is None
    assert await store.get_active_key(b.tenant_id, K) is None
    assert await store.load_seed(b.tenant_id, K, 1) is None
    for change in (store.retire, store.archive):
        with pytest.raises(ServiceError) as exc:
            await change(b.tenant_id, K, 1)
        assert exc.value.code is ErrorCode.KMS_KEY_NOT_FOUND
    with pytest.raises(ServiceError) as exc:
        await store.rotate(b.tenant_id, K, new_material(), None)
    assert exc.value.code is ErrorCode.KMS_KEY_NOT_FOUND

    # B's own numbering starts at 1, independent of A's.
    own = await store.generate_first(b.tenant_id, K, new_material(), None)
    assert own.version == 1
    assert [k.status.value for k in await store.list_keys(a.tenant_id, K)] == [
        "retired",
        "active",
    ]


async def test_database_refuses_a_second_active_version(
    store: KeyStore, tenant: TenantRecord, new_material: Material
) -> None:
    await store.generate_first(tenant.tenant_id, K, new_material(), None)
    now = utc_now()
    row = {
        "tenant_id": tenant.tenant_id,
        "algorithm": K.value,
        "version": 2,
        "status": "active",
        "public_key": b"pk",
        "wrapped_seed": b"w",
        "seed_nonce": b"n" * 12,
        "kek_id": store.kek_id,
        "created_at": now,
        "status_changed_at": now,
        "schema_version": 1,
    }
    with pytest.raises(IntegrityError):
        async with store.engine.begin() as conn:
            await conn.execute(insert(KeyVersion).values(**row))
    # A second *retired* row is fine, and so is an active one for another algorithm.
    async with store.engine.begin() as conn:
        await conn.execute(insert(KeyVersion).values(**{**row, "status": "retired"}))
        await conn.execute(
            insert(KeyVersion).values(**{**row, "algorithm": "Dilithium3", "version": 1})
        )
    assert [k.version for k in await store.list_keys(tenant.tenant_id, K)] == [1, 2]

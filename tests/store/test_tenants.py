"""Tenants and API keys: issued once, stored only as a hash, checked in constant time."""

from __future__ import annotations

import hashlib

import pytest
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.algorithms import Plan
from worker.store import KeyStore, TenantExists, TenantRecord
from worker.store.tables import ApiKey

from .conftest import Backend


async def test_create_and_authenticate(store: KeyStore) -> None:
    tenant, api_key = await store.create_tenant("acme", Plan.PRO)
    assert tenant.name == "acme"
    assert tenant.plan is Plan.PRO
    assert api_key.startswith("qph_")
    assert len(api_key) >= 40
    assert await store.authenticate(api_key) == tenant
    assert await store.get_tenant(tenant.tenant_id) == tenant


async def test_unknown_and_malformed_keys_are_refused(store: KeyStore) -> None:
    _, api_key = await store.create_tenant("acme", Plan.FREE)
    assert await store.authenticate("qph_" + "A" * 43) is None
    assert await store.authenticate(api_key[:-1]) is None
    assert await store.authenticate(api_key + "x") is None
    assert await store.authenticate(api_key.replace("qph_", "xyz_", 1)) is None
    assert await store.authenticate(api_key[4:]) is None  # without the prefix
    assert await store.authenticate("") is None
    assert await store.authenticate("qph_" + "x" * 10_000) is None


async def test_revoked_key_is_refused_other_keys_still_work(store: KeyStore) -> None:
    tenant, first = await store.create_tenant("acme", Plan.FREE)
    second = await store.add_api_key(tenant.tenant_id)
    assert second != first
    assert await store.authenticate(second) == tenant

    assert await store.revoke_api_key(tenant.tenant_id, first) is True
    assert await store.authenticate(first) is None
    assert await store.authenticate(second) == tenant
    assert await store.revoke_api_key(tenant.tenant_id, first) is True  # idempotent


async def test_tenant_cannot_revoke_another_tenants_key(store: KeyStore) -> None:
    _, key_a = await store.create_tenant("a", Plan.FREE)
    tenant_b, _ = await store.create_tenant("b", Plan.FREE)
    assert await store.revoke_api_key(tenant_b.tenant_id, key_a) is False
    assert await store.authenticate(key_a) is not None


async def test_duplicate_tenant_name(store: KeyStore) -> None:
    await store.create_tenant("acme", Plan.FREE)
    with pytest.raises(TenantExists, match="'acme' already exists"):
        await store.create_tenant("acme", Plan.PRO)


async def test_unknown_tenant(store: KeyStore) -> None:
    assert await store.get_tenant("00000000-0000-0000-0000-000000000000") is None


async def test_database_holds_no_plaintext_api_key(backend: Backend, store: KeyStore) -> None:
    tenant, api_key = await store.create_tenant("acme", Plan.FREE)
    extra = await store.add_api_key(tenant.tenant_id)

    async with AsyncSession(store.engine) as session:
        rows = (await session.exec(select(ApiKey))).all()
    assert len(rows) == 2
    stored = {row.key_hash for row in rows}
    assert stored == {hashlib.sha256(k.encode()).hexdigest() for k in (api_key, extra)}
    for row in rows:
        dumped = repr(row.model_dump())
        for key in (api_key, extra):
            assert key not in dumped
            assert key[4:] not in dumped  # not even the random part
        assert row.key_prefix in (api_key[:12], extra[:12])
        assert row.revoked_at is None

    if backend.sqlite_path is not None:
        await store.close()  # checkpoint: everything is in the main file or the WAL
        blob = b"".join(p.read_bytes() for p in backend.sqlite_path.parent.iterdir() if p.is_file())
        for key in (api_key, extra):
            assert key[4:].encode() not in blob


def test_tenant_record_is_immutable() -> None:
    record = TenantRecord("id", "n", Plan.FREE)
    with pytest.raises(AttributeError):
        record.name = "other"  # type: ignore[misc]

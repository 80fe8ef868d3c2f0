"""KeyAccess caches loaded keys but never a key's status: a retire or archive committed by
another worker is honoured by the very next request here."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.algorithms import Algorithm, Plan
from schemas.errors import ErrorCode
from worker.crypto import new_key
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.key_access import KeyAccess, Usage
from worker.store import KeyStore, MasterKey, NewKeyMaterial

K = Algorithm.KYBER768


def _material() -> NewKeyMaterial:
    generated = new_key(K)
    return NewKeyMaterial(seed=generated.seed, public_key=generated.public_key_spki)


@pytest.fixture
async def two_workers(tmp_path: Path) -> AsyncIterator[tuple[KeyStore, KeyStore]]:
    """Two stores on one SQLite file, as two worker processes would have."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'pqkms.db'}"
    master = MasterKey(secrets.token_bytes(32))
    here = await KeyStore.open(url, master)
    there = await KeyStore.open(url, master)
    yield here, there
    await here.close()
    await there.close()


async def test_cached_key_follows_status_changes_made_elsewhere(
    two_workers: tuple[KeyStore, KeyStore],
) -> None:
    here, there = two_workers
    tenant, _ = await here.create_tenant("acme", Plan.ENTERPRISE)
    caller = Caller(tenant_id=tenant.tenant_id, plan=tenant.plan, request_id="r")
    await here.generate_first(tenant.tenant_id, K, _material(), None)
    access = KeyAccess(here)
    key = await access.kem_key(caller, K, 1, Usage.PROTECT)  # loaded and cached
    assert await access.kem_key(caller, K, 1, Usage.PROTECT) is key

    await there.rotate(tenant.tenant_id, K, _material(), None)  # v1 retired elsewhere
    with pytest.raises(ServiceError) as retired:
        await access.kem_key(caller, K, 1, Usage.PROTECT)
    assert retired.value.code is ErrorCode.FORBIDDEN and "retired" in retired.value.message
    assert await access.kem_key(caller, K, 1, Usage.RECOVER) is key

    await there.archive(tenant.tenant_id, K, 1)
    with pytest.raises(ServiceError) as archived:
        await access.kem_key(caller, K, 1, Usage.RECOVER)
    assert archived.value.code is ErrorCode.FORBIDDEN and "archived" in archived.value.message


async def test_unknown_and_foreign_versions_are_404(
    two_workers: tuple[KeyStore, KeyStore],
) -> None:
    here, _ = two_workers
    owner, _ = await here.create_tenant("owner", Plan.ENTERPRISE)
    other, _ = await here.create_tenant("other", Plan.ENTERPRISE)
    await here.generate_first(owner.tenant_id, K, _material(), None)
    access = KeyAccess(here)
    await access.kem_key(Caller(owner.tenant_id, owner.plan, "r"), K, 1, Usage.PROTECT)
    for tenant_id, version in ((owner.tenant_id, 2), (other.tenant_id, 1)):
        with pytest.raises(ServiceError) as missing:
            await access.kem_key(Caller(tenant_id, Plan.ENTERPRISE, "r"), K, version,
                                 Usage.RECOVER)
        assert missing.value.code is ErrorCode.KEM_KEY_NOT_FOUND


async def test_a_public_key_that_is_not_the_seeds_is_refused(
    two_workers: tuple[KeyStore, KeyStore],
) -> None:
    here, _ = two_workers
    tenant, _ = await here.create_tenant("acme", Plan.ENTERPRISE)
    caller = Caller(tenant_id=tenant.tenant_id, plan=tenant.plan, request_id="r")
    foreign = new_key(K).public_key_spki
    mismatched = NewKeyMaterial(seed=_material().seed, public_key=foreign)
    record = await here.generate_first(tenant.tenant_id, K, mismatched, None)
    access = KeyAccess(here)
    for attempt in (access.checked(record), access.kem_key(caller, K, 1, Usage.PROTECT)):
        with pytest.raises(ServiceError) as refused:
            await attempt
        assert refused.value.code is ErrorCode.INTERNAL


async def test_a_matching_public_key_is_checked_once(
    two_workers: tuple[KeyStore, KeyStore],
) -> None:
    here, _ = two_workers
    tenant, _ = await here.create_tenant("acme", Plan.ENTERPRISE)
    record = await here.generate_first(tenant.tenant_id, K, _material(), None)
    access = KeyAccess(here)
    assert await access.checked(record) is record
    await here.close()  # a second check needs no store
    assert await access.checked(record) is record

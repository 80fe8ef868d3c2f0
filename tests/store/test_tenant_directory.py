"""The operator's tenant list and plan changes, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

from schemas.algorithms import Algorithm, Plan
from worker.store import KeyStore, NewKeyMaterial
from worker.store.tenant_directory import TenantDirectory


async def test_tenants_are_listed_by_name_with_their_counts(
        store: KeyStore, new_material: Callable[[], NewKeyMaterial]) -> None:
    umbrella, _ = await store.create_tenant("umbrella", Plan.FREE)
    acme, first_key = await store.create_tenant("acme", Plan.PRO)
    await store.add_api_key(acme.tenant_id)
    await store.revoke_api_key(acme.tenant_id, first_key)  # not counted: revoked
    await store.add_api_key(acme.tenant_id)
    await store.generate_first(acme.tenant_id, Algorithm.KYBER768, new_material(), None)
    await store.generate_first(acme.tenant_id, Algorithm.DILITHIUM3, new_material(), None)

    listed = await TenantDirectory(store.engine).list_tenants()
    assert [(t.name, t.tenant_id, t.plan, t.active_api_keys, t.key_versions)
            for t in listed] == [("acme", acme.tenant_id, Plan.PRO, 2, 2),
                                 ("umbrella", umbrella.tenant_id, Plan.FREE, 1, 0)]
    assert listed[0].created_at.tzinfo is not None


async def test_no_tenants_is_an_empty_list(store: KeyStore) -> None:
    assert await TenantDirectory(store.engine).list_tenants() == []


async def test_a_plan_change_is_what_the_tenant_s_keys_authenticate_with(
        store: KeyStore) -> None:
    acme, api_key = await store.create_tenant("acme", Plan.FREE)
    _, other_key = await store.create_tenant("umbrella", Plan.FREE)
    directory = TenantDirectory(store.engine)

    change = await directory.set_plan("acme", Plan.ENTERPRISE)
    assert change is not None
    assert (change.tenant_id, change.previous_plan, change.plan) == (
        acme.tenant_id, Plan.FREE, Plan.ENTERPRISE)
    authenticated = await store.authenticate(api_key)
    assert authenticated is not None and authenticated.plan is Plan.ENTERPRISE
    untouched = await store.authenticate(other_key)
    assert untouched is not None and untouched.plan is Plan.FREE
    assert await directory.set_plan("nobody", Plan.PRO) is None

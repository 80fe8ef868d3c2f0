"""A database older than its keyring's primary (restored from before a master-key
rotation), and a keyring that is not the database's: what the refusal says, and the
way out that needs no hand-editing (``pqkms master-key rewrap``)."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select, update
from structlog.testing import capture_logs

from schemas.algorithms import Algorithm, Plan
from tests.store.conftest import Backend
from worker.store import (
    KeyStore,
    MasterKey,
    MasterKeyMismatch,
    MasterKeyring,
    NewKeyMaterial,
    key_check_value,
    load_keyring,
)
from worker.store.kek_rotation import (
    KekRotationError,
    add_master_key,
    kek_usage,
    master_key_status,
    prune_master_keys,
    rotate_master_key,
)
from worker.store.keyring import write_keyring_file
from worker.store.tables import MasterKeyCheck

Material = Callable[[], NewKeyMaterial]
K = Algorithm.KYBER768


def _new_key() -> MasterKey:
    return MasterKey(secrets.token_bytes(32))


def _secret_spellings(*keys: MasterKey) -> list[str]:
    """Every way a key or its check value could show up in a message."""
    spellings = []
    for key in keys:
        for secret in (key.key, key_check_value(key)):
            spellings += [secret.hex(), base64.b64encode(secret).decode(), repr(secret)]
    return spellings


async def _database_of(backend: Backend, keyring: MasterKeyring,
                       new_material: Material) -> dict[int, bytes]:
    """A database created with ``keyring``: one tenant, three Kyber768 versions."""
    store = await backend.open(keyring)
    try:
        tenant, _ = await store.create_tenant(f"t-{secrets.token_hex(4)}", Plan.PRO)
        seeds: dict[int, bytes] = {}
        first = new_material()
        await store.generate_first(tenant.tenant_id, K, first, None)
        seeds[1] = first.seed
        for version in (2, 3):
            material = new_material()
            await store.rotate(tenant.tenant_id, K, material, None)
            seeds[version] = material.seed
        return seeds
    finally:
        await store.close()


async def _open_and_check_seeds(backend: Backend, keyring: MasterKeyring,
                                seeds: dict[int, bytes]) -> None:
    store = await backend.open(keyring, create_schema=False)
    try:
        for version, seed in seeds.items():
            assert await _load(store, version) == seed
    finally:
        await store.close()


async def _load(store: KeyStore, version: int) -> bytes:
    from worker.store.tables import KeyVersion

    async with store.engine.connect() as conn:
        tenant_id = (await conn.execute(select(KeyVersion.tenant_id))).scalars().first()
    assert tenant_id is not None
    found = await store.load_seed(tenant_id, K, version)
    assert found is not None
    return found[1]


async def _recorded(backend: Backend, keyring: MasterKeyring) -> set[str]:
    from worker.store.database import create_engine_for

    engine = create_engine_for(backend.url, connect_args=backend.connect_args)
    try:
        async with engine.connect() as conn:
            return set((await conn.execute(select(MasterKeyCheck.kek_id))).scalars().all())
    finally:
        await engine.dispose()


async def test_a_database_older_than_its_keyrings_primary_is_named_and_rewrap_adopts_it(
    backend: Backend, tmp_path: Path, new_material: Material,
) -> None:
    # The database knows A (its rows are under A); the keyring came after a rotation the
    # database never saw (restored from a backup): primary B, A kept as previous.
    a, b = _new_key(), _new_key()
    seeds = await _database_of(backend, MasterKeyring(a), new_material)
    newer = MasterKeyring(b, (a,))
    key_file = tmp_path / "master.key"
    write_keyring_file(key_file, newer)
    before = await asyncio.to_thread(key_file.read_bytes)

    # A worker (and every other command) refuses, and says why and what to do.
    with pytest.raises(MasterKeyMismatch) as refused:
        await backend.open(newer, create_schema=False)
    message = str(refused.value)
    assert message.startswith("The master key does not match this database")
    assert "this database predates a master-key rotation" in message
    assert f"its keys are in this keyring ({a.kek_id}), but its primary {b.kek_id} is newer" \
        in message
    assert f"check values for KEK ids {a.kek_id};" in message
    assert f"{b.kek_id} (primary), {a.kek_id} (previous)" in message
    assert "pqkms master-key rewrap" in message
    for secret in _secret_spellings(a, b):
        assert secret not in message

    # Commands that would change the keyring on this basis refuse the same way.
    with pytest.raises(MasterKeyMismatch, match="predates a master-key rotation"):
        await add_master_key(key_file, backend.url, connect_args=backend.connect_args)
    with pytest.raises(MasterKeyMismatch, match="predates a master-key rotation"):
        await prune_master_keys(key_file, backend.url, connect_args=backend.connect_args)
    assert await asyncio.to_thread(key_file.read_bytes) == before

    # status shows it and changes nothing: a worker still refuses afterwards.
    status = (await master_key_status(key_file, backend.url,
                                      connect_args=backend.connect_args)).as_json_dict()
    assert [(k["kek_id"], k["role"], k["rows"], k["check_value_recorded"])
            for k in status["keys"]] == [(b.kek_id, "primary", 0, False),
                                         (a.kek_id, "previous", 3, True)]
    assert await _recorded(backend, newer) == {a.kek_id}
    with pytest.raises(MasterKeyMismatch):
        await backend.open(newer, create_schema=False)

    # Never without the operator naming the primary: a copy of the keyring rotated
    # elsewhere (a staging machine's) would pass every other test.
    with pytest.raises(MasterKeyMismatch, match=f"--adopt-primary {b.kek_id}"):
        await rotate_master_key(key_file, backend.url, rewrap_only=True,
                                connect_args=backend.connect_args)
    with pytest.raises(KekRotationError, match="nothing was changed"):
        await rotate_master_key(key_file, backend.url, rewrap_only=True,
                                connect_args=backend.connect_args, adopt_primary=a.kek_id)
    assert await _recorded(backend, newer) == {a.kek_id}
    # The way out: rewrap records the primary and moves every row under it.
    with capture_logs() as logs:
        report = await rotate_master_key(key_file, backend.url, rewrap_only=True,
                                         connect_args=backend.connect_args,
                                         adopt_primary=b.kek_id)
    assert (report.kek_id, report.rewrap.rewrapped, report.rewrap.remaining) == (b.kek_id, 3, 0)
    recorded_lines = [entry for entry in logs if entry["event"] == "master_key_primary_recorded"]
    assert [(e["kek_id"], e["database_keys_in_keyring"]) for e in recorded_lines] == [
        (b.kek_id, [a.kek_id])]
    for secret in _secret_spellings(a, b):
        assert secret not in repr(logs)
    assert await _recorded(backend, newer) == {a.kek_id, b.kek_id}
    assert load_keyring(key_file) == newer
    assert await _usage(backend) == {b.kek_id: 3}
    await _open_and_check_seeds(backend, newer, seeds)


async def _usage(backend: Backend) -> dict[str, int]:
    from worker.store.database import create_engine_for

    engine = create_engine_for(backend.url, connect_args=backend.connect_args)
    try:
        return await kek_usage(engine)
    finally:
        await engine.dispose()


async def test_a_rotation_from_a_newer_keyring_records_its_primary_when_named(
    backend: Backend, tmp_path: Path, new_material: Material,
) -> None:
    a, b = _new_key(), _new_key()
    seeds = await _database_of(backend, MasterKeyring(a), new_material)
    key_file = tmp_path / "master.key"
    write_keyring_file(key_file, MasterKeyring(b, (a,)))
    with pytest.raises(MasterKeyMismatch):
        await rotate_master_key(key_file, backend.url, connect_args=backend.connect_args)
    assert load_keyring(key_file) == MasterKeyring(b, (a,))  # nothing was rotated

    report = await rotate_master_key(key_file, backend.url, connect_args=backend.connect_args,
                                     adopt_primary=b.kek_id)

    assert report.generated and report.previous_kek_id == b.kek_id
    assert report.rewrap.remaining == 0
    rotated = load_keyring(key_file)
    assert rotated.primary.kek_id == report.kek_id
    assert await _recorded(backend, rotated) == {a.kek_id, b.kek_id, report.kek_id}
    await _open_and_check_seeds(backend, rotated, seeds)


async def test_a_keyring_without_a_key_of_the_database_is_refused_naming_both_sides(
    backend: Backend, tmp_path: Path, new_material: Material,
) -> None:
    # After a prune the database knows only B; the operator holds an old keyring (A, D).
    a, b, d = _new_key(), _new_key(), _new_key()
    await _database_of(backend, MasterKeyring(b), new_material)
    old = MasterKeyring(a, (d,))
    key_file = tmp_path / "master.key"
    write_keyring_file(key_file, old)

    with pytest.raises(MasterKeyMismatch) as refused:
        await backend.open(old, create_schema=False)
    message = str(refused.value)
    assert message.startswith("The master key does not match this database")
    assert f"check values for KEK ids {b.kek_id};" in message
    assert f"this keyring holds {a.kek_id} (primary), {d.kek_id} (previous)" in message
    assert "# kek <id>" in message
    assert "predates" not in message
    for secret in _secret_spellings(a, b, d):
        assert secret not in message
    # No master-key command takes it either: the file is not this database's keyring.
    for attempt in (
        rotate_master_key(key_file, backend.url, rewrap_only=True,
                          connect_args=backend.connect_args),
        master_key_status(key_file, backend.url, connect_args=backend.connect_args),
    ):
        with pytest.raises(MasterKeyMismatch, match=f"check values for KEK ids {b.kek_id};"):
            await attempt
    assert await _recorded(backend, old) == {b.kek_id}


async def test_a_lone_master_key_is_refused_naming_both_ways_out(
    backend: Backend, new_material: Material,
) -> None:
    # `pqkms tenant`/`db` commands are given the keyring file's primary alone: the
    # message cannot know what else the file holds, so it names both ways out.
    a, b = _new_key(), _new_key()
    await _database_of(backend, MasterKeyring(a), new_material)

    with pytest.raises(MasterKeyMismatch) as refused:
        await backend.open(b, create_schema=False)
    message = str(refused.value)
    assert f"check values for KEK ids {a.kek_id}; the master key given is {b.kek_id}." \
        in message
    assert "# kek <id>" in message
    assert "predates a master-key rotation" in message and "pqkms master-key rewrap" in message
    for secret in _secret_spellings(a, b):
        assert secret not in message


async def test_a_newer_keyring_lacking_a_key_the_rows_use_is_not_adopted(
    backend: Backend, tmp_path: Path, new_material: Material,
) -> None:
    # The database's rows are under C, and it also knows A; the keyring holds A and a
    # newer primary B, but not C: adopting B would leave every row unreadable.
    a, b, c = _new_key(), _new_key(), _new_key()
    await _database_of(backend, MasterKeyring(c, (a,)), new_material)
    key_file = tmp_path / "master.key"
    write_keyring_file(key_file, MasterKeyring(b, (a,)))

    with pytest.raises(MasterKeyMismatch) as refused:
        await rotate_master_key(key_file, backend.url, rewrap_only=True,
                                connect_args=backend.connect_args, adopt_primary=b.kek_id)
    message = str(refused.value)
    assert f"it lacks keys the database uses (3 key version(s) under {c.kek_id})" in message
    assert f"Use a keyring that holds {c.kek_id}" in message
    assert "pqkms master-key rewrap" not in message
    assert await _recorded(backend, MasterKeyring(b)) == {a.kek_id, c.kek_id}


async def test_an_altered_check_value_is_named_by_its_key_id_without_its_bytes(
    backend: Backend, master_key: MasterKey,
) -> None:
    store = await backend.open(master_key)
    async with store.engine.begin() as conn:
        await conn.execute(update(MasterKeyCheck).values(check_value=b"\x5a" * 16))
    await store.close()

    with pytest.raises(MasterKeyMismatch) as refused:
        await backend.open(master_key)
    message = str(refused.value)
    assert f"the check value recorded for key {master_key.kek_id} is not that key's" in message
    for secret in [*_secret_spellings(master_key), (b"\x5a" * 16).hex(), "ZZZZ"]:
        assert secret not in message

"""Master key rotation on both backends: re-wrap, compare-and-swap, keyring file, prune."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import stat
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import select, update
from structlog.testing import capture_logs

from schemas.algorithms import Algorithm, Plan
from schemas.errors import ErrorCode
from tests.store.conftest import Backend
from worker.config import Settings
from worker.errors import ServiceError
from worker.store import (
    KeyringFile,
    KeyStore,
    MasterKey,
    MasterKeyError,
    MasterKeyMismatch,
    MasterKeyring,
    NewKeyMaterial,
    load_keyring,
)
from worker.store.kek_rotation import (
    KekRotationError,
    add_master_key,
    kek_usage,
    master_key_status,
    prune_master_keys,
    record_check_value,
    rewrap_all,
    rewrap_rows,
    rotate_master_key,
    rows_not_under,
)
from worker.store.keyring import keyring_to_text, write_keyring_file
from worker.store.tables import KeyVersion, MasterKeyCheck

K, D = Algorithm.KYBER768, Algorithm.DILITHIUM3
Material = Callable[[], NewKeyMaterial]
Seeds = dict[tuple[str, Algorithm, int], bytes]


def _new_key() -> MasterKey:
    return MasterKey(secrets.token_bytes(32))


def _legacy_file(path: Path, key: MasterKey) -> Path:
    """A master key file as pqkms wrote it before rotation existed: one base64 line."""
    path.write_text(base64.b64encode(key.key).decode() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def key_file(tmp_path: Path, master_key: MasterKey) -> Path:
    """The store's master key in the pre-rotation file format."""
    return _legacy_file(tmp_path / "master.key", master_key)


@pytest.fixture
async def worker_store(backend: Backend, key_file: Path) -> AsyncIterator[KeyStore]:
    """A store as a worker opens it: following the keyring file."""
    store = await KeyStore.open(
        backend.url, KeyringFile(key_file, forced_reload_interval=0.0),
        connect_args=backend.connect_args,
    )
    try:
        yield store
    finally:
        await store.close()


async def _populate(store: KeyStore, new_material: Material, tenants: int = 2) -> Seeds:
    """A few tenants with several Kyber768 and Dilithium3 versions; their seeds."""
    seeds: Seeds = {}
    for _ in range(tenants):
        record, _ = await store.create_tenant(f"t-{secrets.token_hex(4)}", Plan.ENTERPRISE)
        for algorithm in (K, D):
            material = new_material()
            await store.generate_first(record.tenant_id, algorithm, material, None)
            seeds[(record.tenant_id, algorithm, 1)] = material.seed
            for version in (2, 3):
                material = new_material()
                await store.rotate(record.tenant_id, algorithm, material, None)
                seeds[(record.tenant_id, algorithm, version)] = material.seed
    return seeds


async def _assert_seeds(store: KeyStore, seeds: Seeds) -> None:
    for (tenant_id, algorithm, version), seed in seeds.items():
        loaded = await store.load_seed(tenant_id, algorithm, version)
        assert loaded is not None and loaded[1] == seed


async def test_rotate_rewraps_every_row_while_a_worker_store_keeps_working(
    backend: Backend, key_file: Path, worker_store: KeyStore, master_key: MasterKey,
    new_material: Material,
) -> None:
    seeds = await _populate(worker_store, new_material)
    assert await kek_usage(worker_store.engine) == {master_key.kek_id: len(seeds)}

    report = await rotate_master_key(
        key_file, backend.url, batch_size=5, connect_args=backend.connect_args
    )

    assert report.previous_kek_id == master_key.kek_id and report.generated
    new_kek = report.kek_id
    assert new_kek != master_key.kek_id
    assert (report.rewrap.rewrapped, report.rewrap.skipped, report.rewrap.remaining) == (
        len(seeds), 0, 0)
    assert report.rows_by_kek_id == {new_kek: len(seeds)}
    keyring = load_keyring(key_file)
    assert keyring.primary.kek_id == new_kek
    assert [k.kek_id for k in keyring.previous] == [master_key.kek_id]
    # The running store lacked the new KEK: it re-reads the file and carries on.
    await _assert_seeds(worker_store, seeds)
    # ...and wraps what it creates from now on under the new primary.
    tenant_id = next(iter(seeds))[0]
    fresh = new_material()
    await worker_store.rotate(tenant_id, K, fresh, None)
    assert worker_store.kek_id == new_kek
    assert await kek_usage(worker_store.engine) == {new_kek: len(seeds) + 1}
    # The new key alone opens every row: nothing is left under the old one.
    alone = await backend.open(keyring.primary, create_schema=False)
    try:
        await _assert_seeds(alone, {**seeds, (tenant_id, K, 4): fresh.seed})
    finally:
        await alone.close()


async def test_compare_and_swap_never_clobbers_a_concurrent_change(
    backend: Backend, worker_store: KeyStore, master_key: MasterKey, new_material: Material,
) -> None:
    seeds = await _populate(worker_store, new_material, tenants=1)
    target, other = _new_key(), _new_key()
    ring = MasterKeyring(target, (master_key, other))
    engine = worker_store.engine
    rows = await rows_not_under(engine, target.kek_id)
    assert len(rows) == len(seeds)

    # Between our read and our update, someone moves the first row under another key.
    moved = await rewrap_rows(engine, MasterKeyring(other, (master_key,)), other, rows[:1])
    assert moved.rewrapped == 1
    async with engine.connect() as conn:
        query = select(KeyVersion.kek_id, KeyVersion.seed_nonce).where(
            KeyVersion.id == rows[0].id)
        after_concurrent = (await conn.execute(query)).one()

    report = await rewrap_rows(engine, ring, target, rows)

    assert (report.rewrapped, report.skipped) == (len(rows) - 1, 1)
    async with engine.connect() as conn:
        assert (await conn.execute(query)).one() == after_concurrent  # left alone
    # A later pass picks it up from where the concurrent change left it.
    full = await rewrap_all(engine, ring, batch_size=2)
    assert (full.rewrapped, full.remaining) == (1, 0)
    assert await kek_usage(engine) == {target.kek_id: len(seeds)}
    await record_check_value(engine, target)
    reader = await backend.open(ring, create_schema=False)
    try:
        await _assert_seeds(reader, seeds)
    finally:
        await reader.close()


async def test_rows_created_by_a_worker_on_the_old_primary_are_caught(
    backend: Backend, store: KeyStore, master_key: MasterKey, tmp_path: Path,
    new_material: Material,
) -> None:
    """``store`` holds only the old key (a worker whose keyring file was not updated)."""
    seeds = await _populate(store, new_material, tenants=1)
    key_file = _legacy_file(tmp_path / "admin.key", master_key)
    await rotate_master_key(key_file, backend.url, connect_args=backend.connect_args)
    tenant_id = next(iter(seeds))[0]
    await store.rotate(tenant_id, K, new_material(), None)  # still under the old primary
    new_kek = load_keyring(key_file).primary.kek_id
    assert (await kek_usage(store.engine))[master_key.kek_id] == 1

    with pytest.raises(KekRotationError, match="still in use"):
        await prune_master_keys(key_file, backend.url, kek_ids=[master_key.kek_id],
                                connect_args=backend.connect_args)
    again = await rotate_master_key(key_file, backend.url, rewrap_only=True,
                                    connect_args=backend.connect_args)
    assert again.kek_id == new_kek
    assert (again.generated, again.rewrap.rewrapped, again.rewrap.remaining) == (False, 1, 0)
    assert await kek_usage(store.engine) == {new_kek: len(seeds) + 1}


async def test_prune_refuses_while_rows_use_a_key_then_drops_it(
    backend: Backend, key_file: Path, worker_store: KeyStore, master_key: MasterKey,
    new_material: Material,
) -> None:
    await _populate(worker_store, new_material, tenants=1)
    # A half-done rotation: the new key is primary but no row has moved yet.
    new = _new_key()
    await record_check_value(worker_store.engine, new)
    write_keyring_file(key_file, load_keyring(key_file).promoted(new))
    before = await asyncio.to_thread(key_file.read_bytes)

    with pytest.raises(KekRotationError, match=f"{master_key.kek_id} wraps 6 key versions"):
        await prune_master_keys(key_file, backend.url, kek_ids=[master_key.kek_id],
                                connect_args=backend.connect_args)
    kept = await prune_master_keys(key_file, backend.url, connect_args=backend.connect_args)
    assert (kept.dropped, kept.kept_in_use) == ((), (master_key.kek_id,))
    with pytest.raises(KekRotationError, match="primary"):
        await prune_master_keys(key_file, backend.url, kek_ids=[new.kek_id],
                                connect_args=backend.connect_args)
    assert await asyncio.to_thread(key_file.read_bytes) == before

    await rotate_master_key(key_file, backend.url, kek_id=new.kek_id,
                            connect_args=backend.connect_args)
    pruned = await prune_master_keys(key_file, backend.url, connect_args=backend.connect_args)
    assert pruned.dropped == (master_key.kek_id,)
    assert load_keyring(key_file).kek_ids == (new.kek_id,)
    # The old key is no longer this database's: a worker started with it refuses.
    with pytest.raises(MasterKeyMismatch):
        await backend.open(master_key, create_schema=False)
    async with worker_store.engine.connect() as conn:
        recorded = (await conn.execute(select(MasterKeyCheck.kek_id))).scalars().all()
    assert list(recorded) == [new.kek_id]


async def test_staged_key_is_promoted_and_status_reports_it(
    backend: Backend, key_file: Path, worker_store: KeyStore, master_key: MasterKey,
    new_material: Material,
) -> None:
    seeds = await _populate(worker_store, new_material, tenants=1)
    added = await add_master_key(key_file, backend.url, connect_args=backend.connect_args)
    staged = load_keyring(key_file)
    assert staged.primary == master_key and [k.kek_id for k in staged.next] == [added.kek_id]
    # Staged, not primary: a worker keeps wrapping under the old key.
    tenant_id = next(iter(seeds))[0]
    await worker_store.rotate(tenant_id, K, new_material(), None)
    assert set(await kek_usage(worker_store.engine)) == {master_key.kek_id}

    status = (await master_key_status(key_file, backend.url,
                                      connect_args=backend.connect_args)).as_json_dict()
    assert status["primary"] == master_key.kek_id
    assert {(k["kek_id"], k["role"], k["rows"], k["check_value_recorded"])
            for k in status["keys"]} == {(master_key.kek_id, "primary", len(seeds) + 1, True),
                                         (added.kek_id, "next", 0, True)}

    report = await rotate_master_key(key_file, backend.url, retire_old=True,
                                     connect_args=backend.connect_args)
    assert (report.kek_id, report.generated) == (added.kek_id, False)
    assert report.pruned is not None and report.pruned.dropped == (master_key.kek_id,)
    assert load_keyring(key_file).kek_ids == (added.kek_id,)
    await _assert_seeds(worker_store, seeds)


async def test_a_kek_nobody_has_is_503_and_is_reported(
    backend: Backend, worker_store: KeyStore, master_key: MasterKey, new_material: Material,
) -> None:
    seeds = await _populate(worker_store, new_material, tenants=1)
    (tenant_id, algorithm, version) = next(iter(seeds))
    async with worker_store.engine.begin() as conn:
        await conn.execute(update(KeyVersion).where(
            KeyVersion.tenant_id == tenant_id, KeyVersion.algorithm == algorithm.value,
            KeyVersion.version == version).values(kek_id="00" * 8))
    with pytest.raises(ServiceError) as failure:
        await worker_store.load_seed(tenant_id, algorithm, version)
    assert failure.value.code is ErrorCode.SERVICE_UNAVAILABLE
    report = await rewrap_all(worker_store.engine, MasterKeyring(_new_key(), (master_key,)))
    assert (report.unreadable, report.remaining) == (1, 1)


async def test_startup_refuses_a_keyring_whose_primary_is_not_this_databases(
    backend: Backend, store: KeyStore, master_key: MasterKey,
) -> None:
    with pytest.raises(MasterKeyMismatch):
        await backend.open(MasterKeyring(_new_key(), (master_key,)), create_schema=False)
    # An extra key the database never saw is no reason to refuse (e.g. one pruned).
    extra = await backend.open(MasterKeyring(master_key, (_new_key(),)), create_schema=False)
    await extra.close()


async def test_reloads_log_kek_ids_never_key_bytes(
    backend: Backend, key_file: Path, worker_store: KeyStore, new_material: Material,
) -> None:
    seeds = await _populate(worker_store, new_material, tenants=1)
    with capture_logs() as logs:
        await rotate_master_key(key_file, backend.url, connect_args=backend.connect_args)
        await _assert_seeds(worker_store, seeds)
    keyring = load_keyring(key_file)
    assert any(entry["event"] == "master_keyring_reloaded" for entry in logs)
    text = repr(logs)
    assert keyring.primary.kek_id in text
    for key in keyring.keys:
        assert base64.b64encode(key.key).decode() not in text
        assert key.key.hex() not in text


def test_rotation_refuses_the_inline_master_key() -> None:
    from pqkms.admin import run_master_key_command

    settings = Settings(master_key=base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(MasterKeyError, match="needs the keyring file"):
        asyncio.run(run_master_key_command(settings, "rotate"))


# -- the keyring file ---------------------------------------------------------------------


def test_old_single_line_file_is_a_keyring_of_one_primary(tmp_path: Path) -> None:
    key = _new_key()
    path = _legacy_file(tmp_path / "master.key", key)
    keyring = load_keyring(path)
    assert keyring == MasterKeyring.single(key)
    assert (keyring.previous, keyring.next) == ((), ())
    watched = KeyringFile(path)
    assert watched.load() == keyring
    assert watched.reload_if_changed() is None  # unchanged: no re-read


def test_keyring_file_is_replaced_atomically_and_stays_private(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("placeholder\n")
    path.chmod(0o644)
    rings = [MasterKeyring(_new_key(), (_new_key(),), (_new_key(),)) for _ in range(3)]
    old_umask = os.umask(0)
    try:
        write_keyring_file(path, rings[0])
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring(path) == rings[0]
    assert path.read_text() == keyring_to_text(rings[0])

    # Readers racing a writer see a whole keyring every time, never half a file.
    seen: list[MasterKeyring] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(load_keyring(path))
            except BaseException as exc:
                errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for round_number in range(150):
            write_keyring_file(path, rings[round_number % 3])
    finally:
        done.set()
        for reader in readers:
            reader.join()
    assert errors == []
    assert seen and all(ring in rings for ring in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]  # no temp files


def test_forced_reload_of_an_unchanged_file_is_rate_limited(tmp_path: Path) -> None:
    key = _new_key()
    path = _legacy_file(tmp_path / "master.key", key)
    now = [100.0]
    watched = KeyringFile(path, forced_reload_interval=1.0, clock=lambda: now[0])
    watched.load()
    assert watched.reload_if_changed(force=True) is None  # read less than 1 s ago
    now[0] += 1.0
    assert watched.reload_if_changed(force=True) == MasterKeyring.single(key)
    assert watched.reload_if_changed(force=True) is None
    # A replaced file is read at once, whatever the interval.
    second = MasterKeyring(_new_key(), (key,))
    write_keyring_file(path, second)
    assert watched.reload_if_changed() == second
    # A vanished file is reported, then not retried within the interval.
    path.unlink()
    now[0] += 5
    with pytest.raises(MasterKeyError, match="does not exist"):
        watched.reload_if_changed(force=True)
    assert watched.reload_if_changed(force=True) is None

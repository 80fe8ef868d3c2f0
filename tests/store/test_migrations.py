"""Schema migrations (Alembic) on SQLite and PostgreSQL: upgrade, adoption, drift, CLI."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

from schemas.algorithms import Algorithm, KeyStatus, Plan
from tests.cli.processes import clean_env, run_pqkms
from worker.store import MasterKey, key_check_value, load_or_create_master_key
from worker.store.database import (
    create_engine_for,
    create_schema,
    require_current_schema,
    schema_state,
)
from worker.store.migrations import (
    BASELINE_REVISION,
    SchemaOutOfDate,
    SchemaTooNew,
    alembic_config,
    head_revision,
)
from worker.store.migrations.runner import BASELINE_TABLES
from worker.store.tables import ApiKey, KeyVersion, MasterKeyCheck, SchemaInfo, Tenant, utc_now

from .conftest import Backend

pytestmark = pytest.mark.long

HEAD = head_revision()


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    """An engine on the backend's empty database."""
    created = create_engine_for(backend.url, connect_args=backend.connect_args)
    try:
        yield created
    finally:
        await created.dispose()


async def _table_names(engine: AsyncEngine) -> set[str]:
    def names(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names())

    async with engine.connect() as conn:
        return await conn.run_sync(names)


async def _recorded_revisions(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


def _key_row(tenant_id: str, version: int, status: KeyStatus) -> dict[str, Any]:
    now = utc_now()
    return {
        "tenant_id": tenant_id,
        "algorithm": Algorithm.KYBER768.value,
        "version": version,
        "status": status.value,
        "public_key": b"public",
        "wrapped_seed": b"wrapped",
        "seed_nonce": b"n" * 12,
        "kek_id": "kek",
        "created_at": now,
        "status_changed_at": now,
        "schema_version": 1,
    }


# -- upgrade ----------------------------------------------------------------------------


async def test_empty_database_is_upgraded_to_head(engine: AsyncEngine) -> None:
    assert (await schema_state(engine)).current is None

    upgrade = await create_schema(engine)

    assert (upgrade.before, upgrade.after, upgrade.adopted) == (None, HEAD, False)
    assert await _table_names(engine) >= BASELINE_TABLES
    assert await _recorded_revisions(engine) == [HEAD]
    assert (await require_current_schema(engine)).at_head


async def test_partial_unique_index_allows_one_active_version(engine: AsyncEngine) -> None:
    await create_schema(engine)
    async with engine.begin() as conn:
        await conn.execute(insert(Tenant).values(id="t1", name="acme", plan="free",
                                                 created_at=utc_now(), schema_version=1))
        await conn.execute(insert(KeyVersion).values(_key_row("t1", 1, KeyStatus.RETIRED)))
        await conn.execute(insert(KeyVersion).values(_key_row("t1", 2, KeyStatus.RETIRED)))
        await conn.execute(insert(KeyVersion).values(_key_row("t1", 3, KeyStatus.ACTIVE)))
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(KeyVersion).values(_key_row("t1", 4, KeyStatus.ACTIVE)))


async def test_upgrade_again_changes_nothing_and_keeps_data(
    backend: Backend, engine: AsyncEngine, master_key: MasterKey
) -> None:
    await create_schema(engine)
    store = await backend.open(master_key, create_schema=False)
    tenant, api_key = await store.create_tenant("acme", Plan.PRO)
    await store.close()

    again = await create_schema(engine)

    assert (again.before, again.after, again.changed) == (HEAD, HEAD, False)
    assert await _recorded_revisions(engine) == [HEAD]
    reopened = await backend.open(master_key)
    try:
        assert await reopened.authenticate(api_key) == tenant
    finally:
        await reopened.close()


async def test_concurrent_upgrades_all_succeed(backend: Backend) -> None:
    engines = [create_engine_for(backend.url, connect_args=backend.connect_args)
               for _ in range(4)]
    try:
        upgrades = await asyncio.gather(*(create_schema(each) for each in engines))
        # Exactly one of them did the work; the others queued and found it at head.
        assert sorted(u.before or "" for u in upgrades) == ["", HEAD, HEAD, HEAD]
        assert {u.after for u in upgrades} == {HEAD}
        assert await _recorded_revisions(engines[0]) == [HEAD]
    finally:
        for each in engines:
            await each.dispose()


# -- adoption of a database created before migrations --------------------------------


async def _create_pre_migration_database(engine: AsyncEngine, master_key: MasterKey) -> None:
    """What pqkms made before Alembic: create_all of the baseline tables, and a key."""
    tables = [SQLModel.metadata.tables[name] for name in sorted(BASELINE_TABLES)]
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: SQLModel.metadata.create_all(sync, tables=tables))
        await conn.execute(insert(SchemaInfo).values(id=1, schema_version=1,
                                                     created_at=utc_now()))
        await conn.execute(insert(MasterKeyCheck).values(
            kek_id=master_key.kek_id, check_value=key_check_value(master_key),
            created_at=utc_now(), schema_version=1))
        await conn.execute(insert(Tenant).values(id="t-old", name="old", plan="pro",
                                                 created_at=utc_now(), schema_version=1))
        await conn.execute(insert(ApiKey).values(
            id="k-old", tenant_id="t-old", key_hash="h" * 64, key_prefix="qph_x",
            created_at=utc_now(), schema_version=1))
        await conn.execute(insert(KeyVersion).values(_key_row("t-old", 1, KeyStatus.ACTIVE)))


async def test_pre_migration_database_is_adopted_without_data_loss(
    backend: Backend, engine: AsyncEngine, master_key: MasterKey
) -> None:
    await _create_pre_migration_database(engine, master_key)
    state = await schema_state(engine)
    assert (state.current, state.pre_migration) == (None, True)
    # A worker (no upgrade) refuses it with the command that fixes it.
    with pytest.raises(SchemaOutOfDate, match="pqkms db upgrade"):
        await backend.open(master_key, create_schema=False)

    upgrade = await create_schema(engine)

    assert (upgrade.before, upgrade.after, upgrade.adopted) == (None, HEAD, True)
    assert await _recorded_revisions(engine) == [HEAD]
    store = await backend.open(master_key, create_schema=False)
    try:
        keys = await store.list_keys("t-old")
        assert [(k.version, k.status) for k in keys] == [(1, KeyStatus.ACTIVE)]
        assert (await store.get_tenant("t-old")) is not None
    finally:
        await store.close()
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(ApiKey))).scalar() == 1


# -- revisions this code does not know, or has not applied -----------------------------


async def test_unknown_revision_is_refused_as_too_new(
    backend: Backend, engine: AsyncEngine, master_key: MasterKey
) -> None:
    await create_schema(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))

    for attempt in (create_schema(engine), backend.open(master_key)):
        with pytest.raises(SchemaTooNew, match="database schema is newer than this pqkms"):
            await attempt


async def test_schema_behind_head_is_refused_then_upgraded(
    backend: Backend, engine: AsyncEngine, master_key: MasterKey
) -> None:
    if HEAD == BASELINE_REVISION:
        pytest.skip("only the baseline exists")
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), BASELINE_REVISION))

    with pytest.raises(SchemaOutOfDate, match=f"revision {BASELINE_REVISION}, .*pqkms db upgrade"):
        await backend.open(master_key, create_schema=False)
    upgrade = await create_schema(engine)

    assert (upgrade.before, upgrade.after) == (BASELINE_REVISION, HEAD)


async def test_the_migrations_match_the_sqlmodel_tables(engine: AsyncEngine) -> None:
    """No drift: every table, column, type, index and constraint a migration makes is
    what the SQLModel classes declare, and the other way round."""
    await create_schema(engine)

    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(differences) == []


# -- the command line -----------------------------------------------------------------


def _pqkms_db(action: str, data_dir: Path, database: Path) -> subprocess.CompletedProcess[str]:
    return run_pqkms("db", action, "--data-dir", str(data_dir),
                     "--database-url", f"sqlite:///{database}")


def test_db_upgrade_and_current_on_a_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "pqkms.db"

    empty = _pqkms_db("current", tmp_path, database)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.startswith("none (empty database")
    assert not database.exists()  # reading the revision creates nothing

    first = _pqkms_db("upgrade", tmp_path, database)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"schema none -> {HEAD}: sqlite:///{database}",
        "master key not checked (none available)",
    ]

    second = _pqkms_db("upgrade", tmp_path, database)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == (
        f"schema {HEAD} -> {HEAD} (already at head): sqlite:///{database}"
    )

    current = _pqkms_db("current", tmp_path, database)
    assert current.returncode == 0, current.stderr
    assert current.stdout == f"{HEAD} (head)\n"


def test_db_upgrade_checks_an_available_master_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_pqkms("db", "init", "--data-dir", str(data_dir)).returncode == 0
    key = load_or_create_master_key(data_dir / "master.key", create=False)

    ok = run_pqkms("db", "upgrade", "--data-dir", str(data_dir))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1] == f"master key matches (kek id {key.kek_id})"

    wrong = tmp_path / "wrong.key"
    load_or_create_master_key(wrong, create=True)
    refused = run_pqkms("db", "upgrade", "--data-dir", str(data_dir),
                        "--master-key-file", str(wrong))
    assert refused.returncode == 1
    assert "master key does not match" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_db_upgrade_adopts_a_pre_migration_database(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    master = MasterKey(secrets.token_bytes(32))

    async def create_old() -> None:
        engine = create_engine_for(f"sqlite:///{database}")
        try:
            await _create_pre_migration_database(engine, master)
        finally:
            await engine.dispose()

    asyncio.run(create_old())
    before = _pqkms_db("current", tmp_path, database)
    assert before.stdout.startswith("none (created before migrations")

    result = _pqkms_db("upgrade", tmp_path, database)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"schema none (created before migrations, adopted) -> {HEAD}: "
    )
    assert _pqkms_db("current", tmp_path, database).stdout == f"{HEAD} (head)\n"


def test_concurrent_db_upgrade_processes_all_succeed(tmp_path: Path) -> None:
    database = tmp_path / "race.db"
    argv = [sys.executable, "-m", "pqkms", "db", "upgrade", "--data-dir", str(tmp_path),
            "--database-url", f"sqlite:///{database}"]
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=clean_env()) for _ in range(3)]
    outputs = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    firsts = sorted(out.splitlines()[0].split(":")[0] for out, _ in outputs)
    assert firsts == sorted([f"schema none -> {HEAD}"]
                            + [f"schema {HEAD} -> {HEAD} (already at head)"] * 2)


def test_worker_refuses_a_database_that_was_not_upgraded(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    load_or_create_master_key(key_file, create=True)
    (tmp_path / "empty.db").touch()  # a database without tables (a missing one: test_store_paths)
    env = clean_env(PQKMS_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}",
                    PQKMS_MASTER_KEY_FILE=str(key_file), PQKMS_DATA_DIR=str(tmp_path),
                    PQKMS_NATS_URL="nats://127.0.0.1:9", PQKMS_LOG_JSON="true")

    result = subprocess.run([sys.executable, "-m", "worker"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)

    assert result.returncode == 1
    assert "database has no pqkms schema; run `pqkms db upgrade` first" in result.stderr

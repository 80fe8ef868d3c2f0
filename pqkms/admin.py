"""Operator tasks on the key store: first-run setup, schema migrations, tenants.

These run in the ``pqkms`` command (``up``, ``db init``, ``db upgrade``, ``db current``,
``tenant create``), never in a worker: workers only check that the schema is at head.
The worker package is imported lazily so ``pqkms --help`` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.algorithms import Algorithm, Plan
from worker.config import Settings

if TYPE_CHECKING:
    from worker.store import KeyStore, MasterKey
    from worker.store.keyring import MasterKeyring
    from worker.store.migrations import SchemaState, SchemaUpgrade
    from worker.store.rotation_policies import RotationPolicyRecord

__all__ = [
    "CreatedTenant",
    "SchemaReport",
    "StoreInfo",
    "clear_rotation_policy",
    "create_tenant",
    "database_errors",
    "database_url_with_password",
    "describe_database_failure",
    "initialise_store",
    "load_master_key",
    "open_store",
    "read_schema_state",
    "redacted_database_url",
    "run_master_key_command",
    "rotation_policies",
    "set_rotation_policy",
    "upgrade_schema",
]


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What :func:`initialise_store` set up; safe to print (no secrets)."""

    database_url: str
    master_key_file: Path | None
    kek_id: str
    schema: SchemaUpgrade


@dataclass(frozen=True, slots=True)
class SchemaReport:
    """What :func:`upgrade_schema` did; safe to print (no secrets)."""

    database_url: str
    schema: SchemaUpgrade
    # The master key checked against the database, or None when none was available.
    kek_id: str | None


@dataclass(frozen=True, slots=True)
class CreatedTenant:
    """A new tenant and its first API key (shown once, never stored in clear)."""

    tenant_id: str
    name: str
    plan: str
    api_key: str

    def as_json_dict(self) -> dict[str, str]:
        """The object ``pqkms tenant create`` prints."""
        return {
            "tenant_id": self.tenant_id,
            "name": self.name,
            "plan": self.plan,
            "api_key": self.api_key,
        }


def redacted_database_url(url: str) -> str:
    """The database URL with any password masked, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL: say nothing about its content
        return "<database url>"


def database_url_with_password(url: str, password: str) -> str:
    """``url`` with its password set (escaped as URLs require)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=password).render_as_string(hide_password=False)


def describe_database_failure(settings: Settings, exc: BaseException) -> str:
    """One safe line for a database that cannot be reached or used (no password)."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = detail[0][:200] if detail else type(exc).__name__
    url = redacted_database_url(settings.resolved_database_url())
    return f"cannot use the database {url}: {reason}"


def database_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning the database is unreachable or refuses us, or its URL names a
    database this store cannot use (``mysql://``, say)."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.store.database import UnsupportedDatabaseURL

    return (OSError, SQLAlchemyError, UnsupportedDatabaseURL)


def load_master_key(settings: Settings, *, create: bool) -> MasterKey | MasterKeyring:
    """The master key from ``PQKMS_MASTER_KEY`` (inline base64), or the key file's whole
    keyring: with every key of the file the store can tell a database restored from
    before a master-key rotation from a wrong key, and say so (``MasterKeyMismatch``).

    With ``create`` the file is created (mode 0600, directory 0700) when it does not
    exist yet; that is the first-run path of ``pqkms up`` and ``pqkms db init``.
    """
    from worker.store import master_key_from_base64
    from worker.store.keyring import load_keyring

    if settings.master_key is not None:
        return master_key_from_base64(settings.master_key.get_secret_value())
    return load_keyring(settings.resolved_master_key_file(), create=create)


def _uses_default_sqlite(settings: Settings) -> bool:
    return not settings.database_url


async def open_store(
    settings: Settings, *, create_key: bool, create_schema: bool = True
) -> KeyStore:
    """Open the key store named by the settings (checks the master key's check value).

    Without ``create_schema`` the database must exist already: after the master key (read
    first, as :meth:`KeyStore.open` does), a SQLite path that does not is refused
    (``DatabaseNotFound``) before any file or directory is created.
    """
    from worker.store import KeyStore
    from worker.store.database import require_existing_database

    if create_schema and _uses_default_sqlite(settings):
        _make_private_dir(settings.data_dir)
    master = load_master_key(settings, create=create_key)
    if not create_schema:
        require_existing_database(settings.resolved_database_url())
    return await KeyStore.open(
        settings.resolved_database_url(), master, create_schema=create_schema
    )


async def initialise_store(settings: Settings) -> StoreInfo:
    """Create the data directory, master key and schema if missing; idempotent.

    Upgrades the schema to head (like :func:`upgrade_schema`), then creates the master
    key if needed and records its check value. Run once before any worker starts: workers
    never change the schema, and never race on recording the check value. A database
    that already records a master key is never given a new one: without its key file
    this raises ``MasterKeyError`` and leaves no file behind.
    """
    schema = await _upgrade_to_head(settings)
    if not _master_key_available(settings):
        await _refuse_new_key_for_keyed_database(settings)
    store = await open_store(settings, create_key=True, create_schema=False)
    try:
        kek_id = store.kek_id
    finally:
        await store.close()
    key_file = None if settings.master_key is not None else settings.resolved_master_key_file()
    return StoreInfo(
        database_url=redacted_database_url(settings.resolved_database_url()),
        master_key_file=key_file,
        kek_id=kek_id,
        schema=schema,
    )


async def upgrade_schema(settings: Settings) -> SchemaReport:
    """Apply every pending schema migration (``pqkms db upgrade``); idempotent.

    A database created before migrations is adopted at the baseline revision, keeping
    its rows. When a master key is available (``PQKMS_MASTER_KEY``, or an existing key
    file) it is then checked against the database, so a wrong key stops a deployment
    here; a key is never created.
    """
    schema = await _upgrade_to_head(settings)
    kek_id = None
    if _master_key_available(settings):
        store = await open_store(settings, create_key=False, create_schema=False)
        try:
            kek_id = store.kek_id
        finally:
            await store.close()
    return SchemaReport(
        database_url=redacted_database_url(settings.resolved_database_url()),
        schema=schema,
        kek_id=kek_id,
    )


async def read_schema_state(settings: Settings) -> SchemaState:
    """The database's schema revision and this pqkms's head (``pqkms db current``).

    Changes nothing: a SQLite file that does not exist is reported as empty, not created.
    """
    from worker.store.database import create_engine_for, schema_state, sqlite_database_file
    from worker.store.migrations import SchemaState, head_revision

    url = settings.resolved_database_url()
    sqlite_file = sqlite_database_file(url)
    if sqlite_file is not None and not sqlite_file.exists():
        return SchemaState(None, head_revision())
    engine = create_engine_for(url)
    try:
        return await schema_state(engine)
    finally:
        await engine.dispose()


async def _upgrade_to_head(settings: Settings) -> SchemaUpgrade:
    from worker.store.database import create_engine_for, create_schema

    if _uses_default_sqlite(settings):
        _make_private_dir(settings.data_dir)
    engine = create_engine_for(settings.resolved_database_url())
    try:
        return await create_schema(engine)
    finally:
        await engine.dispose()


def sqlite_database_exists(settings: Settings) -> bool:
    """Whether the settings name a SQLite file that exists (False for PostgreSQL)."""
    from worker.store.database import sqlite_database_file

    path = sqlite_database_file(settings.resolved_database_url())
    return path is not None and path.is_file()


def _master_key_available(settings: Settings) -> bool:
    return settings.master_key is not None or settings.resolved_master_key_file().exists()


async def _refuse_new_key_for_keyed_database(settings: Settings) -> None:
    """Raise ``MasterKeyError`` when the database already records a master key.

    A fresh key could never open such a database's rows; created anyway, the file would
    outlive the failed check and might be kept or copied as "the master key".
    """
    from sqlalchemy.exc import OperationalError, ProgrammingError
    from sqlmodel import select

    from worker.store import MasterKeyError
    from worker.store.database import create_engine_for
    from worker.store.tables import MasterKeyCheck

    engine = create_engine_for(settings.resolved_database_url())
    try:
        async with engine.connect() as conn:
            kek_ids = sorted((await conn.execute(select(MasterKeyCheck.kek_id))).scalars())
    except (OperationalError, ProgrammingError):
        return  # no schema yet (an empty file): nothing recorded; opening creates it
    finally:
        await engine.dispose()
    if kek_ids:
        raise MasterKeyError(
            f"this database already has a master key (kek id {', '.join(kek_ids)}) and "
            f"{settings.resolved_master_key_file()} does not exist; give its key file "
            "(--master-key-file or PQKMS_MASTER_KEY_FILE) or PQKMS_MASTER_KEY. No new key "
            "was created: it could not open this database's keys"
        )


async def create_tenant(settings: Settings, name: str, plan: Plan) -> CreatedTenant:
    """Create a tenant and its first API key.

    On the default local layout (SQLite in the data directory) the master key and the
    schema are created when missing, so this works before the first ``pqkms up``. With
    an explicit database URL the master key must already exist (a fresh key would not
    match the database's and would only leave a useless file behind) and the schema
    must be at head: upgrades there are the operator's explicit ``pqkms db upgrade``.
    """
    local = _uses_default_sqlite(settings)
    existing = sqlite_database_exists(settings)
    if local and existing and not _master_key_available(settings):
        # A keyed database without its key file: a fresh key could open none of its
        # rows, and the file left behind would pass for "the master key" (as db init).
        await _refuse_new_key_for_keyed_database(settings)
    store = await open_store(settings, create_key=local, create_schema=local)
    try:
        record, api_key = await store.create_tenant(name, plan)
    finally:
        await store.close()
    return CreatedTenant(
        tenant_id=record.tenant_id,
        name=record.name,
        plan=Plan(record.plan).value,
        api_key=api_key,
    )


async def add_api_key(settings: Settings, tenant_name: str) -> dict[str, str]:
    """Issue another API key for the tenant (``LookupError`` for an unknown tenant); the
    key is returned here only, its hash is stored."""
    store = await open_store(settings, create_key=False, create_schema=False)
    try:
        tenant_id = await _tenant_id_named(store, tenant_name)
        api_key = await store.add_api_key(tenant_id)
    finally:
        await store.close()
    return {"tenant_id": tenant_id, "name": tenant_name, "api_key": api_key}


async def revoke_api_key(settings: Settings, tenant_name: str, api_key: str) -> bool:
    """Revoke one of the tenant's API keys; ``False`` when it is not one of theirs
    (``LookupError`` for an unknown tenant). Workers stop accepting it once their memory
    of it lapses (``worker.services.auth``: 10 s)."""
    store = await open_store(settings, create_key=False, create_schema=False)
    try:
        tenant_id = await _tenant_id_named(store, tenant_name)
        return await store.revoke_api_key(tenant_id, api_key)
    finally:
        await store.close()


async def list_api_keys(settings: Settings, tenant_name: str) -> list[dict[str, str | None]]:
    """The tenant's API keys as prefixes with their creation and revocation times
    (``LookupError`` for an unknown tenant); never a key."""
    from schemas.envelope import utc_timestamp

    store = await open_store(settings, create_key=False, create_schema=False)
    try:
        keys = await store.list_api_keys(await _tenant_id_named(store, tenant_name))
    finally:
        await store.close()
    return [{"prefix": key.prefix, "created_at": utc_timestamp(key.created_at),
             "revoked_at": None if key.revoked_at is None else utc_timestamp(key.revoked_at)}
            for key in keys]


async def revoke_api_keys(settings: Settings, tenant_name: str, prefix: str | None) -> int:
    """Revoke the tenant's keys with ``prefix`` as ``list_api_keys`` shows it, or all of
    them (``None``); the number revoked (``LookupError`` for an unknown tenant)."""
    store = await open_store(settings, create_key=False, create_schema=False)
    try:
        tenant_id = await _tenant_id_named(store, tenant_name)
        return await store.revoke_api_keys(tenant_id, prefix)
    finally:
        await store.close()


def _make_private_dir(path: Path) -> None:
    """Create ``path`` as 0700 if it does not exist (an existing one is left alone)."""
    if not path.exists():
        try:
            path.mkdir(parents=True, mode=0o700)
        except FileExistsError:  # another pqkms command created it just now
            return
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


async def set_rotation_policy(
    settings: Settings, tenant_name: str, algorithm: Algorithm, period_seconds: int
) -> dict[str, object]:
    """Rotate the tenant's active ``algorithm`` version every ``period_seconds``.

    ``LookupError`` for an unknown tenant, ``ValueError`` for a period under
    ``PQKMS_ROTATION_MIN_PERIOD_SECONDS``. Workers pick the policy up at their next check.
    """
    from schemas.rotation_policy import format_rotation_period
    from worker.store.rotation_policies import RotationPolicyStore

    shortest = settings.rotation_min_period_seconds
    if period_seconds < shortest:
        raise ValueError(f"the rotation period must be at least {format_rotation_period(shortest)}")
    store = await open_store(settings, create_key=False, create_schema=False)
    try:
        tenant_id = await _tenant_id_named(store, tenant_name)
        record = await RotationPolicyStore(store.engine).set_policy(
            tenant_id, algorithm, period_seconds
        )
    finally:
        await store.close()
    return _rotation_policy_json(tenant_name, record)


async def rotation_policies(settings: Settings, tenant_name: str) -> list[dict[str, object]]:
    """The tenant's rotation policies (``LookupError`` for an unknown tenant)."""
    from worker.store.rotation_policies import RotationPolicyStore

    store = await open_store(settings, create_key=False, create_schema=False)
    try:
        tenant_id = await _tenant_id_named(store, tenant_name)
        records = await RotationPolicyStore(store.engine).list_policies(tenant_id)
    finally:
        await store.close()
    return [_rotation_policy_json(tenant_name, record) for record in records]


async def clear_rotation_policy(settings: Settings, tenant_name: str, algorithm: Algorithm) -> bool:
    """Stop scheduled rotation of one algorithm; whether there was a policy."""
    from worker.store.rotation_policies import RotationPolicyStore

    store = await open_store(settings, create_key=False, create_schema=False)
    try:
        tenant_id = await _tenant_id_named(store, tenant_name)
        return await RotationPolicyStore(store.engine).delete_policy(tenant_id, algorithm)
    finally:
        await store.close()


async def list_tenants(settings: Settings) -> list[dict[str, object]]:
    """Every tenant by name: id, plan, creation, unrevoked API keys, key versions."""
    from schemas.envelope import utc_timestamp
    from worker.store.tenant_directory import TenantDirectory

    store = await open_store(settings, create_key=False, create_schema=False)
    try:
        tenants = await TenantDirectory(store.engine).list_tenants()
    finally:
        await store.close()
    return [{"tenant_id": tenant.tenant_id, "name": tenant.name, "plan": tenant.plan.value,
             "created_at": utc_timestamp(tenant.created_at),
             "active_api_keys": tenant.active_api_keys, "key_versions": tenant.key_versions}
            for tenant in tenants]


async def set_tenant_plan(settings: Settings, tenant_name: str, plan: Plan) -> dict[str, str]:
    """Move a tenant to another plan (``LookupError`` for an unknown tenant); workers
    apply it within their 10 s memory of the tenant's API keys."""
    from worker.store.tenant_directory import TenantDirectory

    store = await open_store(settings, create_key=False, create_schema=False)
    try:
        change = await TenantDirectory(store.engine).set_plan(tenant_name, plan)
    finally:
        await store.close()
    if change is None:
        raise LookupError(f"no tenant named {tenant_name!r}")
    return {"tenant_id": change.tenant_id, "name": change.name,
            "previous_plan": change.previous_plan.value, "plan": change.plan.value}


async def _tenant_id_named(store: KeyStore, name: str) -> str:
    tenant = await store.get_tenant_by_name(name)
    if tenant is None:
        raise LookupError(f"no tenant named {name!r}")
    return tenant.tenant_id


def _rotation_policy_json(tenant_name: str, record: RotationPolicyRecord) -> dict[str, object]:
    from schemas.envelope import utc_timestamp
    from schemas.rotation_policy import format_rotation_period

    return {
        "tenant": tenant_name,
        "tenant_id": record.tenant_id,
        "algorithm": record.algorithm.value,
        "rotation_period": format_rotation_period(record.rotation_period_seconds),
        "rotation_period_seconds": record.rotation_period_seconds,
        "updated_at": utc_timestamp(record.updated_at),
    }


async def run_master_key_command(
    settings: Settings,
    action: str,
    *,
    kek_ids: Sequence[str] = (),
    batch_size: int = 100,
    retire_old: bool = False,
    adopt_primary: str | None = None,
) -> dict[str, Any]:
    """Run ``pqkms master-key ACTION`` (``status``, ``add``, ``rotate``, ``rewrap``,
    ``prune``) and
    return the JSON object it prints (key ids and counts, never key bytes).

    These commands rewrite the keyring file, so they need the file form of the master
    key; the inline ``PQKMS_MASTER_KEY`` holds one key and is refused.
    """
    from worker.store import MasterKeyError, kek_rotation
    from worker.store.database import require_existing_database

    if settings.master_key is not None:
        raise MasterKeyError(
            "master key rotation needs the keyring file (PQKMS_MASTER_KEY_FILE / "
            "--master-key-file); the inline PQKMS_MASTER_KEY holds one key and cannot "
            "be rewritten"
        )
    path = settings.resolved_master_key_file()
    url = settings.resolved_database_url()
    require_existing_database(url)
    if action == "status":
        return (await kek_rotation.master_key_status(path, url)).as_json_dict()
    if action == "add":
        return (await kek_rotation.add_master_key(path, url)).as_json_dict()
    if action in ("rotate", "rewrap"):
        report = await kek_rotation.rotate_master_key(
            path,
            url,
            kek_id=kek_ids[0] if kek_ids else None,
            rewrap_only=action == "rewrap",
            batch_size=batch_size,
            retire_old=retire_old,
            adopt_primary=adopt_primary,
        )
        return report.as_json_dict()
    if action == "prune":
        pruned = await kek_rotation.prune_master_keys(path, url, kek_ids=kek_ids or None)
        return {"dropped": list(pruned.dropped), "kept_in_use": list(pruned.kept_in_use)}
    raise ValueError(f"unknown master-key action {action!r}")

"""KeyStore: tenants, API keys and key versions with their lifecycle rules.

Every query filters by tenant id. Writes that assign version numbers run in one
transaction that first locks the tenant row (``SELECT ... FOR UPDATE`` on PostgreSQL;
on SQLite the ``BEGIN IMMEDIATE`` write lock already serialises them), and are retried
a few times on unique-index or serialisation conflicts. The partial unique index on
``(tenant_id, algorithm) WHERE status = 'active'`` is the last line of defence.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import structlog
from sqlalchemy import func
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.algorithms import Algorithm, KeyStatus, Plan
from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.store import database
from worker.store.database import create_engine_for, open_session
from worker.store.key_state import KeyStateFile, StatusCache, key_state_path
from worker.store.keyring import KeySource, LiveKeyring, MasterKeyring
from worker.store.master_key import (
    MasterKey,
    MasterKeyMismatch,
    SeedIntegrityError,
    key_check_value,
    seed_aad,
    unwrap_seed,
    wrap_seed,
)
from worker.store.migrations import SchemaTooNew
from worker.store.status_reader import SqliteStatusReader, sqlite_reader_path
from worker.store.tables import (
    ROW_SCHEMA_VERSION,
    ApiKey,
    KeyVersion,
    MasterKeyCheck,
    SchemaInfo,
    Tenant,
    utc_now,
)
from worker.store.write_deadline import remaining_seconds

__all__ = [
    "API_KEY_PREFIX",
    "ActiveVersionChanged",
    "ApiKeyInfo",
    "KeyRecord",
    "KeyStore",
    "NewKeyMaterial",
    "SchemaTooNew",
    "StatusChange",
    "TenantExists",
    "TenantRecord",
    "UnrecordedPrimary",
]

# Stored status text → enum member without EnumMeta.__call__ (the per-request read).
_STATUSES: dict[str, KeyStatus] = {status.value: status for status in KeyStatus}

API_KEY_PREFIX = "qph_"
_MAX_API_KEY_LENGTH = 256
_WRITE_ATTEMPTS = 8
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505"})  # serialization, deadlock, unique
_DUMMY_HASH = hashlib.sha256(b"pqkms dummy api key").hexdigest()
_MISMATCH_MESSAGE = "The master key does not match this database"

T = TypeVar("T")
_log = structlog.get_logger("pqkms.store")
_MISSING_KEK_MESSAGE = (
    "Stored key material is wrapped under a master key this worker does not hold"
)

# The status query in asyncpg's placeholder style (see worker.store.status_reader).
_PG_STATUS_QUERY = (
    "SELECT status FROM pqkms_key_version WHERE tenant_id = $1 AND algorithm = $2 AND version = $3"
)
# A connection the status read found dead (server restart, network): asyncpg's errors.
_PG_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
)


class UnrecordedPrimary(StrEnum):
    """What opening a store does when the keyring's primary has no check value in the
    database but other keys of the same keyring match recorded ones: a database that
    predates a master-key rotation (restored from a backup, say) with a newer keyring."""

    REFUSE = "refuse"  # workers and most commands: the operator decides, not a start
    RECORD = "record"  # master-key rotate/rewrap --adopt-primary: record its check value
    ACCEPT = "accept"  # master-key status: open it, change nothing, wrap nothing


class TenantExists(ValueError):
    """A tenant with that name already exists."""


class ActiveVersionChanged(Exception):
    """A conditional rotate found another active version than expected; nothing changed."""

    def __init__(self, expected: int, current: int | None) -> None:
        super().__init__(f"expected active version {expected}, found {current}")
        self.expected = expected
        self.current = current


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key as an operator may see it: never the key, only its first characters."""

    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant as the services see it."""

    tenant_id: str
    name: str
    plan: Plan


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """Public facts about one key version; never the seed."""

    tenant_id: str
    algorithm: Algorithm
    version: int
    status: KeyStatus
    public_key: bytes
    created_at: datetime
    status_changed_at: datetime


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A version after retire or archive, and whether that call changed it."""

    record: KeyRecord
    changed: bool


@dataclass(frozen=True, slots=True)
class NewKeyMaterial:
    """A freshly generated key pair: the private seed and the SubjectPublicKeyInfo DER."""

    seed: bytes = field(repr=False)
    public_key: bytes


def _hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def _new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def _tenant_record(row: Tenant) -> TenantRecord:
    return TenantRecord(tenant_id=row.id, name=row.name, plan=Plan(row.plan))


def _key_record(row: KeyVersion) -> KeyRecord:
    return KeyRecord(
        tenant_id=row.tenant_id,
        algorithm=Algorithm(row.algorithm),
        version=row.version,
        status=KeyStatus(row.status),
        public_key=row.public_key,
        created_at=row.created_at,
        status_changed_at=row.status_changed_at,
    )


def _is_retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True  # a concurrent writer took the version number or the active slot
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    if isinstance(exc, OperationalError):
        message = str(exc.orig).lower()
        return "database is locked" in message or "database is busy" in message
    return False


def _not_found(algorithm: Algorithm, version: int) -> ServiceError:
    return ServiceError(
        ErrorCode.KMS_KEY_NOT_FOUND, f"Key version {version} not found for {algorithm}"
    )


async def _rows_under_keys_not_in(session: AsyncSession, keyring: MasterKeyring) -> dict[str, int]:
    """Key versions per KEK id the keyring lacks (read only when a keyring is refused
    or its primary recorded: it scans the key versions)."""
    query = (
        select(KeyVersion.kek_id, func.count())
        .where(col(KeyVersion.kek_id).not_in(keyring.kek_ids))
        .group_by(col(KeyVersion.kek_id))
    )
    return {str(kek_id): int(count) for kek_id, count in (await session.exec(query)).all()}


# KEK ids are the first 8 bytes of SHA-256("pqkms-kek-id" ‖ key): one-way, and written
# beside each key in the keyring file, so messages may name them; never check values.
def _id_list(kek_ids: Iterable[str]) -> str:
    return ", ".join(sorted(kek_ids)) or "none"


def _facts(keyring: MasterKeyring, recorded: Mapping[str, bytes]) -> str:
    held = ", ".join(f"{kek_id} ({keyring.role_of(kek_id)})" for kek_id in keyring.kek_ids)
    return (f"the database has check values for KEK ids {_id_list(recorded)}; "
            f"this keyring holds {held}")


def _altered_check_value(
    keyring: MasterKeyring, recorded: Mapping[str, bytes], kek_id: str
) -> MasterKeyMismatch:
    # The id is derived from the key, so the same id with another check value means the
    # database's row changed, not that the operator holds another key.
    return MasterKeyMismatch(
        f"{_MISMATCH_MESSAGE}: the check value recorded for key {kek_id} is not that "
        f"key's (the database's row was altered?); {_facts(keyring, recorded)}"
    )


def _mismatch(
    keyring: MasterKeyring,
    recorded: Mapping[str, bytes],
    known: Sequence[str],
    lacking: Mapping[str, int],
) -> MasterKeyMismatch:
    """The refusal of a keyring whose primary the database does not know, saying which
    keyring would do (ids only: operators keep keyring backups with ``# kek <id>``)."""
    primary = keyring.primary.kek_id
    facts = _facts(keyring, recorded)
    if not known and len(keyring.keys) == 1:
        # Commands may be given a keyring file's primary alone: what else the file holds
        # is unknown here, so both ways out are named.
        return MasterKeyMismatch(
            f"{_MISMATCH_MESSAGE}: the database has check values for KEK ids "
            f"{_id_list(recorded)}; the master key given is {primary}. Use the keyring "
            "this database was last used with (a backup from the same time): its primary "
            "must be one of the database's ids, which a keyring file shows as "
            f"'# kek <id>' after each key. If the keyring file whose primary is {primary} "
            "also holds one of them, the database predates a master-key rotation: "
            "'pqkms master-key status' shows it, and 'pqkms master-key rewrap "
            f"--adopt-primary {primary}' with that file records its primary's check value "
            "and re-wraps every stored key under it."
        )
    if not known:
        return MasterKeyMismatch(
            f"{_MISMATCH_MESSAGE}: none of this keyring's keys is one of its keys; {facts}. "
            "Use the keyring this database was last used with (a backup from the same "
            "time): its primary must be one of the database's ids, which a keyring file "
            "shows as '# kek <id>' after each key."
        )
    if lacking:
        under = ", ".join(f"{count} key version(s) under {kek_id}"
                          for kek_id, count in sorted(lacking.items()))
        return MasterKeyMismatch(
            f"{_MISMATCH_MESSAGE}: this keyring holds some of its keys "
            f"({_id_list(known)}), but its primary {primary} is newer than the database "
            f"and it lacks keys the database uses ({under}); {facts}. Use a keyring that "
            f"holds {_id_list(lacking)} (the one backed up with this database)."
        )
    return MasterKeyMismatch(
        f"{_MISMATCH_MESSAGE}: this database predates a master-key rotation: its keys are "
        f"in this keyring ({_id_list(known)}), but its primary {primary} is newer than the "
        f"database; {facts}. If this is the keyring this database belongs with (not a "
        "copy rotated elsewhere), run 'pqkms master-key rewrap --adopt-primary "
        f"{primary}' with it (same database and key-file options): it records the "
        "primary's check value and re-wraps every stored key under it; then start the "
        "workers. Or use a keyring whose primary is one of the database's ids."
    )


class KeyStore:
    """Persistence of tenants, API keys and wrapped key versions."""

    def __init__(
        self,
        engine: AsyncEngine,
        master_key: KeySource | LiveKeyring,
        *,
        status_engine: AsyncEngine | None = None,
    ) -> None:
        """Wrap an engine; prefer :meth:`open`, which also checks the master key.

        ``status_engine`` (PostgreSQL only) serves the per-request status read; without
        it that read uses ``engine``.
        """
        self._engine = engine
        # The master keyring: the primary wraps new seeds, every key unwraps; when it
        # comes from a file, the file is followed as ``pqkms master-key`` replaces it.
        self._keyring = (
            master_key if isinstance(master_key, LiveKeyring) else LiveKeyring(master_key)
        )
        # The per-request status read (see worker.store.status_reader): a synchronous
        # sqlite3 reader where SQLite allows one, else one statement on a pooled
        # asyncpg connection.
        path = sqlite_reader_path(engine.url) if database.is_sqlite(engine) else None
        self._status_reader = None if path is None else SqliteStatusReader(path)
        self._status_engine = status_engine
        # Statuses remembered between requests, valid while the database's generation
        # file is unchanged (worker.store.key_state); SQLite files only.
        state = None if path is None else KeyStateFile.open(key_state_path(path))
        self._status_cache = None if state is None else StatusCache(state)

    @classmethod
    async def open(
        cls,
        database_url: str,
        master_key: KeySource | LiveKeyring,
        *,
        create_schema: bool = True,
        connect_args: Mapping[str, Any] | None = None,
        pool_size: int = database.POOL_SIZE,
        unrecorded_primary: UnrecordedPrimary = UnrecordedPrimary.REFUSE,
    ) -> KeyStore:
        """Connect, upgrade the schema to head if asked (else require it at head:
        ``SchemaOutOfDate``, ``SchemaTooNew``), and refuse a master key that is not this
        database's (:class:`MasterKeyMismatch`, naming the KEK ids on both sides).

        ``master_key`` is one key, a keyring, or a :class:`~worker.store.keyring.KeyringFile`
        the store follows as it is replaced (key rotation while running). ``pool_size``
        bounds each of its connection pools (on PostgreSQL: two, so twice this many).
        ``unrecorded_primary``: see :class:`UnrecordedPrimary` (only the
        ``pqkms master-key`` commands ask for anything but ``REFUSE``).
        """
        # Read the keyring first: a missing or malformed file fails before connecting.
        keyring = master_key if isinstance(master_key, LiveKeyring) else LiveKeyring(master_key)
        if not create_schema:
            # Connecting would create an empty SQLite file (and the worker its key-state
            # file) at a mistyped path; the schema check would then fail on it.
            database.require_existing_database(database_url)
        engine = create_engine_for(database_url, connect_args=connect_args, pool_size=pool_size)
        status_engine = None
        if not database.is_sqlite(engine):
            status_engine = create_engine_for(
                database_url, connect_args=connect_args,
                **{**database.STATUS_POOL_OPTIONS, "pool_size": pool_size},
            )
        store = cls(engine, keyring, status_engine=status_engine)
        try:
            if create_schema:
                await database.create_schema(engine)
            else:
                await database.require_current_schema(engine)
            await store._check_schema_and_master_key(unrecorded_primary)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for health checks and tests)."""
        return self._engine

    @property
    def kek_id(self) -> str:
        """Identifier of the master key in use."""
        return self._keyring.current.primary.kek_id

    @property
    def keyring(self) -> MasterKeyring:
        """The master keyring as this store last read it."""
        return self._keyring.current

    async def close(self) -> None:
        """Close every pooled connection and the status reader."""
        if self._status_reader is not None:
            self._status_reader.close()
        if self._status_cache is not None:
            self._status_cache.close()
        if self._status_engine is not None:
            await self._status_engine.dispose()
        await self._engine.dispose()

    # -- transactions -----------------------------------------------------------------

    @asynccontextmanager
    async def _session(self, *, write: bool) -> AsyncIterator[AsyncSession]:
        async with open_session(self._engine, write=write) as session:
            yield session

    async def _write(self, operation: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``operation`` in a write transaction, committed (durably) before returning."""
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            remaining_seconds()  # past the request's deadline: a 503, nothing changed
            try:
                async with self._session(write=True) as session:
                    result = await operation(session)
                    await session.commit()
                    return result
            except DBAPIError as exc:
                if attempt == _WRITE_ATTEMPTS or not _is_retryable(exc):
                    raise
                remaining_seconds()  # a lock wait cut short by the deadline ends here
            await asyncio.sleep(secrets.randbelow(20 * attempt) / 1000)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _check_schema_and_master_key(self, unrecorded_primary: UnrecordedPrimary) -> None:
        keyring = self._keyring.current

        async def operation(session: AsyncSession) -> bool:
            """Check (or, on a new database, record) the keyring; ``True`` when the
            primary's check value is in the database."""
            adopted.clear()  # a retried attempt starts over
            info = await session.get(SchemaInfo, 1)
            if info is None:
                session.add(SchemaInfo(id=1, schema_version=ROW_SCHEMA_VERSION))
            elif info.schema_version > ROW_SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"The database schema version is {info.schema_version}; this pqkms "
                    f"supports up to {ROW_SCHEMA_VERSION}. Upgrade pqkms."
                )
            recorded = {
                row.kek_id: row.check_value
                for row in (await session.exec(select(MasterKeyCheck))).all()
            }
            if not recorded:
                for key in keyring.keys:
                    session.add(MasterKeyCheck(kek_id=key.kek_id, check_value=key_check_value(key)))
                return True
            # Keys the database knows must match (a pruned one no longer has a check
            # value, a staged one may not have one yet); the primary must be one of them.
            for key in keyring.keys:
                check_value = recorded.get(key.kek_id)
                if check_value is not None and not hmac.compare_digest(
                    check_value, key_check_value(key)
                ):
                    raise _altered_check_value(keyring, recorded, key.kek_id)
            primary = keyring.primary
            if primary.kek_id in recorded:
                return True
            known = [kek_id for kek_id in keyring.kek_ids if kek_id in recorded]
            lacking = await _rows_under_keys_not_in(session, keyring) if known else {}
            if not known or lacking or unrecorded_primary is UnrecordedPrimary.REFUSE:
                raise _mismatch(keyring, recorded, known, lacking)
            # The same file holds keys of this database, so it is the operator's keyring
            # with a primary made after the database was (docs/decisions.md).
            if unrecorded_primary is UnrecordedPrimary.ACCEPT:
                return False
            session.add(MasterKeyCheck(kek_id=primary.kek_id, check_value=key_check_value(primary)))
            adopted[:] = known
            return True

        adopted: list[str] = []  # set when the primary's check value is recorded now
        if await self._write(operation):
            self._keyring.mark_verified(keyring.primary.kek_id)
        if adopted:
            _log.warning("master_key_primary_recorded", kek_id=keyring.primary.kek_id,
                         database_keys_in_keyring=adopted,
                         reason="the database predates this keyring's primary")

    async def _wrapping_key(self, session: AsyncSession) -> MasterKey:
        """The key to wrap a new seed under, inside the inserting write transaction.

        The keyring file is checked for a new primary first (one ``stat``), after
        reading the schema-info row ``FOR SHARE``: ``pqkms master-key rotate`` replaces
        the file and then takes that row ``FOR UPDATE`` (SQLite: the write lock), so
        every insert that chose the old primary has committed before its first re-wrap
        pass, and every later insert sees the new primary. A new primary is used only
        once its key-check value is found in the database; until then the last verified
        primary, if the keyring still holds it, keeps wrapping.
        """
        await session.exec(
            select(SchemaInfo.id).where(SchemaInfo.id == 1).with_for_update(read=True)
        )
        keyring = self._keyring.refresh()
        primary = keyring.primary
        if self._keyring.is_verified(primary.kek_id):
            return primary
        row = await session.get(MasterKeyCheck, primary.kek_id)
        if row is not None and hmac.compare_digest(row.check_value, key_check_value(primary)):
            self._keyring.mark_verified(primary.kek_id)
            _log.info("master_key_primary_in_use", kek_id=primary.kek_id)
            return primary
        _log.warning("master_key_primary_unverified", kek_id=primary.kek_id)
        fallback = next(
            (key for key in keyring.keys if self._keyring.is_verified(key.kek_id)), None
        )
        if fallback is None:
            raise ServiceError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "The master keyring has no primary key recorded in this database",
            )
        return fallback

    # -- tenants and API keys ---------------------------------------------------------

    async def create_tenant(self, name: str, plan: Plan) -> tuple[TenantRecord, str]:
        """Create a tenant and its first API key. The key is returned once, never stored."""
        api_key = _new_api_key()

        async def operation(session: AsyncSession) -> TenantRecord:
            existing = await session.exec(select(Tenant.id).where(Tenant.name == name))
            if existing.first() is not None:
                raise TenantExists(f"A tenant named {name!r} already exists")
            tenant = Tenant(name=name, plan=Plan(plan).value)
            session.add(tenant)
            await session.flush()
            session.add(self._api_key_row(tenant.id, api_key))
            return _tenant_record(tenant)

        try:
            record = await self._write(operation)
        except IntegrityError as exc:
            # Lost a race with another process creating the same name.
            raise TenantExists(f"A tenant named {name!r} already exists") from exc
        return record, api_key

    @staticmethod
    def _api_key_row(tenant_id: str, api_key: str) -> ApiKey:
        return ApiKey(
            tenant_id=tenant_id,
            key_hash=_hash_api_key(api_key),
            key_prefix=api_key[:12],
        )

    async def add_api_key(self, tenant_id: str) -> str:
        """Issue another API key for a tenant; returned once, only its hash is stored."""
        api_key = _new_api_key()

        async def operation(session: AsyncSession) -> None:
            if await session.get(Tenant, tenant_id) is None:
                raise ServiceError(ErrorCode.NOT_FOUND, "Tenant not found")
            session.add(self._api_key_row(tenant_id, api_key))

        await self._write(operation)
        return api_key

    async def revoke_api_key(self, tenant_id: str, api_key: str) -> bool:
        """Revoke one of the tenant's API keys; ``False`` if it is not one of theirs."""
        key_hash = _hash_api_key(api_key)

        async def operation(session: AsyncSession) -> bool:
            row = (
                await session.exec(
                    select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.key_hash == key_hash)
                )
            ).first()
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = utc_now()
                session.add(row)
            return True

        return await self._write(operation)

    async def list_api_keys(self, tenant_id: str) -> list[ApiKeyInfo]:
        """The tenant's API keys, oldest first: prefix, creation, revocation."""
        async with self._session(write=False) as session:
            rows = (await session.exec(
                select(ApiKey).where(ApiKey.tenant_id == tenant_id)
                .order_by(ApiKey.created_at)  # type: ignore[arg-type]
            )).all()
        return [ApiKeyInfo(row.key_prefix, row.created_at, row.revoked_at) for row in rows]

    async def revoke_api_keys(self, tenant_id: str, prefix: str | None) -> int:
        """Revoke the tenant's unrevoked API keys whose prefix is ``prefix`` (every one of
        them when ``None``); the number revoked. An operator revokes a leaked key by the
        prefix ``list_api_keys`` shows, without holding the key itself."""

        async def operation(session: AsyncSession) -> int:
            query = select(ApiKey).where(ApiKey.tenant_id == tenant_id,
                                         ApiKey.revoked_at == None)  # noqa: E711
            if prefix is not None:
                query = query.where(ApiKey.key_prefix == prefix)
            rows = (await session.exec(query)).all()
            now = utc_now()
            for row in rows:
                row.revoked_at = now
                session.add(row)
            return len(rows)

        return await self._write(operation)

    async def authenticate(self, api_key: str) -> TenantRecord | None:
        """The tenant owning a valid, unrevoked API key, else ``None``.

        The lookup is by hash; the final comparison is constant-time, and an unknown key
        still pays for a comparison so timing does not reveal which hashes exist.
        """
        if not api_key.startswith(API_KEY_PREFIX) or len(api_key) > _MAX_API_KEY_LENGTH:
            return None
        presented = _hash_api_key(api_key)
        async with self._session(write=False) as session:
            row = (
                await session.exec(
                    select(ApiKey, Tenant)
                    .join(Tenant, col(Tenant.id) == col(ApiKey.tenant_id))
                    .where(ApiKey.key_hash == presented)
                )
            ).first()
        if row is None:
            hmac.compare_digest(_DUMMY_HASH, presented)
            return None
        key_row, tenant = row
        if not hmac.compare_digest(key_row.key_hash, presented):
            return None
        if key_row.revoked_at is not None:
            return None
        return _tenant_record(tenant)

    async def get_tenant(self, tenant_id: str) -> TenantRecord | None:
        """A tenant by id."""
        async with self._session(write=False) as session:
            row = await session.get(Tenant, tenant_id)
        return None if row is None else _tenant_record(row)

    async def get_tenant_by_name(self, name: str) -> TenantRecord | None:
        """A tenant by its unique name (operator commands name tenants)."""
        async with self._session(write=False) as session:
            row = (await session.exec(select(Tenant).where(Tenant.name == name))).first()
        return None if row is None else _tenant_record(row)

    # -- reading keys -----------------------------------------------------------------

    async def list_keys(
        self,
        tenant_id: str,
        algorithm: Algorithm | None = None,
        status: KeyStatus | None = None,
    ) -> list[KeyRecord]:
        """The tenant's key versions, optionally filtered, ordered by algorithm and version."""
        query = select(KeyVersion).where(KeyVersion.tenant_id == tenant_id)
        if algorithm is not None:
            query = query.where(KeyVersion.algorithm == Algorithm(algorithm).value)
        if status is not None:
            query = query.where(KeyVersion.status == KeyStatus(status).value)
        query = query.order_by(col(KeyVersion.algorithm), col(KeyVersion.version))
        async with self._session(write=False) as session:
            rows = (await session.exec(query)).all()
        return [_key_record(row) for row in rows]

    async def get_key(self, tenant_id: str, algorithm: Algorithm, version: int) -> KeyRecord | None:
        """One key version of the tenant, or ``None``."""
        async with self._session(write=False) as session:
            row = await self._find_version(session, tenant_id, algorithm, version)
        return None if row is None else _key_record(row)

    async def get_key_status(
        self, tenant_id: str, algorithm: Algorithm, version: int
    ) -> KeyStatus | None:
        """The current status of one key version of the tenant, or ``None``.

        Checked before every crypto operation, so read through the cheapest path the
        backend allows: on a SQLite file, remembered while no process changed a status
        (``worker.store.key_state``); else one statement per call.
        """
        algorithm_name = algorithm.value if isinstance(algorithm, Algorithm) else (
            Algorithm(algorithm).value)
        if self._status_reader is not None:
            return await self._sqlite_status(tenant_id, algorithm_name, version)
        if database.is_sqlite(self._engine):
            # No synchronous reader (e.g. in-memory): stay on the session path, whose
            # connections get SQLite's begin hook.
            record = await self.get_key(tenant_id, algorithm, version)
            return None if record is None else record.status
        found = await self._pg_status(tenant_id, algorithm_name, version)
        return None if found is None else KeyStatus(found)

    async def _sqlite_status(self, tenant_id: str, algorithm: str,
                             version: int) -> KeyStatus | None:
        """The remembered status while no process changed one, else the reader's."""
        assert self._status_reader is not None
        cache, key = self._status_cache, (tenant_id, algorithm, version)
        token: bytes | None = None
        if cache is not None:
            remembered, token = cache.lookup(key)
            if remembered is not None:
                return remembered
        try:
            text = self._status_reader.status(tenant_id, algorithm, version)
        except sqlite3.Error:
            # Busy or unreadable: drop the reader's connection, take the async path.
            self._status_reader.close()
            record = await self.get_key(tenant_id, Algorithm(algorithm), version)
            status = None if record is None else record.status
        else:
            status = None if text is None else _STATUSES.get(text) or KeyStatus(text)
        if cache is not None and status is not None:
            cache.remember(key, status, token)
        return status

    def _statuses_changed(self) -> None:
        """After a transaction that may have changed statuses: every process's
        remembered statuses are stale (called once it committed, before answering)."""
        if self._status_cache is not None:
            self._status_cache.changed()

    async def _pg_status(self, tenant_id: str, algorithm: str, version: int) -> str | None:
        """One statement on the driver connection: no ORM, no BEGIN/ROLLBACK round trips
        (asyncpg runs it in its own implicit transaction, so it sees every commit).

        The status engine skips the pre-ping round trip; a connection found dead is
        invalidated and the read retried once on a fresh one.
        """
        engine = self._status_engine or self._engine
        for attempt in (1, 2):
            async with engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None  # a checked-out connection has its driver's
                try:
                    found = await driver.fetchval(
                        _PG_STATUS_QUERY, tenant_id, algorithm, version
                    )
                except _PG_CONNECTION_ERRORS:
                    await conn.invalidate()
                    if attempt == 2:
                        raise
                    continue
            return None if found is None else str(found)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_active_key(self, tenant_id: str, algorithm: Algorithm) -> KeyRecord | None:
        """The tenant's active version for an algorithm, or ``None``."""
        async with self._session(write=False) as session:
            row = await self._find_active(session, tenant_id, algorithm)
        return None if row is None else _key_record(row)

    async def load_seed(
        self, tenant_id: str, algorithm: Algorithm, version: int
    ) -> tuple[KeyRecord, bytes] | None:
        """A key version and its unwrapped private seed, or ``None`` if there is no such
        version. Whether its status allows the operation is the caller's decision."""
        async def read() -> KeyVersion | None:
            async with self._session(write=False) as session:
                return await self._find_version(session, tenant_id, algorithm, version)

        row = await read()
        if row is None:
            return None
        master = self._keyring.key_for(row.kek_id)
        if master is None:
            # key_for re-read the keyring file (rate-limited) and still lacks that KEK;
            # read the row again too, in case a rotation moved it meanwhile.
            row = await read()
            if row is None:
                return None
            master = self._keyring.key_for(row.kek_id)
            if master is None:
                raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE, _MISSING_KEK_MESSAGE)
        aad = seed_aad(row.tenant_id, row.algorithm, row.version, row.kek_id)
        try:
            seed = unwrap_seed(master, row.seed_nonce, row.wrapped_seed, aad)
        except SeedIntegrityError:
            raise ServiceError(
                ErrorCode.INTERNAL, "Stored key material failed its integrity check"
            ) from None
        return _key_record(row), seed

    @staticmethod
    async def _find_version(
        session: AsyncSession, tenant_id: str, algorithm: Algorithm, version: int
    ) -> KeyVersion | None:
        query = select(KeyVersion).where(
            KeyVersion.tenant_id == tenant_id,
            KeyVersion.algorithm == Algorithm(algorithm).value,
            KeyVersion.version == version,
        )
        return (await session.exec(query)).first()

    @staticmethod
    async def _find_active(
        session: AsyncSession, tenant_id: str, algorithm: Algorithm
    ) -> KeyVersion | None:
        query = select(KeyVersion).where(
            KeyVersion.tenant_id == tenant_id,
            KeyVersion.algorithm == Algorithm(algorithm).value,
            KeyVersion.status == KeyStatus.ACTIVE.value,
        )
        return (await session.exec(query)).first()

    # -- lifecycle --------------------------------------------------------------------

    async def generate_first(
        self,
        tenant_id: str,
        algorithm: Algorithm,
        material: NewKeyMaterial,
        max_versions: int | None,
    ) -> KeyRecord:
        """Create the next version as active when the tenant has no active one.

        Raises ``ERR_KMS_004`` if an active version exists and ``ERR_FORBIDDEN_001`` over
        the plan's cap of non-archived versions.
        """
        algorithm = Algorithm(algorithm)

        async def operation(session: AsyncSession) -> KeyRecord:
            await self._lock_tenant(session, tenant_id)
            versions = await self._versions(session, tenant_id, algorithm)
            active = [v for v, s in versions if s == KeyStatus.ACTIVE]
            if active:
                raise ServiceError(
                    ErrorCode.KMS_ACTIVE_KEY_EXISTS,
                    f"An active {algorithm} key already exists (version {active[0]}); "
                    "use rotate to create a new version",
                )
            self._check_cap(versions, algorithm, max_versions)
            return await self._insert_active(session, tenant_id, algorithm, versions, material)

        return await self._write(operation)

    async def rotate(
        self,
        tenant_id: str,
        algorithm: Algorithm,
        material: NewKeyMaterial,
        max_versions: int | None,
        expected_active_version: int | None = None,
    ) -> tuple[KeyRecord, int]:
        """Retire the active version and create the next one as active, in one transaction.

        Returns the new record and the previous active version number. With
        ``expected_active_version``, rotate only if that version is still the active one,
        else change nothing and raise :class:`ActiveVersionChanged` (so several
        schedulers racing on one due key rotate it once).
        """
        algorithm = Algorithm(algorithm)

        async def operation(session: AsyncSession) -> tuple[KeyRecord, int]:
            await self._lock_tenant(session, tenant_id)
            versions = await self._versions(session, tenant_id, algorithm)
            old = await self._find_active(session, tenant_id, algorithm)
            if expected_active_version is not None and (
                old is None or old.version != expected_active_version
            ):
                raise ActiveVersionChanged(
                    expected_active_version, None if old is None else old.version
                )
            if old is None:
                raise ServiceError(
                    ErrorCode.KMS_KEY_NOT_FOUND,
                    f"No active {algorithm} key to rotate; generate one first",
                )
            self._check_cap(versions, algorithm, max_versions)
            old.status = KeyStatus.RETIRED.value
            old.status_changed_at = utc_now()
            session.add(old)
            # The retirement must reach the database before the insert, or the partial
            # unique index would see two active rows.
            await session.flush()
            record = await self._insert_active(session, tenant_id, algorithm, versions, material)
            return record, old.version

        try:
            return await self._write(operation)
        finally:
            self._statuses_changed()

    async def retire(self, tenant_id: str, algorithm: Algorithm, version: int) -> KeyRecord:
        """Move a version to ``retired`` (decrypt and verify only). Retired: unchanged."""
        change = await self.change_status(tenant_id, algorithm, version, KeyStatus.RETIRED)
        return change.record

    async def archive(self, tenant_id: str, algorithm: Algorithm, version: int) -> KeyRecord:
        """Move a non-active version to ``archived`` (no operations). Archived: unchanged."""
        change = await self.change_status(tenant_id, algorithm, version, KeyStatus.ARCHIVED)
        return change.record

    async def change_status(
        self, tenant_id: str, algorithm: Algorithm, version: int, target: KeyStatus
    ) -> StatusChange:
        """Retire or archive a version, saying whether this call changed it (of two
        concurrent calls only one does)."""
        algorithm = Algorithm(algorithm)
        action = "retire" if target == KeyStatus.RETIRED else "archive"

        async def operation(session: AsyncSession) -> StatusChange:
            await self._lock_tenant(session, tenant_id, missing=_not_found(algorithm, version))
            row = await self._find_version(session, tenant_id, algorithm, version)
            if row is None:
                raise _not_found(algorithm, version)
            current = KeyStatus(row.status)
            if current == KeyStatus.ACTIVE:
                raise ServiceError(
                    ErrorCode.KMS_CANNOT_RETIRE_ACTIVE,
                    f"Cannot {action} the active key version {version}; "
                    "rotate to a new version first",
                )
            if current == target:
                return StatusChange(_key_record(row), changed=False)
            if current == KeyStatus.ARCHIVED:
                raise ServiceError(
                    ErrorCode.FORBIDDEN,
                    f"Key version {version} is archived; archived keys cannot change state",
                )
            row.status = target.value
            row.status_changed_at = utc_now()
            session.add(row)
            await session.flush()
            return StatusChange(_key_record(row), changed=True)

        try:
            return await self._write(operation)
        finally:
            self._statuses_changed()

    @staticmethod
    async def _lock_tenant(
        session: AsyncSession, tenant_id: str, *, missing: ServiceError | None = None
    ) -> None:
        """Serialise writers of one tenant (FOR UPDATE is a no-op on SQLite, where
        BEGIN IMMEDIATE already holds the database write lock)."""
        query = select(Tenant.id).where(Tenant.id == tenant_id).with_for_update()
        if (await session.exec(query)).first() is None:
            raise missing or ServiceError(ErrorCode.NOT_FOUND, "Tenant not found")

    @staticmethod
    async def _versions(
        session: AsyncSession, tenant_id: str, algorithm: Algorithm
    ) -> list[tuple[int, KeyStatus]]:
        query = select(KeyVersion.version, KeyVersion.status).where(
            KeyVersion.tenant_id == tenant_id, KeyVersion.algorithm == algorithm.value
        )
        return [(version, KeyStatus(status)) for version, status in (await session.exec(query))]

    @staticmethod
    def _check_cap(
        versions: list[tuple[int, KeyStatus]], algorithm: Algorithm, max_versions: int | None
    ) -> None:
        if max_versions is None:
            return
        live = sum(1 for _, status in versions if status != KeyStatus.ARCHIVED)
        if live >= max_versions:
            raise ServiceError(
                ErrorCode.FORBIDDEN,
                f"Plan limit reached: at most {max_versions} non-archived {algorithm} "
                "key versions; archive an old version first",
            )

    async def _insert_active(
        self,
        session: AsyncSession,
        tenant_id: str,
        algorithm: Algorithm,
        versions: list[tuple[int, KeyStatus]],
        material: NewKeyMaterial,
    ) -> KeyRecord:
        version = max((v for v, _ in versions), default=0) + 1
        master = await self._wrapping_key(session)
        kek_id = master.kek_id
        nonce, wrapped = wrap_seed(
            master, material.seed, seed_aad(tenant_id, algorithm.value, version, kek_id)
        )
        now = utc_now()
        row = KeyVersion(
            tenant_id=tenant_id,
            algorithm=algorithm.value,
            version=version,
            status=KeyStatus.ACTIVE.value,
            public_key=material.public_key,
            wrapped_seed=wrapped,
            seed_nonce=nonce,
            kek_id=kek_id,
            created_at=now,
            status_changed_at=now,
        )
        session.add(row)
        await session.flush()
        return _key_record(row)

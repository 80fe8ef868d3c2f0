"""Master key (KEK) rotation: re-wrap every stored seed under a new primary key.

``pqkms master-key rotate`` runs :func:`rotate_master_key` while the workers serve:

1. choose the new primary (a fresh key, or the one key staged with ``master-key add``)
   and record its key-check value in the database;
2. replace the keyring file (atomically) with the new key as primary, the old one kept
   as ``previous`` so it still unwraps;
3. wait for inserts that chose the old primary to commit (:func:`wait_for_wrapping_writers`);
4. re-wrap, in small batches, every key version not under the new KEK. Each row is
   updated only if its KEK id and nonce are still the ones read (compare-and-swap), so a
   concurrent change is never overwritten; passes repeat until one finds nothing to
   move, which also catches rows a worker on the old primary inserted meanwhile.

:func:`prune_master_keys` then drops ``previous`` keys no row uses any more.

These queries span every tenant on purpose: re-wrapping is an operator task on the
whole database, and no tenant data leaves this module (seeds exist only in memory,
between unwrap and wrap).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col, select

from worker.store.database import WRITE_TRANSACTION
from worker.store.keyring import (
    KeyRole,
    MasterKeyring,
    keyring_file_lock,
    load_keyring,
    write_keyring_file,
)
from worker.store.master_key import (
    KEY_SIZE,
    MasterKey,
    MasterKeyMismatch,
    SeedIntegrityError,
    key_check_value,
    seed_aad,
    unwrap_seed,
    wrap_seed,
)
from worker.store.repository import KeyStore, UnrecordedPrimary
from worker.store.tables import (
    ROW_SCHEMA_VERSION,
    KeyVersion,
    MasterKeyCheck,
    SchemaInfo,
    utc_now,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "AddReport",
    "KekRotationError",
    "KeyringStatus",
    "PruneReport",
    "RewrapReport",
    "RotationReport",
    "WrappedSeedRow",
    "add_master_key",
    "forget_check_values",
    "kek_usage",
    "master_key_status",
    "prune_master_keys",
    "record_check_value",
    "rewrap_all",
    "rewrap_rows",
    "rotate_master_key",
    "rows_not_under",
    "wait_for_wrapping_writers",
]

DEFAULT_BATCH_SIZE = 100
# Passes over the table before giving up on rows that keep appearing under an old KEK
# (a worker whose keyring file still names the old primary).
DEFAULT_MAX_PASSES = 20
_WRITE_ATTEMPTS = 5
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialisation failure, deadlock


class KekRotationError(Exception):
    """A master-key command cannot proceed; the message says why (never key bytes)."""


@dataclass(frozen=True, slots=True)
class WrappedSeedRow:
    """The columns of one key version that re-wrapping reads and compares."""

    id: int
    tenant_id: str
    algorithm: str
    version: int
    kek_id: str
    seed_nonce: bytes = field(repr=False)
    wrapped_seed: bytes = field(repr=False)


@dataclass(slots=True)
class RewrapReport:
    """What re-wrapping did. ``skipped`` rows changed between read and update and were
    left alone (a later pass looks at them again); ``unreadable`` rows are under a KEK
    the keyring lacks or fail authentication; ``remaining`` rows are not under the
    target KEK at the end."""

    kek_id: str
    rewrapped: int = 0
    skipped: int = 0
    unreadable: int = 0
    passes: int = 0
    remaining: int = 0


@dataclass(frozen=True, slots=True)
class PruneReport:
    """Keys dropped from the keyring, and keys kept because rows still use them."""

    dropped: tuple[str, ...]
    kept_in_use: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What ``pqkms master-key rotate`` did; safe to print (ids and counts only)."""

    kek_id: str
    previous_kek_id: str
    generated: bool
    rewrap: RewrapReport
    pruned: PruneReport | None
    rows_by_kek_id: Mapping[str, int]

    def as_json_dict(self) -> dict[str, Any]:
        """The object the command prints."""
        return {
            "kek_id": self.kek_id,
            "previous_kek_id": self.previous_kek_id,
            "generated": self.generated,
            "rewrapped": self.rewrap.rewrapped,
            "skipped_concurrent": self.rewrap.skipped,
            "unreadable": self.rewrap.unreadable,
            "passes": self.rewrap.passes,
            "remaining_under_old_keys": self.rewrap.remaining,
            "pruned": None if self.pruned is None else list(self.pruned.dropped),
            "rows_by_kek_id": dict(self.rows_by_kek_id),
        }


@dataclass(frozen=True, slots=True)
class AddReport:
    """A key staged with ``pqkms master-key add``."""

    kek_id: str
    primary_kek_id: str

    def as_json_dict(self) -> dict[str, Any]:
        """The object the command prints."""
        return {"kek_id": self.kek_id, "role": KeyRole.NEXT.value, "primary": self.primary_kek_id}


@dataclass(frozen=True, slots=True)
class KeyringStatus:
    """The keyring against the database: roles, rows per KEK, recorded check values."""

    keyring_file: Path
    keyring: MasterKeyring
    rows_by_kek_id: Mapping[str, int]
    recorded_kek_ids: frozenset[str]

    def as_json_dict(self) -> dict[str, Any]:
        """The object ``pqkms master-key status`` prints."""
        keys = [
            {
                "kek_id": kek_id,
                "role": str(self.keyring.role_of(kek_id)),
                "rows": self.rows_by_kek_id.get(kek_id, 0),
                "check_value_recorded": kek_id in self.recorded_kek_ids,
            }
            for kek_id in self.keyring.kek_ids
        ]
        missing = {
            kek_id: count
            for kek_id, count in self.rows_by_kek_id.items()
            if self.keyring.get(kek_id) is None
        }
        return {
            "keyring_file": str(self.keyring_file),
            "primary": self.keyring.primary.kek_id,
            "keys": keys,
            "rows_under_keys_not_in_keyring": missing,
        }


# -- database steps -------------------------------------------------------------------


def _is_transient(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if sqlstate in _TRANSIENT_SQLSTATES:
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


@asynccontextmanager
async def _write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
    async with engine.connect() as conn:
        await conn.execution_options(**{WRITE_TRANSACTION: True})
        async with conn.begin():
            yield conn


async def kek_usage(engine: AsyncEngine) -> dict[str, int]:
    """How many key versions each KEK id wraps."""
    query = select(KeyVersion.kek_id, func.count()).group_by(col(KeyVersion.kek_id))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {str(kek_id): int(count) for kek_id, count in rows}


async def record_check_value(engine: AsyncEngine, key: MasterKey) -> None:
    """Record ``key``'s key-check value unless the database already has it; a different
    value under the same id is refused (:class:`MasterKeyMismatch`)."""
    expected = key_check_value(key)
    async with _write_transaction(engine) as conn:
        query = select(MasterKeyCheck.check_value).where(MasterKeyCheck.kek_id == key.kek_id)
        found = (await conn.execute(query)).scalar_one_or_none()
        if found is None:
            await conn.execute(
                insert(MasterKeyCheck).values(
                    kek_id=key.kek_id,
                    check_value=expected,
                    created_at=utc_now(),
                    schema_version=ROW_SCHEMA_VERSION,
                )
            )
        elif not hmac.compare_digest(bytes(found), expected):
            raise MasterKeyMismatch(f"Key {key.kek_id} has another check value in the database")


async def forget_check_values(engine: AsyncEngine, kek_ids: Iterable[str]) -> None:
    """Delete the key-check values of keys dropped from the keyring, so a worker started
    with an old keyring whose primary is one of them refuses to start."""
    ids = list(kek_ids)
    if not ids:
        return
    async with _write_transaction(engine) as conn:
        await conn.execute(delete(MasterKeyCheck).where(col(MasterKeyCheck.kek_id).in_(ids)))


async def wait_for_wrapping_writers(engine: AsyncEngine) -> None:
    """Return once every insert that may have chosen the previous primary has ended.

    Workers read the schema-info row ``FOR SHARE`` before they look at the keyring file
    for a new key version (see ``KeyStore._wrapping_key``); taking it ``FOR UPDATE``
    waits for them. On SQLite the ``BEGIN IMMEDIATE`` write lock does the same.
    """
    async with _write_transaction(engine) as conn:
        await conn.execute(select(SchemaInfo.id).where(SchemaInfo.id == 1).with_for_update())


async def rows_not_under(
    engine: AsyncEngine, kek_id: str, *, after_id: int = 0, limit: int = DEFAULT_BATCH_SIZE
) -> list[WrappedSeedRow]:
    """Up to ``limit`` key versions not wrapped under ``kek_id``, by id after ``after_id``."""
    query = (
        # SQLAlchemy's select: SQLModel's types stop at four columns.
        sa_select(
            col(KeyVersion.id),
            col(KeyVersion.tenant_id),
            col(KeyVersion.algorithm),
            col(KeyVersion.version),
            col(KeyVersion.kek_id),
            col(KeyVersion.seed_nonce),
            col(KeyVersion.wrapped_seed),
        )
        .where(col(KeyVersion.kek_id) != kek_id, col(KeyVersion.id) > after_id)
        .order_by(col(KeyVersion.id))
        .limit(limit)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        WrappedSeedRow(
            id=int(row_id or 0), tenant_id=tenant_id, algorithm=algorithm, version=int(version),
            kek_id=row_kek_id, seed_nonce=bytes(nonce), wrapped_seed=bytes(wrapped),
        )
        for row_id, tenant_id, algorithm, version, row_kek_id, nonce, wrapped in rows
    ]


async def rewrap_rows(
    engine: AsyncEngine, keyring: MasterKeyring, target: MasterKey, rows: Sequence[WrappedSeedRow]
) -> RewrapReport:
    """Re-wrap ``rows`` under ``target`` in one transaction, each with a compare-and-swap
    on its old KEK id and nonce. Counts only (``passes`` and ``remaining`` stay 0)."""
    report = RewrapReport(kek_id=target.kek_id)
    updates: list[tuple[WrappedSeedRow, bytes, bytes]] = []
    for row in rows:
        old = keyring.get(row.kek_id)
        if old is None:
            report.unreadable += 1
            continue
        try:
            seed = unwrap_seed(
                old, row.seed_nonce, row.wrapped_seed,
                seed_aad(row.tenant_id, row.algorithm, row.version, row.kek_id),
            )
        except SeedIntegrityError:
            report.unreadable += 1
            continue
        nonce, wrapped = wrap_seed(
            target, seed, seed_aad(row.tenant_id, row.algorithm, row.version, target.kek_id)
        )
        updates.append((row, nonce, wrapped))
    if not updates:
        return report
    for attempt in range(1, _WRITE_ATTEMPTS + 1):
        rewrapped = skipped = 0
        try:
            async with _write_transaction(engine) as conn:
                for row, nonce, wrapped in updates:
                    result = await conn.execute(
                        update(KeyVersion)
                        .where(
                            col(KeyVersion.id) == row.id,
                            col(KeyVersion.tenant_id) == row.tenant_id,
                            col(KeyVersion.kek_id) == row.kek_id,
                            col(KeyVersion.seed_nonce) == row.seed_nonce,
                        )
                        .values(wrapped_seed=wrapped, seed_nonce=nonce, kek_id=target.kek_id)
                    )
                    if result.rowcount == 1:
                        rewrapped += 1
                    else:
                        skipped += 1
        except DBAPIError as exc:
            # Rolled back: every compare-and-swap can simply run again.
            if attempt == _WRITE_ATTEMPTS or not _is_transient(exc):
                raise
            await asyncio.sleep(secrets.randbelow(50 * attempt) / 1000)
            continue
        report.rewrapped, report.skipped = rewrapped, skipped
        return report
    raise AssertionError("unreachable")  # pragma: no cover


async def rewrap_all(
    engine: AsyncEngine,
    keyring: MasterKeyring,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_passes: int = DEFAULT_MAX_PASSES,
) -> RewrapReport:
    """Re-wrap every key version not under the keyring's primary, batch by batch, pass
    after pass until a pass moves nothing (or ``max_passes``)."""
    target = keyring.primary
    report = RewrapReport(kek_id=target.kek_id)
    for _ in range(max_passes):
        report.passes += 1
        report.unreadable = 0  # as found by the last pass
        touched = 0
        after_id = 0
        while rows := await rows_not_under(
            engine, target.kek_id, after_id=after_id, limit=batch_size
        ):
            after_id = rows[-1].id
            batch = await rewrap_rows(engine, keyring, target, rows)
            report.rewrapped += batch.rewrapped
            report.skipped += batch.skipped
            report.unreadable += batch.unreadable
            touched += batch.rewrapped + batch.skipped
        if touched == 0:
            break
    usage = await kek_usage(engine)
    report.remaining = sum(n for kek_id, n in usage.items() if kek_id != target.kek_id)
    return report


# -- operator commands ----------------------------------------------------------------


@asynccontextmanager
async def _opened(
    keyring_file: Path,
    database_url: str,
    connect_args: Mapping[str, Any] | None,
    *,
    lock: bool = True,
    unrecorded_primary: UnrecordedPrimary = UnrecordedPrimary.REFUSE,
) -> AsyncIterator[tuple[MasterKeyring, KeyStore]]:
    """The keyring (under the keyring-file lock) and a store that accepted it.

    ``unrecorded_primary``: whether a database that predates the keyring's primary is
    opened (see :class:`~worker.store.repository.UnrecordedPrimary`).
    """
    with keyring_file_lock(keyring_file) if lock else contextlib.nullcontext():
        keyring = load_keyring(keyring_file)
        store = await KeyStore.open(
            database_url, keyring, create_schema=False, connect_args=connect_args,
            unrecorded_primary=unrecorded_primary,
        )
        try:
            yield keyring, store
        finally:
            await store.close()


def _rotation_target(keyring: MasterKeyring, kek_id: str | None) -> tuple[MasterKey, bool]:
    """The key to make primary and whether it was generated now."""
    if kek_id is not None:
        key = keyring.get(kek_id)
        if key is None:
            raise KekRotationError(f"The keyring has no key {kek_id}")
        return key, False
    if len(keyring.next) == 1:
        # A key staged with `master-key add` is the one every machine already holds.
        return keyring.next[0], False
    if keyring.next:
        staged = ", ".join(key.kek_id for key in keyring.next)
        raise KekRotationError(f"Several staged keys ({staged}): choose one with --kek-id")
    return MasterKey(secrets.token_bytes(KEY_SIZE)), True


async def rotate_master_key(
    keyring_file: Path,
    database_url: str,
    *,
    kek_id: str | None = None,
    rewrap_only: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retire_old: bool = False,
    max_passes: int = DEFAULT_MAX_PASSES,
    connect_args: Mapping[str, Any] | None = None,
    adopt_primary: str | None = None,
) -> RotationReport:
    """Make a new key primary and re-wrap every seed under it (see the module docstring).

    The new primary is ``kek_id`` when given (a key already in the keyring; if it is
    already primary, this only re-wraps), else the one staged ``next`` key, else a fresh
    key; with ``rewrap_only`` it is the current primary (finishing a rotation). With
    ``retire_old``, keys no row uses any more are then pruned.

    A database that predates the keyring's primary (restored from a backup taken before
    a rotation) is taken only when ``adopt_primary`` names that primary, and the keyring
    also holds keys of that database and every key its rows use: the primary's check
    value is recorded first, as for a new key. Never without the operator naming it: a
    copy of this keyring rotated elsewhere (a staging machine's) would pass the same
    test, and re-wrapping under its primary would leave the database unreadable with
    its own keyring.
    """
    keyring_file = Path(keyring_file)
    unrecorded = UnrecordedPrimary.REFUSE
    if adopt_primary is not None:
        primary = load_keyring(keyring_file).primary.kek_id
        if adopt_primary != primary:
            raise KekRotationError(
                f"--adopt-primary names {adopt_primary}, but the keyring's primary is "
                f"{primary}: nothing was changed"
            )
        unrecorded = UnrecordedPrimary.RECORD
    async with _opened(keyring_file, database_url, connect_args,
                       unrecorded_primary=unrecorded) as (keyring, store):
        if rewrap_only:
            target, generated = keyring.primary, False
        else:
            target, generated = _rotation_target(keyring, kek_id)
        await record_check_value(store.engine, target)
        rotated = keyring.promoted(target)
        if rotated != keyring:
            write_keyring_file(keyring_file, rotated)
        await wait_for_wrapping_writers(store.engine)
        rewrap = await rewrap_all(
            store.engine, rotated, batch_size=batch_size, max_passes=max_passes
        )
        pruned = None
        if retire_old and rewrap.remaining == 0:
            pruned = await _prune(keyring_file, store.engine, rotated, None)
        usage = await kek_usage(store.engine)
    return RotationReport(
        kek_id=target.kek_id,
        previous_kek_id=keyring.primary.kek_id,
        generated=generated,
        rewrap=rewrap,
        pruned=pruned,
        rows_by_kek_id=usage,
    )


async def add_master_key(
    keyring_file: Path, database_url: str, *, connect_args: Mapping[str, Any] | None = None
) -> AddReport:
    """Generate a key and stage it as ``next``: it unwraps everywhere the file is copied
    to, and the next ``rotate`` makes it primary."""
    keyring_file = Path(keyring_file)
    async with _opened(keyring_file, database_url, connect_args) as (keyring, store):
        key = MasterKey(secrets.token_bytes(KEY_SIZE))
        await record_check_value(store.engine, key)
        write_keyring_file(keyring_file, keyring.with_next(key))
    return AddReport(kek_id=key.kek_id, primary_kek_id=keyring.primary.kek_id)


async def prune_master_keys(
    keyring_file: Path,
    database_url: str,
    *,
    kek_ids: Sequence[str] | None = None,
    connect_args: Mapping[str, Any] | None = None,
) -> PruneReport:
    """Drop ``previous`` keys that no key version uses (or exactly ``kek_ids``, refusing
    if any of them still wraps a row)."""
    keyring_file = Path(keyring_file)
    async with _opened(keyring_file, database_url, connect_args) as (keyring, store):
        return await _prune(keyring_file, store.engine, keyring, kek_ids)


async def _prune(
    keyring_file: Path,
    engine: AsyncEngine,
    keyring: MasterKeyring,
    kek_ids: Sequence[str] | None,
) -> PruneReport:
    if kek_ids is None:
        candidates = [key.kek_id for key in keyring.previous]
    else:
        candidates = list(dict.fromkeys(kek_ids))
        for kek_id in candidates:
            if keyring.get(kek_id) is None:
                raise KekRotationError(f"The keyring has no key {kek_id}")
            if kek_id == keyring.primary.kek_id:
                raise KekRotationError(f"Key {kek_id} is the primary; rotate away from it first")
    usage = await kek_usage(engine)
    in_use = [kek_id for kek_id in candidates if usage.get(kek_id, 0) > 0]
    if kek_ids is not None and in_use:
        raise KekRotationError(_still_used_message(in_use, usage))
    drop = [kek_id for kek_id in candidates if kek_id not in in_use]
    if drop:
        write_keyring_file(keyring_file, keyring.without(drop))
        await forget_check_values(engine, drop)
        # A worker whose keyring file still names a dropped key as primary may have
        # inserted under it meanwhile: put such keys back rather than strand the rows.
        usage = await kek_usage(engine)
        late = [kek_id for kek_id in drop if usage.get(kek_id, 0) > 0]
        if late:
            write_keyring_file(keyring_file, keyring.without(set(drop) - set(late)))
            for kek_id in late:
                key = keyring.get(kek_id)
                assert key is not None  # it came from this keyring
                await record_check_value(engine, key)
            raise KekRotationError(
                _still_used_message(late, usage)
                + " (new rows: a worker still wraps under it; give every worker the "
                "current keyring, run rotate again, then prune)"
            )
    return PruneReport(dropped=tuple(drop), kept_in_use=tuple(in_use))


def _still_used_message(kek_ids: Sequence[str], usage: Mapping[str, int]) -> str:
    counts = ", ".join(f"{kek_id} wraps {usage.get(kek_id, 0)} key versions" for kek_id in kek_ids)
    return f"Master key still in use: {counts}; run 'pqkms master-key rotate' first"


async def master_key_status(
    keyring_file: Path, database_url: str, *, connect_args: Mapping[str, Any] | None = None
) -> KeyringStatus:
    """The keyring's keys, their roles and how many key versions each wraps.

    Also for a database that predates the keyring's primary (its check value then shows
    as not recorded); nothing is written.
    """
    keyring_file = Path(keyring_file)
    # Read-only: no lock, so status works while a rotation runs.
    async with _opened(keyring_file, database_url, connect_args, lock=False,
                       unrecorded_primary=UnrecordedPrimary.ACCEPT) as (keyring, store):
        usage = await kek_usage(store.engine)
        async with store.engine.connect() as conn:
            recorded = (await conn.execute(select(MasterKeyCheck.kek_id))).scalars().all()
    return KeyringStatus(
        keyring_file=keyring_file,
        keyring=keyring,
        rows_by_kek_id=usage,
        recorded_kek_ids=frozenset(str(kek_id) for kek_id in recorded),
    )

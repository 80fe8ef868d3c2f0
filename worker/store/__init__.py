"""Key persistence: SQLModel tables on SQLite (WAL) or PostgreSQL, seeds wrapped under a KEK."""

from __future__ import annotations

from worker.store.database import create_engine_for, create_schema
from worker.store.keyring import KeyringFile, KeySource, MasterKeyring, load_keyring
from worker.store.master_key import (
    MasterKey,
    MasterKeyError,
    MasterKeyMismatch,
    SeedIntegrityError,
    key_check_value,
    load_or_create_master_key,
    master_key_from_base64,
    seed_aad,
    unwrap_seed,
    wrap_seed,
)
from worker.store.repository import (
    KeyRecord,
    KeyStore,
    NewKeyMaterial,
    SchemaTooNew,
    StatusChange,
    TenantExists,
    TenantRecord,
)

__all__ = [
    "KeyRecord",
    "KeySource",
    "KeyStore",
    "KeyringFile",
    "MasterKey",
    "MasterKeyError",
    "MasterKeyMismatch",
    "MasterKeyring",
    "NewKeyMaterial",
    "SchemaTooNew",
    "SeedIntegrityError",
    "StatusChange",
    "TenantExists",
    "TenantRecord",
    "create_engine_for",
    "create_schema",
    "key_check_value",
    "load_keyring",
    "load_or_create_master_key",
    "master_key_from_base64",
    "seed_aad",
    "unwrap_seed",
    "wrap_seed",
]

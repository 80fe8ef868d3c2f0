"""Resolve a tenant's key version for an operation: existence, state policy, cached material.

States: ``active`` allows everything, ``retired`` only recovering operations (decrypt,
decapsulate, unwrap, verify), ``archived`` nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

import structlog

from schemas.algorithms import KEM_ALGORITHMS, Algorithm, KeyStatus
from schemas.errors import ErrorCode
from worker.crypto import (
    KemKey,
    SignatureKey,
    UnsupportedAlgorithm,
    kem_algorithm,
    load_public_spki,
    signature_algorithm,
)
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.key_material import BoundedCache

if TYPE_CHECKING:
    from worker.store import KeyRecord, KeyStore

__all__ = ["KeyAccess", "Usage", "check_status", "check_usable"]

_log = structlog.get_logger("pqkms.worker")

T = TypeVar("T")
LoadedT = TypeVar("LoadedT", bound="KemKey | SignatureKey")
CacheKey = tuple[str, Algorithm, int]


class Usage(Enum):
    """What an operation does with the key."""

    PROTECT = "protect"  # encrypt, encapsulate, wrap, sign: active keys only
    RECOVER = "recover"  # decrypt, decapsulate, unwrap, verify: active or retired


def check_usable(record: KeyRecord, usage: Usage) -> None:
    """Raise 403 when the key's state forbids this use."""
    check_status(record.status, record.algorithm, record.version, usage)


def check_status(status: KeyStatus, algorithm: Algorithm, version: int, usage: Usage) -> None:
    """Raise 403 when ``status`` forbids this use of the key version."""
    if status is KeyStatus.ACTIVE:
        return
    name = f"Key version {version} of {algorithm.value}"
    if status is KeyStatus.ARCHIVED:
        raise ServiceError(
            ErrorCode.FORBIDDEN, f"{name} is archived: archived keys cannot be used"
        )
    if status is KeyStatus.RETIRED and usage is Usage.PROTECT:
        raise ServiceError(
            ErrorCode.FORBIDDEN,
            f"{name} is retired: retired keys can only decrypt and verify",
        )


class KeyAccess:
    """Finds key versions and hands out loaded key objects."""

    def __init__(self, store: KeyStore, max_cached_keys: int = 1024) -> None:
        self._store = store
        self._kem_keys: BoundedCache[CacheKey, KemKey] = BoundedCache(
            max_cached_keys
        )
        self._signature_keys: BoundedCache[CacheKey, SignatureKey] = (
            BoundedCache(max_cached_keys)
        )
        # Public keys shown to belong to their version's private seed (by SPKI DER).
        self._checked_public_keys: BoundedCache[CacheKey, bytes] = BoundedCache(
            max_cached_keys
        )

    async def _loaded(
        self,
        cache: BoundedCache[CacheKey, LoadedT],
        load: Callable[[bytes], LoadedT],
        caller: Caller,
        algorithm: Algorithm,
        version: int,
        usage: Usage,
        not_found: ErrorCode,
    ) -> LoadedT:
        # The state comes from the store on every call (which may remember it until
        # a status changes, worker.store.key_state); here only the expanded key
        # object is cached. A cached key costs one status lookup; a miss reads the row
        # once (status and seed together).
        tenant_id = caller.tenant_id
        cache_key = (tenant_id, algorithm, version)
        key = cache.get(cache_key)
        if key is not None:
            status = await self._store.get_key_status(tenant_id, algorithm, version)
            if status is None:
                cache.discard(cache_key)
                raise _not_found(not_found, algorithm, version)
            check_status(status, algorithm, version, usage)
            return key
        loaded = await self._store.load_seed(tenant_id, algorithm, version)
        if loaded is None:
            raise _not_found(not_found, algorithm, version)
        record, seed = loaded
        check_usable(record, usage)
        key = load(seed)
        self._check_public_key(record, key.public_key_spki)
        cache.put(cache_key, key)
        return key

    def _check_public_key(self, record: KeyRecord, derived_spki: bytes) -> None:
        """Refuse a row whose stored public key is not the one its seed gives."""
        cache_key = (record.tenant_id, record.algorithm, record.version)
        if not hmac.compare_digest(derived_spki, record.public_key):
            self._checked_public_keys.discard(cache_key)
            _log.error(
                "key_public_key_mismatch", tenant_id=record.tenant_id,
                algorithm=record.algorithm.value, key_version=record.version,
            )
            raise ServiceError(
                ErrorCode.INTERNAL, "Stored key material failed its integrity check"
            )
        self._checked_public_keys.put(cache_key, derived_spki)

    async def checked(self, record: KeyRecord) -> KeyRecord:
        """``record``, once its stored public key is shown to belong to its seed.

        The seed is sealed with its tenant, algorithm and version as associated data;
        the public key column is not sealed. Without this check someone who can write
        the database but lacks the master key could swap in a public key of their own:
        clients would encrypt to it and verify with it while the service went on
        decrypting and signing as before. The first check of a version in a worker
        unwraps and expands its seed once; later ones compare with what was derived.
        """
        cache_key = (record.tenant_id, record.algorithm, record.version)
        derived = self._checked_public_keys.get(cache_key)
        if derived is None:
            derived = await self._derive_public_key(record)
            if derived is None:
                return record
        self._check_public_key(record, derived)
        return record

    async def _derive_public_key(self, record: KeyRecord) -> bytes | None:
        algorithm = record.algorithm
        try:
            if algorithm not in KEM_ALGORITHMS:
                signature_algorithm(algorithm)
        except UnsupportedAlgorithm:
            return None  # this deployment cannot load it, so it cannot use it either
        loaded = await self._store.load_seed(record.tenant_id, algorithm, record.version)
        if loaded is None:
            return None
        return load_public_spki(algorithm, loaded[1])

    async def kem_key(
        self, caller: Caller, algorithm: Algorithm, version: int, usage: Usage
    ) -> KemKey:
        """A usable KEM key version, or the right 404/403."""
        # An algorithm this deployment cannot serve is a 400 before any key lookup.
        provider = _supported(lambda: kem_algorithm(algorithm))
        return await self._loaded(self._kem_keys, provider.load, caller, algorithm, version,
                                  usage, ErrorCode.KEM_KEY_NOT_FOUND)

    async def signature_key(
        self, caller: Caller, algorithm: Algorithm, version: int, usage: Usage
    ) -> SignatureKey:
        """A usable signature key version, or the right 404/403."""
        provider = _supported(lambda: signature_algorithm(algorithm))
        return await self._loaded(self._signature_keys, provider.load, caller, algorithm,
                                  version, usage, ErrorCode.NOT_FOUND)

    def forget(self, tenant_id: str, algorithm: Algorithm, version: int) -> None:
        """Drop cached material of one version (after retire or archive)."""
        self._kem_keys.discard((tenant_id, algorithm, version))
        self._signature_keys.discard((tenant_id, algorithm, version))


def _not_found(code: ErrorCode, algorithm: Algorithm, version: int) -> ServiceError:
    return ServiceError(code, f"Key version {version} not found for {algorithm.value}")


def _supported(factory: Callable[[], T]) -> T:
    try:
        return factory()
    except UnsupportedAlgorithm as exc:
        raise ServiceError(ErrorCode.INVALID, f"Validation failed: {exc}") from None

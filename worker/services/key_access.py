"""Resolve a tenant's key version for an operation: existence, state policy, cached material.

States: ``active`` allows everything, ``retired`` only recovering operations (decrypt,
decapsulate, unwrap, verify), ``archived`` nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

from schemas.algorithms import Algorithm, KeyStatus
from schemas.errors import ErrorCode
from worker.crypto import (
    KemKey,
    SignatureKey,
    UnsupportedAlgorithm,
    kem_algorithm,
    signature_algorithm,
)
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.key_material import BoundedCache

if TYPE_CHECKING:
    from worker.store import KeyRecord, KeyStore

__all__ = ["KeyAccess", "Usage", "check_usable"]

T = TypeVar("T")
LoadedT = TypeVar("LoadedT")
CacheKey = tuple[str, Algorithm, int]


class Usage(Enum):
    """What an operation does with the key."""

    PROTECT = "protect"  # encrypt, encapsulate, wrap, sign: active keys only
    RECOVER = "recover"  # decrypt, decapsulate, unwrap, verify: active or retired


def check_usable(record: KeyRecord, usage: Usage) -> None:
    """Raise 403 when the key's state forbids this use."""
    name = f"Key version {record.version} of {record.algorithm.value}"
    if record.status is KeyStatus.ARCHIVED:
        raise ServiceError(
            ErrorCode.FORBIDDEN, f"{name} is archived: archived keys cannot be used"
        )
    if record.status is KeyStatus.RETIRED and usage is Usage.PROTECT:
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

    async def _usable_record(
        self,
        caller: Caller,
        algorithm: Algorithm,
        version: int,
        usage: Usage,
        not_found: ErrorCode,
    ) -> KeyRecord:
        record = await self._store.get_key(caller.tenant_id, algorithm, version)
        if record is None:
            raise ServiceError(
                not_found, f"Key version {version} not found for {algorithm.value}"
            )
        check_usable(record, usage)
        return record

    async def _seed(self, caller: Caller, algorithm: Algorithm, version: int,
                    not_found: ErrorCode) -> bytes:
        loaded = await self._store.load_seed(caller.tenant_id, algorithm, version)
        if loaded is None:
            raise ServiceError(
                not_found, f"Key version {version} not found for {algorithm.value}"
            )
        return loaded[1]

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
        # The state is read on every call; only the expanded key object is cached.
        await self._usable_record(caller, algorithm, version, usage, not_found)
        cache_key = (caller.tenant_id, algorithm, version)
        key = cache.get(cache_key)
        if key is None:
            key = load(await self._seed(caller, algorithm, version, not_found))
            cache.put(cache_key, key)
        return key

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


def _supported(factory: Callable[[], T]) -> T:
    try:
        return factory()
    except UnsupportedAlgorithm as exc:
        raise ServiceError(ErrorCode.INVALID, f"Validation failed: {exc}") from None

"""Key lifecycle: generate, list, active, get, rotate, retire, archive.

The state rules live in the store's transactions (so concurrent workers cannot break
them); this layer generates key material, applies plan caps and shapes results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas import keys
from schemas.algorithms import Algorithm
from schemas.envelope import utc_timestamp
from schemas.errors import ErrorCode
from schemas.fields import b64encode
from worker.config import Settings
from worker.crypto import UnsupportedAlgorithm, new_key
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.key_access import KeyAccess

if TYPE_CHECKING:
    from worker.store import KeyRecord, KeyStore, NewKeyMaterial

__all__ = ["KeyLifecycleService", "key_info"]


def key_info(record: KeyRecord) -> keys.KeyInfo:
    """The public view of a key version."""
    return keys.KeyInfo(
        key_version=record.version,
        algorithm=record.algorithm,
        status=record.status,
        public_key=b64encode(record.public_key),
        created_at=utc_timestamp(record.created_at),
    )


class KeyLifecycleService:
    """Key management for one deployment; every call is scoped to the caller's tenant."""

    def __init__(self, store: KeyStore, access: KeyAccess, settings: Settings) -> None:
        self._store = store
        self._access = access
        self._settings = settings

    def _material(self, algorithm: Algorithm) -> NewKeyMaterial:
        from worker.store import NewKeyMaterial

        try:
            generated = new_key(algorithm)
        except UnsupportedAlgorithm as exc:
            raise ServiceError(ErrorCode.INVALID, f"Validation failed: {exc}") from None
        return NewKeyMaterial(seed=generated.seed, public_key=generated.public_key_spki)

    def _max_versions(self, caller: Caller) -> int | None:
        return self._settings.limits_for(caller.plan).max_versions

    async def generate(self, caller: Caller, request: keys.GenerateKeyRequest) -> keys.KeyInfo:
        """The first active version (409 when one is already active)."""
        record = await self._store.generate_first(
            caller.tenant_id, request.algorithm, self._material(request.algorithm),
            self._max_versions(caller),
        )
        return key_info(record)

    async def list(self, caller: Caller, request: keys.ListKeysRequest) -> keys.KeyListResult:
        """Every version, optionally filtered by algorithm and status."""
        records = await self._store.list_keys(caller.tenant_id, request.algorithm, request.status)
        infos = [key_info(record) for record in records]
        return keys.KeyListResult(keys=infos, total=len(infos))

    async def active(self, caller: Caller, request: keys.ActiveKeyRequest) -> keys.KeyInfo:
        """The active version of an algorithm, or 404."""
        record = await self._store.get_active_key(caller.tenant_id, request.algorithm)
        if record is None:
            raise ServiceError(
                ErrorCode.KMS_KEY_NOT_FOUND,
                f"No active {request.algorithm.value} key; generate one first",
            )
        return key_info(record)

    async def get(self, caller: Caller, request: keys.GetKeyRequest) -> keys.KeyInfo:
        """One version, or 404."""
        record = await self._store.get_key(
            caller.tenant_id, request.algorithm, request.key_version
        )
        if record is None:
            raise ServiceError(
                ErrorCode.KMS_KEY_NOT_FOUND,
                f"Key version {request.key_version} not found for {request.algorithm.value}",
            )
        return key_info(record)

    async def rotate(self, caller: Caller, request: keys.RotateKeyRequest) -> keys.RotateResult:
        """A new active version; the previous active one is retired in the same transaction."""
        record, old_version = await self._store.rotate(
            caller.tenant_id, request.algorithm, self._material(request.algorithm),
            self._max_versions(caller),
        )
        return keys.RotateResult(**key_info(record).model_dump(), old_key_version=old_version)

    async def retire(self, caller: Caller, request: keys.RetireKeyRequest) -> keys.KeyInfo:
        """Retire a version: it can still decrypt and verify."""
        record = await self._store.retire(
            caller.tenant_id, request.algorithm, request.key_version
        )
        return key_info(record)

    async def archive(self, caller: Caller, request: keys.ArchiveKeyRequest) -> keys.KeyInfo:
        """Archive a retired version: it can do nothing any more."""
        record = await self._store.archive(
            caller.tenant_id, request.algorithm, request.key_version
        )
        self._access.forget(caller.tenant_id, request.algorithm, request.key_version)
        return key_info(record)

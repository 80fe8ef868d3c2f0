"""Key lifecycle: generate, list, active, get, rotate, retire, archive, rotation policy.

The state rules live in the store's transactions (so concurrent workers cannot break
them); this layer generates key material, applies plan caps, shapes results and, once
a change is committed, announces it as a key event (``schemas.events``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from schemas import keys
from schemas.algorithms import Algorithm, KeyStatus
from schemas.envelope import utc_timestamp
from schemas.errors import ErrorCode
from schemas.events import SCHEDULER_REQUEST_ID, KeyEvent, KeyEventType
from schemas.fields import b64encode
from schemas.rotation_policy import (
    GetRotationPolicyRequest,
    RotationPolicyInfo,
    SetRotationPolicyRequest,
    format_rotation_period,
)
from worker.config import Settings
from worker.crypto import UnsupportedAlgorithm, new_key
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.key_access import KeyAccess
from worker.services.key_events import NO_KEY_EVENTS, KeyEventPublisher

if TYPE_CHECKING:
    from worker.store import KeyRecord, KeyStore, NewKeyMaterial, StatusChange
    from worker.store.rotation_policies import DueKey, RotationPolicyRecord, RotationPolicyStore

__all__ = ["KeyLifecycleService", "key_info"]

_log = structlog.get_logger("pqkms.worker")


def key_info(record: KeyRecord) -> keys.KeyInfo:
    """The public view of a key version."""
    return keys.KeyInfo(
        key_version=record.version,
        algorithm=record.algorithm,
        status=record.status,
        public_key=b64encode(record.public_key),
        created_at=utc_timestamp(record.created_at),
    )


def _event(
    kind: KeyEventType, record: KeyRecord, moment: datetime, request_id: str,
    *, version: int | None = None, old_version: int | None = None,
) -> KeyEvent:
    """An event about ``record``'s key (about ``version`` of it when given)."""
    return KeyEvent(
        type=kind,
        tenant_id=record.tenant_id,
        algorithm=record.algorithm,
        key_version=record.version if version is None else version,
        old_key_version=old_version,
        occurred_at=utc_timestamp(moment),
        request_id=request_id,
    )


class KeyLifecycleService:
    """Key management for one deployment; every call is scoped to the caller's tenant.

    Events are published after the store's transaction commits. A failed publish is
    logged and does not fail the operation: the key change has happened, and an error
    reply would invite a retry that rotates a second time.
    """

    def __init__(
        self,
        store: KeyStore,
        access: KeyAccess,
        settings: Settings,
        events: KeyEventPublisher = NO_KEY_EVENTS,
        policies: RotationPolicyStore | None = None,
    ) -> None:
        from worker.store.rotation_policies import RotationPolicyStore

        self._store = store
        self._access = access
        self._settings = settings
        self._events = events
        self._policies = policies or RotationPolicyStore(store.engine)

    async def _announce_rotation(
        self, record: KeyRecord, old_version: int, request_id: str
    ) -> None:
        # A rotation changes two versions in one transaction: the new one is announced
        # as rotated, the one it replaces as retired (the only way a version is retired).
        await self._announce(_event(
            KeyEventType.ROTATED, record, record.created_at, request_id,
            old_version=old_version,
        ))
        await self._announce(_event(
            KeyEventType.RETIRED, record, record.created_at, request_id, version=old_version
        ))

    async def _announce(self, event: KeyEvent) -> None:
        try:
            await self._events.publish(event)
        except Exception as exc:
            _log.warning(
                "key_event_publish_failed", event_type=event.type.value,
                tenant_id=event.tenant_id, algorithm=event.algorithm.value,
                key_version=event.key_version, reason=type(exc).__name__,
            )

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
        await self._announce(
            _event(KeyEventType.GENERATED, record, record.created_at, caller.request_id)
        )
        return key_info(record)

    async def list(self, caller: Caller, request: keys.ListKeysRequest) -> keys.KeyListResult:
        """Every version, optionally filtered by algorithm and status."""
        records = await self._store.list_keys(caller.tenant_id, request.algorithm, request.status)
        infos = [key_info(await self._access.checked(record)) for record in records]
        return keys.KeyListResult(keys=infos, total=len(infos))

    async def active(self, caller: Caller, request: keys.ActiveKeyRequest) -> keys.KeyInfo:
        """The active version of an algorithm, or 404."""
        record = await self._store.get_active_key(caller.tenant_id, request.algorithm)
        if record is None:
            raise ServiceError(
                ErrorCode.KMS_KEY_NOT_FOUND,
                f"No active {request.algorithm.value} key; generate one first",
            )
        return key_info(await self._access.checked(record))

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
        return key_info(await self._access.checked(record))

    async def rotate(self, caller: Caller, request: keys.RotateKeyRequest) -> keys.RotateResult:
        """A new active version; the previous active one is retired in the same transaction."""
        record, old_version = await self._store.rotate(
            caller.tenant_id, request.algorithm, self._material(request.algorithm),
            self._max_versions(caller),
        )
        await self._announce_rotation(record, old_version, caller.request_id)
        return keys.RotateResult(**key_info(record).model_dump(), old_key_version=old_version)

    async def rotate_on_schedule(self, due: DueKey) -> keys.RotateResult | None:
        """Rotate a version the scheduler found due, if it is still the active one.

        ``None`` when it no longer is (another worker, or the tenant, rotated first).
        Raises ``ServiceError`` when the rotation is refused, e.g. by the plan's cap.
        """
        from worker.store.repository import ActiveVersionChanged

        try:
            record, old_version = await self._store.rotate(
                due.tenant_id, due.algorithm, self._material(due.algorithm),
                self._settings.limits_for(due.plan).max_versions,
                expected_active_version=due.version,
            )
        except ActiveVersionChanged:
            return None
        await self._announce_rotation(record, old_version, SCHEDULER_REQUEST_ID)
        return keys.RotateResult(**key_info(record).model_dump(), old_key_version=old_version)

    async def retire(self, caller: Caller, request: keys.RetireKeyRequest) -> keys.KeyInfo:
        """Retire a version: it can still decrypt and verify."""
        change = await self._store.change_status(
            caller.tenant_id, request.algorithm, request.key_version, KeyStatus.RETIRED
        )
        await self._announce_change(KeyEventType.RETIRED, change, caller)
        return key_info(await self._access.checked(change.record))

    async def archive(self, caller: Caller, request: keys.ArchiveKeyRequest) -> keys.KeyInfo:
        """Archive a retired version: it can do nothing any more."""
        change = await self._store.change_status(
            caller.tenant_id, request.algorithm, request.key_version, KeyStatus.ARCHIVED
        )
        self._access.forget(caller.tenant_id, request.algorithm, request.key_version)
        await self._announce_change(KeyEventType.ARCHIVED, change, caller)
        return key_info(await self._access.checked(change.record))

    async def _announce_change(
        self, kind: KeyEventType, change: StatusChange, caller: Caller
    ) -> None:
        # Retiring a retired version (or archiving an archived one) changes nothing and
        # announces nothing; of concurrent calls on one version only the one whose
        # transaction changed it announces. (Today retire only ever meets retired
        # versions; rotate announces every retirement.)
        if change.changed:
            record = change.record
            await self._announce(
                _event(kind, record, record.status_changed_at, caller.request_id)
            )

    # -- rotation policy --------------------------------------------------------------

    async def set_rotation_policy(
        self, caller: Caller, request: SetRotationPolicyRequest
    ) -> RotationPolicyInfo:
        """Set (or, with a null period, clear) the scheduled rotation of an algorithm."""
        if request.rotation_period is None:
            await self._policies.delete_policy(caller.tenant_id, request.algorithm)
            return _policy_info(request.algorithm, None, None)
        shortest = self._settings.rotation_min_period_seconds
        if request.rotation_period < shortest:
            raise ServiceError(
                ErrorCode.INVALID,
                "Validation failed: rotation_period must be at least "
                f"{format_rotation_period(shortest)}",
            )
        policy = await self._policies.set_policy(
            caller.tenant_id, request.algorithm, request.rotation_period
        )
        active = await self._store.get_active_key(caller.tenant_id, request.algorithm)
        return _policy_info(request.algorithm, policy, active)

    async def get_rotation_policy(
        self, caller: Caller, request: GetRotationPolicyRequest
    ) -> RotationPolicyInfo:
        """The scheduled rotation of an algorithm (a null period when there is none)."""
        policy = await self._policies.get_policy(caller.tenant_id, request.algorithm)
        active = None
        if policy is not None:
            active = await self._store.get_active_key(caller.tenant_id, request.algorithm)
        return _policy_info(request.algorithm, policy, active)


def _policy_info(
    algorithm: Algorithm, policy: RotationPolicyRecord | None, active: KeyRecord | None
) -> RotationPolicyInfo:
    """The wire view of a policy; the next rotation is due ``period`` after the active
    version was created."""
    if policy is None:
        return RotationPolicyInfo(
            algorithm=algorithm, rotation_period=None, rotation_period_seconds=None,
            next_rotation_at=None, updated_at=None,
        )
    period = policy.rotation_period_seconds
    due = None if active is None else active.created_at + timedelta(seconds=period)
    return RotationPolicyInfo(
        algorithm=algorithm,
        rotation_period=format_rotation_period(period),
        rotation_period_seconds=period,
        next_rotation_at=None if due is None else utc_timestamp(due),
        updated_at=utc_timestamp(policy.updated_at),
    )

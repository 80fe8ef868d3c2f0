"""Scheduled rotation: every worker looks for due keys and rotates them, exactly once.

Every ``PQKMS_ROTATION_CHECK_SECONDS`` (give or take a tenth, so workers started together
drift apart) the scheduler asks the store for active versions older than their
tenant's rotation period and rotates each one *conditionally*: the store rotates only
if that version is still the active one. When several workers find the same due key,
the first rotation wins and the others change nothing. A rotation the plan's version
cap refuses is skipped with one warning per key version. Nothing the scheduler meets
stops the worker: each failure is logged and the next check runs on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from schemas.algorithms import Algorithm
from schemas.events import SCHEDULER_REQUEST_ID
from schemas.subjects import Subject
from worker.errors import ServiceError
from worker.services.request_record import NO_AUDIT, AuditSink, RequestRecord

if TYPE_CHECKING:
    from worker.services.keys import KeyLifecycleService
    from worker.store.rotation_policies import DueKey, RotationPolicyStore

__all__ = ["CheckSummary", "RotationScheduler"]

_log = structlog.get_logger("pqkms.worker")
# How long stop() lets a check in progress finish before cancelling it.
_STOP_GRACE_SECONDS = 10.0
_JITTER = 0.1

_KeyId = tuple[str, Algorithm, int]


@dataclass(frozen=True, slots=True)
class CheckSummary:
    """What one check did (for logs and tests)."""

    due: int
    rotated: int
    lost_race: int
    skipped: int
    failed: int


def _key_id(due: DueKey) -> _KeyId:
    return (due.tenant_id, due.algorithm, due.version)


class RotationScheduler:
    """Rotates due keys in the background of one worker."""

    def __init__(
        self,
        policies: RotationPolicyStore,
        keys: KeyLifecycleService,
        check_seconds: float,
        *,
        clock: Callable[[], datetime] | None = None,
        audit: AuditSink = NO_AUDIT,
    ) -> None:
        self._audit = audit
        self._policies = policies
        self._keys = keys
        self._check_seconds = check_seconds
        self._clock = clock
        self._warned: set[_KeyId] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def check_once(self) -> CheckSummary:
        """Rotate every key due now; one key's failure does not stop the others."""
        due_keys = await self._policies.due_keys(None if self._clock is None else self._clock())
        # Forget warnings about versions no longer due (rotated, archived, policy gone).
        self._warned &= {_key_id(due) for due in due_keys}
        rotated = lost = skipped = failed = 0
        for due in due_keys:
            started = time.perf_counter()
            try:
                result = await self._keys.rotate_on_schedule(due)
            except ServiceError as exc:
                skipped += 1
                self._warn_once(due, exc)
                continue
            except Exception as exc:
                failed += 1
                _log.error(
                    "scheduled_rotation_failed", tenant_id=due.tenant_id,
                    algorithm=due.algorithm.value, key_version=due.version,
                    reason=type(exc).__name__,
                )
                continue
            if result is None:
                lost += 1  # another worker (or the tenant) rotated it first
                continue
            rotated += 1
            _log.info(
                "scheduled_rotation", tenant_id=due.tenant_id, algorithm=due.algorithm.value,
                old_key_version=result.old_key_version, key_version=result.key_version,
            )
            await self._record(due, result.key_version, started)
        return CheckSummary(len(due_keys), rotated, lost, skipped, failed)

    async def _record(self, due: DueKey, key_version: int, started: float) -> None:
        """The rotation's audit record, as a tenant's rotate request leaves one (request id
        ``scheduler``). It has happened either way: a failed record is logged."""
        try:
            await self._audit.append(RequestRecord(
                operation=Subject.KEYS_ROTATE.value, request_id=SCHEDULER_REQUEST_ID,
                tenant_id=due.tenant_id, algorithm=due.algorithm.value,
                key_version=key_version, outcome="OK",
                duration_seconds=time.perf_counter() - started,
            ))
        except Exception as exc:
            _log.error("scheduled_rotation_audit_failed", tenant_id=due.tenant_id,
                       algorithm=due.algorithm.value, key_version=key_version,
                       reason=type(exc).__name__)

    def _warn_once(self, due: DueKey, exc: ServiceError) -> None:
        key = _key_id(due)
        if key in self._warned:
            return
        self._warned.add(key)
        # ServiceError messages are written to be shown to callers: safe to log.
        _log.warning(
            "scheduled_rotation_skipped", tenant_id=due.tenant_id,
            algorithm=due.algorithm.value, key_version=due.version, code=exc.code.value,
            reason=exc.message,
        )

    def _next_wait(self) -> float:
        return self._check_seconds * random.uniform(1 - _JITTER, 1 + _JITTER)

    async def run(self) -> None:
        """Check until :meth:`stop`; the first check waits a random part of the interval."""
        wait = self._check_seconds * random.random()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait)
            if self._stop.is_set():
                return
            try:
                summary = await self.check_once()
            except Exception as exc:  # the database is down, say: try again next time
                _log.error("rotation_check_failed", reason=type(exc).__name__)
            else:
                if summary.due:
                    _log.debug("rotation_check", **dataclasses.asdict(summary))
            wait = self._next_wait()

    def start(self) -> None:
        """Run in the background of the current event loop."""
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self.run(), name="pqkms-rotation-scheduler")

    async def stop(self) -> None:
        """Let a check in progress finish (briefly), then end the background task."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        # On timeout wait_for cancels the task (a rotation in flight rolls back).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, timeout=_STOP_GRACE_SECONDS)

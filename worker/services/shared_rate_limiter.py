"""The worker's rate limiter: in memory until NATS is up, then the shared KV one.

While JetStream is advertised but its bucket cannot be reached yet (a cluster electing
its leader), rate-limited plans are refused with 503, as when the bucket becomes
unreachable later: no worker lets a tenant through unlimited. Only a server without
JetStream leaves each worker limiting on its own, for good.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from nats.js.kv import KeyValue

from schemas.errors import ErrorCode
from worker.config import PlanLimits
from worker.errors import ServiceError
from worker.jetstream_setup import SetupStep
from worker.services.rate_limit import (
    InMemoryRateLimiter,
    KvRateLimiter,
    RateLimiter,
    is_unlimited,
)

__all__ = ["SharedRateLimits", "SwitchableRateLimiter", "UnreachableRateLimiter"]

_log = structlog.get_logger("pqkms.worker")


class SwitchableRateLimiter:
    """Delegates to the current backend; ``use`` swaps it."""

    def __init__(self) -> None:
        self._backend: RateLimiter = InMemoryRateLimiter()

    def use(self, backend: RateLimiter) -> None:
        """Route every later request to ``backend``."""
        self._backend = backend

    async def acquire(self, tenant_id: str, limits: PlanLimits, cost: int = 1) -> None:
        """Take tokens from the current backend."""
        await self._backend.acquire(tenant_id, limits, cost)


class UnreachableRateLimiter:
    """Fails closed: a rate-limited plan gets a retryable 503, an unlimited one passes."""

    async def acquire(self, tenant_id: str, limits: PlanLimits, cost: int = 1) -> None:
        """Refuse unless the plan has no limit."""
        if is_unlimited(limits):
            return
        raise ServiceError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "Rate limits cannot be checked right now; retry shortly",
        )


class SharedRateLimits:
    """The set-up step that moves ``limiter`` onto the shared KV bucket."""

    def __init__(
        self, limiter: SwitchableRateLimiter, open_bucket: Callable[[], Awaitable[KeyValue]]
    ) -> None:
        self._limiter = limiter
        self._open_bucket = open_bucket
        self._was_unreachable = False

    def step(self) -> SetupStep:
        """This as a :class:`worker.jetstream_setup.SetupStep`."""
        return SetupStep("rate_limits", self._attempt, self._unavailable)

    async def _attempt(self) -> bool:
        self._limiter.use(KvRateLimiter(await self._open_bucket()))
        if self._was_unreachable:
            _log.info("rate_limits_shared")
        return True

    def _unavailable(self, retrying: bool) -> None:
        if retrying:
            self._was_unreachable = True
            self._limiter.use(UnreachableRateLimiter())
            _log.warning("rate_limits_unreachable", effect="rate-limited plans get 503 "
                         "until the shared bucket is reached; retrying")
        else:
            _log.warning("rate_limits_not_shared", reason="NATS has no JetStream")

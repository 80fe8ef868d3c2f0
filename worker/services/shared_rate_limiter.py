"""A rate limiter that starts in memory and switches to the shared KV one once NATS is up."""

from __future__ import annotations

from worker.config import PlanLimits
from worker.services.rate_limit import InMemoryRateLimiter, RateLimiter

__all__ = ["SwitchableRateLimiter"]


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

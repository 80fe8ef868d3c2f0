"""Per-tenant token buckets, shared by every worker through a NATS JetStream KV bucket.

Each tenant has one KV entry ``{"tokens": float, "at": float}``, changed only with a
compare-and-set on the entry's revision, so all workers together hold the plan's rate.

Within one worker, the requests of a tenant that arrive together are settled together:
one read and one compare-and-set take the tokens of all of them (first come, first
served) while the next arrivals queue for the following round. So at most one write per
tenant per worker is in flight, and a conflict costs a retry among workers, not among
requests: a tenant sending 100 requests at once no longer makes them race each other
on one revision until some give up with a false 429.

The in-memory limiter serves tests and single-process use.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

import orjson
import structlog
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from schemas.errors import ErrorCode
from worker.config import PlanLimits
from worker.errors import RateLimited, ServiceError

__all__ = [
    "InMemoryRateLimiter", "KvRateLimiter", "RateLimiter", "is_unlimited", "take_tokens",
]

_log = structlog.get_logger("pqkms.worker")


class RateLimiter(Protocol):
    """Takes ``cost`` tokens for a tenant or raises RateLimited."""

    async def acquire(self, tenant_id: str, limits: PlanLimits, cost: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class _Bucket:
    tokens: float
    at: float


def take_tokens(
    bucket: _Bucket | None, limits: PlanLimits, cost: int, now: float
) -> tuple[_Bucket, float]:
    """Refill then take; returns the new bucket and seconds to wait (0 when granted)."""
    assert limits.rate_per_second is not None and limits.burst is not None
    capacity = float(limits.burst)
    if bucket is None:
        tokens = capacity
    else:
        elapsed = max(0.0, now - bucket.at)
        tokens = min(capacity, bucket.tokens + elapsed * limits.rate_per_second)
    if tokens >= cost:
        return _Bucket(tokens - cost, now), 0.0
    wait = (cost - tokens) / limits.rate_per_second
    return _Bucket(tokens, now), wait


def is_unlimited(limits: PlanLimits) -> bool:
    return limits.rate_per_second is None or limits.burst is None


class InMemoryRateLimiter:
    """One process's token buckets."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    async def acquire(self, tenant_id: str, limits: PlanLimits, cost: int = 1) -> None:
        """Take tokens or raise RateLimited with a retry hint."""
        if is_unlimited(limits):
            return
        bucket, wait = take_tokens(self._buckets.get(tenant_id), limits, cost, time.time())
        self._buckets[tenant_id] = bucket
        if wait > 0:
            raise RateLimited(math.ceil(wait), wait)


@dataclass(slots=True)
class _Waiter:
    """One request waiting for its round: its cost, and where its outcome goes."""

    limits: PlanLimits
    cost: int
    outcome: asyncio.Future[float] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class KvRateLimiter:
    """Token buckets in a JetStream KV bucket, so the limit holds across all workers."""

    BUCKET = "pqkms_rate_limits"
    _ATTEMPTS = 20
    # Upper bound of the random pause before retrying a lost compare-and-set, times the
    # attempt number: workers that collided do not collide again in lockstep.
    _BACKOFF_SECONDS = 0.002

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        # Tenant → requests waiting for the next round; a tenant is here only while a
        # round runs, so the map stays as small as the set of busy tenants.
        self._queues: dict[str, list[_Waiter]] = {}
        self._rounds: dict[str, asyncio.Task[None]] = {}

    async def acquire(self, tenant_id: str, limits: PlanLimits, cost: int = 1) -> None:
        """Take tokens with compare-and-set; raise RateLimited when the bucket is empty."""
        if is_unlimited(limits):
            return
        waiter = _Waiter(limits, cost)
        self._queues.setdefault(tenant_id, []).append(waiter)
        if tenant_id not in self._rounds:
            self._rounds[tenant_id] = asyncio.create_task(self._run_rounds(tenant_id))
        wait = await waiter.outcome
        if wait > 0:
            raise RateLimited(math.ceil(wait), wait)

    async def _run_rounds(self, tenant_id: str) -> None:
        """Settle the tenant's queued requests, round after round, until none are left."""
        try:
            while waiters := self._queues.pop(tenant_id, None):
                live = [waiter for waiter in waiters if not waiter.outcome.done()]
                if not live:
                    continue
                try:
                    await self._settle(tenant_id, live)
                except Exception as exc:
                    _fail(live, _as_service_error(exc))
                except asyncio.CancelledError:
                    _fail(live, RateLimited(1))
                    raise
        finally:
            del self._rounds[tenant_id]
            # Requests queued behind a cancelled round (worker shutting down).
            _fail(self._queues.pop(tenant_id, []), RateLimited(1))

    async def _settle(self, tenant_id: str, waiters: list[_Waiter]) -> None:
        """One read and one compare-and-set for all ``waiters``, retried on conflict."""
        key = f"t.{tenant_id}"
        for attempt in range(1, self._ATTEMPTS + 1):
            try:
                entry = await self._kv.get(key)
                raw = orjson.loads(entry.value or b"{}")
                current: _Bucket | None = _Bucket(float(raw["tokens"]), float(raw["at"]))
                revision: int | None = entry.revision
            except KeyNotFoundError:
                current, revision = None, None
            now = time.time()
            bucket, waits = current, []
            for waiter in waiters:
                taken, wait = take_tokens(bucket, waiter.limits, waiter.cost, now)
                bucket = taken
                waits.append(wait)
            assert bucket is not None
            if all(wait > 0 for wait in waits) or await self._write(
                key, bucket, revision
            ):
                for waiter, wait in zip(waiters, waits, strict=True):
                    if not waiter.outcome.done():
                        waiter.outcome.set_result(wait)
                return
            await asyncio.sleep(random.uniform(0, self._BACKOFF_SECONDS * attempt))
        # Heavy contention among workers: let the callers retry rather than exceed the limit.
        _log.warning("rate_limit_contention", tenant_id=tenant_id, requests=len(waiters))
        for waiter in waiters:
            if not waiter.outcome.done():
                waiter.outcome.set_result(1.0)

    async def _write(self, key: str, bucket: _Bucket, revision: int | None) -> bool:
        """Store the bucket if the entry is still at ``revision`` (``None``: if there is no
        entry yet); False when another worker wrote first."""
        payload = orjson.dumps({"tokens": bucket.tokens, "at": bucket.at})
        try:
            # Expected last sequence 0 means "no entry yet". Not kv.create(): after a lost
            # race it reads the key back to look for a delete marker, and on a replicated
            # bucket that read can miss the winner's write still being applied, turning a
            # plain conflict into KeyNotFoundError.
            await self._kv.update(key, payload, last=revision or 0)
        except KeyWrongLastSequenceError:
            return False
        return True


def _fail(waiters: list[_Waiter], exc: Exception) -> None:
    for waiter in waiters:
        if not waiter.outcome.done():
            waiter.outcome.set_exception(exc)


def _as_service_error(exc: Exception) -> Exception:
    """JetStream trouble (a node lost, a leader being elected) is a retryable 503, not a
    500: the request did nothing yet."""
    if isinstance(exc, NatsError):
        return ServiceError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "Rate limits cannot be checked right now; retry shortly",
        )
    return exc

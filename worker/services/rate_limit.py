"""Per-tenant token buckets, shared by every worker through a NATS JetStream KV bucket.

Each tenant has one KV entry ``{"tokens": float, "at": float}``; a request takes
tokens with a compare-and-set on the entry's revision, retrying on conflict, so all
workers together hold the plan's rate. The in-memory limiter serves tests and
single-process use.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Protocol

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from worker.config import PlanLimits
from worker.errors import RateLimited

__all__ = ["InMemoryRateLimiter", "KvRateLimiter", "RateLimiter", "take_tokens"]


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


def _unlimited(limits: PlanLimits) -> bool:
    return limits.rate_per_second is None or limits.burst is None


class InMemoryRateLimiter:
    """One process's token buckets."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    async def acquire(self, tenant_id: str, limits: PlanLimits, cost: int = 1) -> None:
        """Take tokens or raise RateLimited with a retry hint."""
        if _unlimited(limits):
            return
        bucket, wait = take_tokens(self._buckets.get(tenant_id), limits, cost, time.time())
        self._buckets[tenant_id] = bucket
        if wait > 0:
            raise RateLimited(math.ceil(wait), wait)


class KvRateLimiter:
    """Token buckets in a JetStream KV bucket, so the limit holds across all workers."""

    BUCKET = "pqkms_rate_limits"
    _ATTEMPTS = 20

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def acquire(self, tenant_id: str, limits: PlanLimits, cost: int = 1) -> None:
        """Take tokens with compare-and-set; raise RateLimited when the bucket is empty."""
        if _unlimited(limits):
            return
        key = f"t.{tenant_id}"
        for _ in range(self._ATTEMPTS):
            try:
                entry = await self._kv.get(key)
                raw = orjson.loads(entry.value or b"{}")
                current: _Bucket | None = _Bucket(float(raw["tokens"]), float(raw["at"]))
                revision: int | None = entry.revision
            except KeyNotFoundError:
                current, revision = None, None
            bucket, wait = take_tokens(current, limits, cost, time.time())
            if wait > 0:
                raise RateLimited(math.ceil(wait), wait)
            payload = orjson.dumps({"tokens": bucket.tokens, "at": bucket.at})
            try:
                if revision is None:
                    await self._kv.create(key, payload)
                else:
                    await self._kv.update(key, payload, last=revision)
                return
            except KeyWrongLastSequenceError:
                await asyncio.sleep(0)
            except Exception as exc:  # create() on an existing key
                if "wrong last sequence" not in str(exc).lower():
                    raise
        # Heavy contention: let the caller retry rather than exceed the limit.
        raise RateLimited(1)

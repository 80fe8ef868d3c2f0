"""Token bucket arithmetic and the in-memory limiter."""

from __future__ import annotations

import pytest

from worker.config import PlanLimits
from worker.errors import RateLimited
from worker.services.rate_limit import InMemoryRateLimiter, take_tokens

LIMITS = PlanLimits(max_versions=3, rate_per_second=10.0, burst=20)


def test_new_bucket_allows_the_burst_then_refills() -> None:
    bucket, wait = take_tokens(None, LIMITS, 20, now=100.0)
    assert wait == 0 and bucket.tokens == 0
    bucket, wait = take_tokens(bucket, LIMITS, 1, now=100.0)
    assert wait == pytest.approx(0.1)
    bucket, wait = take_tokens(bucket, LIMITS, 5, now=100.5)
    assert wait == 0 and bucket.tokens == pytest.approx(0)


def test_refill_never_exceeds_the_burst() -> None:
    bucket, _ = take_tokens(None, LIMITS, 1, now=0.0)
    bucket, wait = take_tokens(bucket, LIMITS, 1, now=1000.0)
    assert wait == 0 and bucket.tokens == 19


async def test_in_memory_limiter_raises_with_whole_second_hint() -> None:
    limiter = InMemoryRateLimiter()
    for _ in range(20):
        await limiter.acquire("t", LIMITS)
    with pytest.raises(RateLimited) as raised:
        await limiter.acquire("t", LIMITS, cost=15)
    assert raised.value.retry_after == 2
    assert raised.value.code.value == "ERR_RATE_001"


async def test_unlimited_plan_never_limits() -> None:
    limiter = InMemoryRateLimiter()
    for _ in range(1000):
        await limiter.acquire("t", PlanLimits(None, None, None))

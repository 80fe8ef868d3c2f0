"""JetStream set-up steps: retried while the server advertises JetStream, final otherwise."""

from __future__ import annotations

from typing import Any, cast

import pytest
from nats.aio.client import Client

from schemas.errors import ErrorCode
from worker.config import PlanLimits
from worker.errors import ServiceError
from worker.jetstream_setup import JetStreamSetup, SetupStep
from worker.services.shared_rate_limiter import UnreachableRateLimiter


class _Connection:
    def __init__(self, jetstream: bool) -> None:
        self._server_info: dict[str, Any] = {"jetstream": True} if jetstream else {}


class _FlakyStep:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.unavailable: list[bool] = []

    async def attempt(self) -> bool:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise TimeoutError
        return True

    def step(self) -> SetupStep:
        return SetupStep("flaky", self.attempt, self.unavailable.append)


async def _run(setup: JetStreamSetup, jetstream: bool) -> None:
    await setup.start(cast(Client, _Connection(jetstream)))
    await setup.wait()
    assert not setup.pending


async def test_a_step_is_retried_until_done_while_jetstream_is_advertised() -> None:
    flaky, steady = _FlakyStep(failures=3), _FlakyStep(failures=0)
    setup = JetStreamSetup([flaky.step(), steady.step()], delays=(0.0,))
    await _run(setup, jetstream=True)
    assert (flaky.attempts, flaky.unavailable) == (4, [True])
    assert (steady.attempts, steady.unavailable) == (1, [])


async def test_without_jetstream_the_first_failure_is_final() -> None:
    flaky = _FlakyStep(failures=1)
    setup = JetStreamSetup([flaky.step()], delays=(0.0,))
    await _run(setup, jetstream=False)
    assert (flaky.attempts, flaky.unavailable) == (1, [False])


async def test_stop_ends_the_retries() -> None:
    never = _FlakyStep(failures=10**9)
    setup = JetStreamSetup([never.step()], delays=(0.0,))
    await setup.start(cast(Client, _Connection(jetstream=True)))
    assert setup.pending
    await setup.stop()
    assert not setup.pending


async def test_unreachable_limits_refuse_limited_plans_only() -> None:
    limiter = UnreachableRateLimiter()
    await limiter.acquire("t", PlanLimits(max_versions=None, rate_per_second=None, burst=None))
    with pytest.raises(ServiceError) as refused:
        await limiter.acquire("t", PlanLimits(max_versions=None, rate_per_second=5, burst=10))
    assert refused.value.code is ErrorCode.SERVICE_UNAVAILABLE

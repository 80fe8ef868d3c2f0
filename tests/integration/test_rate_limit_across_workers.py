"""A tenant's rate limit holds across all workers together: 1, 2 or 4 of them.

Each case has its own stack whose "pro" plan is held to 40 requests/s with a burst of
40, so the window is short. The test hammers ``kem.encrypt`` with many more concurrent
requests than that for a window measured by its own clock and counts what was let
through: a full bucket at the start plus the refill over the window, whatever the
number of workers, within 20 %. Everything else is a 429 with a retry hint.

The "free" plan of these stacks is set far above any load instead: many concurrent
requests of one tenant must then all pass (they once raced each other on the bucket's
revision until some gave up with a false 429).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from schemas.algorithms import Plan
from schemas.subjects import HEADER_RETRY_AFTER, Subject
from tests.support.stack import LocalStack, NatsCaller
from tests.support.wire import b64

pytestmark = [pytest.mark.integration, pytest.mark.long]

RATE_PER_SECOND = 40
BURST = 40
WINDOW_SECONDS = 4.0
CONCURRENCY = 32  # requests in flight at any moment: far above what the plan lets through
TOLERANCE = 0.20
ROOMY = 100_000  # the "free" plan's rate and burst here: never reached
SIMULTANEOUS = 150


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda n: f"{n}-workers")
async def limited_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LocalStack]:
    workers: int = request.param
    local = LocalStack(
        Path(tmp_path_factory.mktemp(f"rate-{workers}")),
        extra_env={
            "PQKMS_PRO_RATE_PER_SECOND": str(RATE_PER_SECOND),
            "PQKMS_PRO_BURST": str(BURST),
            "PQKMS_FREE_RATE_PER_SECOND": str(ROOMY),
            "PQKMS_FREE_BURST": str(ROOMY),
        },
    )
    try:
        await local.start(workers=workers)
        yield local
    finally:
        local.stop()


async def _hammer(call: NatsCaller, seconds: float) -> tuple[Counter[str], set[str]]:
    """Send encrypts from ``CONCURRENCY`` loops until ``seconds`` have passed; returns
    the outcome codes (``OK`` for success) and the Retry-After values of the 429s."""
    outcomes: Counter[str] = Counter()
    retry_hints: set[str] = set()
    body = {"plaintext": b64(b"rate"), "key_version": 1}
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        while time.monotonic() < deadline:
            try:
                reply = await call(Subject.KEM_ENCRYPT, body, timeout=10)
            except nats.errors.TimeoutError:
                outcomes["timeout"] += 1
                continue
            outcomes[reply.code or "OK"] += 1
            if reply.code == "ERR_RATE_001":
                retry_hints.add(reply.headers.get(HEADER_RETRY_AFTER, "missing"))

    await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
    return outcomes, retry_hints


async def test_rate_limit_holds_across_workers(limited_stack: LocalStack) -> None:
    api_key = await limited_stack.create_tenant(Plan.PRO)
    tenant = await limited_stack.tenant_id(api_key)
    client = await nats.connect(limited_stack.nats_servers)
    try:
        call = NatsCaller(client, api_key)
        assert (await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})).code is None
        await asyncio.sleep(BURST / RATE_PER_SECOND)  # the generate's token grows back

        outcomes, retry_hints = await _hammer(call, WINDOW_SECONDS)
    finally:
        await client.close()

    expected = BURST + RATE_PER_SECOND * WINDOW_SECONDS
    accepted = outcomes["OK"]
    refused = outcomes["ERR_RATE_001"]
    assert set(outcomes) <= {"OK", "ERR_RATE_001"}, outcomes
    assert refused > accepted, f"the load did not exceed the rate: {outcomes}"
    assert abs(accepted - expected) <= TOLERANCE * expected, (
        f"{accepted} accepted in {WINDOW_SECONDS} s, expected {expected:.0f} ± 20 % "
        f"({len(limited_stack.workers)} workers): {outcomes}")
    assert retry_hints and all(hint.isdigit() and int(hint) >= 1 for hint in retry_hints)
    # Every worker took part, so the figure is the workers' together, not one worker's.
    served = limited_stack.requests_served(tenant, Subject.KEM_ENCRYPT.value)
    assert len(served) == len(limited_stack.workers) and all(served), served


async def test_simultaneous_requests_under_the_limit_all_pass(limited_stack: LocalStack) -> None:
    api_key = await limited_stack.create_tenant(Plan.FREE)
    client = await nats.connect(limited_stack.nats_servers)
    try:
        call = NatsCaller(client, api_key)
        assert (await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})).code is None
        body = {"plaintext": b64(b"together"), "key_version": 1}
        for _ in range(2):
            replies = await asyncio.gather(*(
                call(Subject.KEM_ENCRYPT, body, timeout=30) for _ in range(SIMULTANEOUS)))
            assert Counter(reply.code or "OK" for reply in replies) == {"OK": SIMULTANEOUS}
    finally:
        await client.close()

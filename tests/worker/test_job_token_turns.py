"""A chunk waiting for its tenant's tokens leaves its loop; the tenant's next chunk is
handed back uncharged.

The runner runs for real on stand-ins for JetStream (a queue of chunk messages), the
authenticator, the batch service and a rate limiter whose tenants' buckets the test
keeps empty until it lets them fill.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from schemas.algorithms import Plan
from schemas.jobs import JOB_CHUNK_PREFIX
from schemas.subjects import HEADER_API_KEY, Subject
from worker.config import PlanLimits, Settings
from worker.errors import RateLimited
from worker.jobs import JobRunner
from worker.jobs.token_turns import TenantWaiting, TokenTurns
from worker.services.batch_items import BatchOutcome
from worker.services.context import Caller

FREE, OTHER_FREE, ENTERPRISE = "tenant-free", "tenant-other-free", "tenant-enterprise"
PLANS = {FREE: Plan.FREE, OTHER_FREE: Plan.FREE, ENTERPRISE: Plan.ENTERPRISE}
ACK_WAIT = 30.0  # the longest hand-back
FREE_RATE = 10.0  # Settings' default for the free plan


class ChunkMessage:
    """A chunk as the runner fetches it; ``settled`` says how it left the runner."""

    def __init__(self, tenant: str, index: int, items: int) -> None:
        self.subject = f"{JOB_CHUNK_PREFIX}.{tenant}.job.{index}"
        self.data = orjson.dumps({"operation": "kem.encrypt", "key_version": 1,
                                  "items": [{"plaintext": "AA=="}] * items})
        self.headers = {HEADER_API_KEY: f"key-of-{tenant}"}
        self.settled: asyncio.Future[tuple[str, float | None]] = (
            asyncio.get_running_loop().create_future())

    def _settle(self, how: str, delay: float | None = None) -> None:
        if not self.settled.done():
            self.settled.set_result((how, delay))

    async def ack(self) -> None:
        self._settle("ack")

    async def ack_sync(self, timeout: float) -> None:
        self._settle("ack")

    async def nak(self, delay: float | None = None) -> None:
        self._settle("nak", delay)

    async def term(self) -> None:
        self._settle("term")

    async def in_progress(self) -> None:
        return None


class ChunkQueue:
    """The pull subscription: hands out what the test puts in, one at a time."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ChunkMessage] = asyncio.Queue()

    async def fetch(self, batch: int, timeout: float) -> list[ChunkMessage]:
        try:
            return [await asyncio.wait_for(self.queue.get(), timeout)]
        except TimeoutError:
            raise NatsTimeoutError from None

    async def unsubscribe(self) -> None:
        return None


class Streams:
    def __init__(self, chunks: ChunkQueue) -> None:
        self.chunks = chunks
        self.published: list[str] = []
        self.js = self

    async def ensure(self) -> None:
        return None

    async def ensure_consumer(self) -> None:
        return None

    def forget(self) -> None:
        return None

    async def pull_subscribe_bind(self, durable: str, stream: str) -> ChunkQueue:
        return self.chunks

    async def has_results(self, tenant: str, job_id: str, index: int) -> bool:
        return False

    async def publish(self, subject: str, payload: bytes, **_: Any) -> None:
        self.published.append(subject)


class Authenticator:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def authenticate(self, api_key: str | None, request_id: str) -> Caller:
        assert api_key is not None
        tenant = api_key.removeprefix("key-of-")
        self.calls[tenant] += 1
        return Caller(tenant, PLANS[tenant], request_id)


class Batches:
    async def run(self, single: Subject, caller: Caller, items: list[Any],
                  key_version: int | None = None, algorithm: str | None = None) -> BatchOutcome:
        return BatchOutcome([{"data": {}} for _ in items], failed=0)


class EmptyBuckets:
    """Refuses the tenants in ``empty`` (as a bucket with no tokens); counts what it grants."""

    def __init__(self, *empty: str) -> None:
        self.empty = set(empty)
        self.taken: Counter[str] = Counter()
        self.grants: list[tuple[str, int]] = []
        self.refused: dict[str, asyncio.Event] = {tenant: asyncio.Event() for tenant in PLANS}

    async def acquire(self, tenant_id: str, limits: PlanLimits, cost: int = 1) -> None:
        if tenant_id in self.empty:
            self.refused[tenant_id].set()
            raise RateLimited(1, 0.01)
        self.taken[tenant_id] += cost
        self.grants.append((tenant_id, cost))


class ChunkOutcomes:
    def __init__(self) -> None:
        self.finished: Counter[str] = Counter()

    def chunk_finished(self, outcome: str) -> None:
        self.finished[outcome] += 1

    def chunk_items(self, operation: str, items: int, failed: int) -> None:
        return None


class Worker:
    """A job runner and its stand-ins."""

    def __init__(self, tmp_path: Path, concurrency: int, *empty: str) -> None:
        self.chunks = ChunkQueue()
        self.streams = Streams(self.chunks)
        self.auth = Authenticator()
        self.buckets = EmptyBuckets(*empty)
        self.outcomes = ChunkOutcomes()
        self.runner = JobRunner(
            cast(Any, self.streams), cast(Any, Batches()), cast(Any, self.auth), self.buckets,
            Settings(data_dir=tmp_path, audit=False), concurrency=concurrency,
            ack_wait=ACK_WAIT, metrics=self.outcomes)

    def submit(self, tenant: str, index: int, items: int) -> ChunkMessage:
        message = ChunkMessage(tenant, index, items)
        self.chunks.queue.put_nowait(message)
        return message


@pytest.fixture
async def one_loop(tmp_path: Path) -> AsyncIterator[Worker]:
    """One loop; the free tenants' buckets are empty."""
    worker = Worker(tmp_path, 1, FREE, OTHER_FREE)
    worker.runner.start()
    yield worker
    await worker.runner.stop(grace_seconds=0.5)


async def settled(message: ChunkMessage) -> tuple[str, float | None]:
    return await asyncio.wait_for(asyncio.shield(message.settled), 10)


async def test_a_waiting_chunk_leaves_its_loop_and_its_tenant_s_next_chunk_is_handed_back(
        one_loop: Worker) -> None:
    waiting = one_loop.submit(FREE, 0, 30)
    await asyncio.wait_for(one_loop.buckets.refused[FREE].wait(), 10)
    handed_back = one_loop.submit(FREE, 1, 10)
    other_tenant = one_loop.submit(ENTERPRISE, 0, 5)

    # The only loop moved on: the enterprise chunk runs while the free one waits.
    assert await settled(other_tenant) == ("ack", None)
    assert one_loop.buckets.grants == [(ENTERPRISE, 5)]  # unlimited: one call, as before
    # Handed back for what the waiting chunk needs: 30 items at 10/s; not authenticated,
    # not charged.
    assert await settled(handed_back) == ("nak", 30 / FREE_RATE)
    assert one_loop.auth.calls[FREE] == 1
    assert one_loop.buckets.taken[FREE] == 0
    assert not waiting.settled.done()

    one_loop.buckets.empty.clear()
    assert await settled(waiting) == ("ack", None)
    assert one_loop.buckets.taken[FREE] == 30
    assert one_loop.outcomes.finished == {"done": 2, "deferred": 1}


async def test_another_tenant_s_chunk_waits_too_without_holding_the_loop(
        one_loop: Worker) -> None:
    free = one_loop.submit(FREE, 0, 5)
    other_free = one_loop.submit(OTHER_FREE, 0, 5)
    await asyncio.wait_for(one_loop.buckets.refused[OTHER_FREE].wait(), 10)
    enterprise = one_loop.submit(ENTERPRISE, 0, 5)
    assert await settled(enterprise) == ("ack", None)
    one_loop.buckets.empty.clear()
    assert [await settled(free), await settled(other_free)] == [("ack", None)] * 2
    assert one_loop.buckets.taken == {FREE: 5, OTHER_FREE: 5, ENTERPRISE: 5}


async def test_chunks_of_one_tenant_fetched_together_take_tokens_one_at_a_time(
        tmp_path: Path) -> None:
    worker = Worker(tmp_path, 2, FREE)
    first, second = worker.submit(FREE, 0, 20), worker.submit(FREE, 1, 20)
    worker.runner.start()
    try:
        # Both loops have one; whichever asks for tokens second is handed back uncharged.
        done, _ = await asyncio.wait([first.settled, second.settled], timeout=10,
                                     return_when=asyncio.FIRST_COMPLETED)
        ((how, delay),) = [future.result() for future in done]
        assert (how, delay) == ("nak", 20 / FREE_RATE)
        assert worker.buckets.taken[FREE] == 0
        worker.buckets.empty.clear()
        waited = second if first.settled in done else first
        assert await settled(waited) == ("ack", None)
        assert worker.buckets.taken[FREE] == 20
    finally:
        await worker.runner.stop(grace_seconds=0.5)


async def test_stop_hands_back_a_chunk_waiting_for_tokens(one_loop: Worker) -> None:
    waiting = one_loop.submit(FREE, 0, 30)
    await asyncio.wait_for(one_loop.buckets.refused[FREE].wait(), 10)
    await one_loop.runner.stop(grace_seconds=0.2)
    assert await settled(waiting) == ("nak", None)  # at once, for any worker
    assert one_loop.buckets.taken[FREE] == 0
    assert one_loop.streams.published == []


async def test_a_hand_back_lasts_what_the_waiting_chunk_needs_within_bounds() -> None:
    turns = TokenTurns(longest_delay=ACK_WAIT, most_parked=8)
    for items, delay in [(30, 3.0), (2, 1.0), (1000, ACK_WAIT)]:
        turn = await turns.take_turn(FREE, items, FREE_RATE)
        turns.check(FREE)  # not waiting yet: no hand-back
        turns.wait_for_tokens(turn)
        with pytest.raises(TenantWaiting) as handed_back:
            turns.check(FREE)
        assert handed_back.value.delay == delay
        turns.end(turn)
        turns.check(FREE)


async def test_past_the_cap_a_waiting_chunk_keeps_its_loop() -> None:
    turns = TokenTurns(longest_delay=ACK_WAIT, most_parked=1)
    first = await turns.take_turn(FREE, 5, FREE_RATE)
    second = await turns.take_turn(OTHER_FREE, 5, FREE_RATE)
    assert turns.wait_for_tokens(first)
    assert not turns.wait_for_tokens(second)
    turns.end(first)
    assert turns.wait_for_tokens(second)  # room again: it may leave its loop now
    assert turns.parked == 1
    turns.end(second)
    assert turns.parked == 0

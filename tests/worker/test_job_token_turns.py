"""A chunk waiting for its tenant's tokens leaves its loop; the tenant's next chunk is
handed back uncharged.

The runner runs for real on stand-ins for JetStream (a queue of chunk messages), the
authenticator, the batch service and a rate limiter whose tenants' buckets the test
keeps empty until it lets them fill (``tests.support.job_runner_fakes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.job_runner_fakes import (
    ACK_WAIT,
    ENTERPRISE,
    FREE,
    FREE_RATE,
    OTHER_FREE,
    Worker,
    settled,
)
from worker.jobs.token_turns import TenantWaiting, TokenTurns


@pytest.fixture
async def one_loop(tmp_path: Path) -> AsyncIterator[Worker]:
    """One loop; the free tenants' buckets are empty."""
    worker = Worker(tmp_path, 1, FREE, OTHER_FREE)
    worker.runner.start()
    yield worker
    await worker.runner.stop(grace_seconds=0.5)


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

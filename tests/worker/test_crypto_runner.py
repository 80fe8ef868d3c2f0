"""The crypto pool's count of calls not finished (the audit trail lingers on it), and the
inline calls of requests arriving together, run back to back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from worker.services.crypto_runner import GROUP_LIMIT, INLINE_LIMIT_BYTES, CryptoRunner

_GUARD = 30.0  # a broken pool fails the test instead of hanging it


async def test_the_pool_counts_a_call_until_it_finishes() -> None:
    runner = CryptoRunner(1)
    started, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def blocking() -> int:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(_GUARD)
        return 7

    try:
        call = asyncio.create_task(runner.in_thread(blocking))
        await asyncio.wait_for(started.wait(), _GUARD)
        assert runner.submitted == 1
        release.set()
        assert await asyncio.wait_for(call, _GUARD) == 7
        assert runner.submitted == 0
    finally:
        runner.close()


async def test_a_failing_call_is_no_longer_counted() -> None:
    runner = CryptoRunner(1)

    def failing() -> None:
        raise ValueError("bad input")

    try:
        with pytest.raises(ValueError, match="bad input"):
            await asyncio.wait_for(runner.in_thread(failing), _GUARD)
        assert runner.submitted == 0
    finally:
        runner.close()


class _PassCounter:
    """Counts passes of the event loop: a callback that schedules itself again."""

    def __init__(self) -> None:
        self.passes = 0
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        if self._running:
            self.passes += 1
            self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._running = False


async def test_calls_of_requests_arriving_together_run_in_one_pass() -> None:
    runner = CryptoRunner(1)
    counter = _PassCounter()
    ran_in_pass: dict[int, int] = {}

    async def request(index: int) -> int:
        return await runner.together(lambda: ran_in_pass.setdefault(index, counter.passes))

    try:
        count = GROUP_LIMIT + 4
        results = await asyncio.wait_for(
            asyncio.gather(*(request(index) for index in range(count))), _GUARD)
        first = results[0]
        # The first GROUP_LIMIT back to back, the rest in a later pass of their own.
        assert results[:GROUP_LIMIT] == [first] * GROUP_LIMIT
        assert len(set(results[GROUP_LIMIT:])) == 1
        assert results[GROUP_LIMIT] > first
    finally:
        counter.stop()
        runner.close()


async def test_a_grouped_call_that_fails_fails_only_its_caller() -> None:
    runner = CryptoRunner(1)

    def failing() -> int:
        raise ValueError("bad input")

    try:
        outcomes = await asyncio.wait_for(asyncio.gather(
            runner.together(lambda: 1), runner.together(failing), runner.together(lambda: 3),
            return_exceptions=True), _GUARD)
        assert outcomes[0] == 1 and outcomes[2] == 3
        assert isinstance(outcomes[1], ValueError)
    finally:
        runner.close()


async def test_a_cancelled_caller_s_call_does_not_run() -> None:
    runner = CryptoRunner(1)
    ran: list[str] = []
    try:
        cancelled = asyncio.ensure_future(runner.together(lambda: ran.append("cancelled")))
        kept = asyncio.ensure_future(runner.together(lambda: ran.append("kept")))
        await asyncio.sleep(0)  # both queued, their pass not yet run
        cancelled.cancel()
        await asyncio.wait_for(kept, _GUARD)
        assert ran == ["kept"]
    finally:
        runner.close()


async def test_small_inputs_are_grouped_large_ones_go_to_the_pool() -> None:
    runner = CryptoRunner(1)
    loop_thread = threading.get_ident()
    try:
        assert await runner.sized(INLINE_LIMIT_BYTES, threading.get_ident) == loop_thread
        assert await runner.sized(INLINE_LIMIT_BYTES + 1, threading.get_ident) != loop_thread
    finally:
        runner.close()

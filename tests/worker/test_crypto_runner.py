"""The crypto pool's count of calls not finished: the audit trail lingers on it."""

from __future__ import annotations

import asyncio

import pytest

from worker.services.crypto_runner import CryptoRunner

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

"""The crypto threads: calls run off the event loop, and results come back in groups."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from worker.services import crypto_threads
from worker.services.crypto_threads import GROUP_MAX, CryptoThreads

_GUARD = 30.0  # a broken thread fails the test instead of hanging it


async def test_every_caller_gets_its_own_result_or_error() -> None:
    threads = CryptoThreads(2)

    def call(index: int) -> int:
        if index == 7:
            raise ValueError("bad input")
        return index * index

    try:
        outcomes = await asyncio.wait_for(asyncio.gather(
            *(threads.run(lambda index=index: call(index)) for index in range(40)),
            return_exceptions=True), _GUARD)
    finally:
        threads.close()
    assert [outcome for index, outcome in enumerate(outcomes) if index != 7] == [
        index * index for index in range(40) if index != 7]
    assert isinstance(outcomes[7], ValueError)


async def test_a_call_raising_stop_iteration_still_answers_its_caller() -> None:
    threads = CryptoThreads(1)

    def exhausted() -> int:
        return next(iter([]))

    try:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(threads.run(exhausted), _GUARD)
    finally:
        threads.close()


async def test_calls_run_in_the_crypto_threads_not_on_the_loop() -> None:
    threads = CryptoThreads(2)
    try:
        name = await asyncio.wait_for(threads.run(lambda: threading.current_thread().name),
                                      _GUARD)
    finally:
        threads.close()
    assert name.startswith("pqkms-crypto-")


class _Gate:
    """Holds the only thread inside a call until the test has queued the others."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self) -> str:
        self.entered.set()
        self.opened.wait(_GUARD)
        return "held"


async def test_what_waits_is_taken_and_answered_a_group_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    groups: list[int] = []
    deliver = crypto_threads._deliver

    def counting(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        groups.append(len(done))
        deliver(done)

    monkeypatch.setattr(crypto_threads, "_deliver", counting)
    threads, gate = CryptoThreads(1), _Gate()
    try:
        held = asyncio.ensure_future(threads.run(gate.hold))
        await asyncio.to_thread(gate.entered.wait, _GUARD)
        queued = [asyncio.ensure_future(threads.run(lambda index=index: index))
                  for index in range(GROUP_MAX + 1)]
        await asyncio.sleep(0)
        gate.opened.set()
        assert await asyncio.wait_for(asyncio.gather(held, *queued), _GUARD) == [
            "held", *range(GROUP_MAX + 1)]
    finally:
        threads.close()
    # The held call alone, then GROUP_MAX queued calls together, then the last one.
    assert groups == [1, GROUP_MAX, 1]


async def test_a_call_whose_caller_gave_up_before_it_started_does_not_run() -> None:
    threads, gate = CryptoThreads(1), _Gate()
    ran: list[str] = []
    try:
        held = asyncio.ensure_future(threads.run(gate.hold))
        await asyncio.to_thread(gate.entered.wait, _GUARD)
        cancelled = asyncio.ensure_future(threads.run(lambda: ran.append("cancelled")))
        kept = asyncio.ensure_future(threads.run(lambda: ran.append("kept")))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        gate.opened.set()
        await asyncio.wait_for(asyncio.gather(held, kept), _GUARD)
    finally:
        threads.close()
    assert ran == ["kept"]


async def test_closing_waits_for_queued_calls_and_refuses_new_ones() -> None:
    threads, gate = CryptoThreads(1), _Gate()
    held = asyncio.ensure_future(threads.run(gate.hold))
    await asyncio.to_thread(gate.entered.wait, _GUARD)
    queued = asyncio.ensure_future(threads.run(lambda: "queued"))
    await asyncio.sleep(0)
    gate.opened.set()
    await asyncio.to_thread(threads.close)
    assert await asyncio.wait_for(asyncio.gather(held, queued), _GUARD) == ["held", "queued"]
    with pytest.raises(RuntimeError, match="closed"):
        await threads.run(lambda: None)


def test_the_same_threads_answer_calls_of_successive_event_loops() -> None:
    threads = CryptoThreads(1)
    try:
        # The first loop is closed when the second starts: its thread carries on.
        assert asyncio.run(threads.run(lambda: "first")) == "first"
        assert asyncio.run(threads.run(lambda: "second")) == "second"
    finally:
        threads.close()


def test_closing_threads_that_never_ran_anything_returns_at_once() -> None:
    CryptoThreads(2).close()

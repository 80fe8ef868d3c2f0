"""Crypto threads that hand calls and results over in groups, not one by one.

``ThreadPoolExecutor`` with ``run_in_executor`` costs ≈ 40-50 µs of CPU per call on the
2-core test machine (a ``concurrent.futures.Future`` with its condition, the work item,
the chained asyncio future, one thread-safe wake-up of the event loop per result), which
is a sixth of an ML-DSA-65 signature. Here each thread takes its fair share of what is
queued, at most :data:`GROUP_MAX` calls, runs them one after the other and hands all
their results to the event loop in one wake-up (docs/performance.md). A call queued
alone, as a lone request's, runs and is answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["GROUP_MAX", "CryptoThreads"]

T = TypeVar("T")
# Calls one thread takes at once: their results wait for each other, ≈ 1 ms of signatures.
GROUP_MAX = 4


# A call's future, and what the call returned or raised.
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


@dataclass(slots=True)
class _Call:
    call: Callable[[], Any]
    future: asyncio.Future[Any]

    def run(self) -> _Outcome:
        if self.future.cancelled():  # its caller stopped waiting before it started
            return self.future, None, None
        try:
            return self.future, self.call(), None
        except StopIteration as exc:  # a future refuses it: its caller would wait forever
            error = RuntimeError("a crypto call raised StopIteration")
            error.__cause__ = exc
            return self.future, None, error
        except BaseException as exc:  # handed to the caller, as an executor would
            return self.future, None, exc


def _deliver(done: list[_Outcome]) -> None:
    for future, result, error in done:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class CryptoThreads:
    """``threads`` threads, started on first use, running calls for event loops."""

    def __init__(self, threads: int, name: str = "pqkms-crypto") -> None:
        self._count = max(1, threads)
        self._name = name
        self._inbox: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    async def run(self, call: Callable[[], T]) -> T:
        """Run ``call`` in one of the threads and return (or raise) what it did."""
        if self._closed:
            raise RuntimeError("the crypto threads are closed")
        if not self._threads:
            self._start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inbox.put(_Call(call, future))
        return await future

    def close(self) -> None:
        """Let queued calls finish, then stop the threads (waits for them)."""
        self._closed = True
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def _start(self) -> None:
        for index in range(self._count):
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"{self._name}-{index}")
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        inbox = self._inbox
        while True:
            first = inbox.get()
            if first is None:
                return
            calls = [first]
            # A fair share: the other threads take theirs of what is queued.
            share = min(GROUP_MAX, 1 + inbox.qsize() // self._count)
            stop = False
            while len(calls) < share:
                try:
                    queued = inbox.get_nowait()
                except queue.Empty:
                    break
                if queued is None:
                    stop = True
                    break
                calls.append(queued)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
            for queued_call in calls:
                by_loop.setdefault(queued_call.future.get_loop(), []).append(queued_call.run())
            for loop, done in by_loop.items():
                # A closed loop: nobody waits for these any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_deliver, done)
            if stop:
                return

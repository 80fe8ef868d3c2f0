"""Run CPU-heavy crypto off the event loop where it pays, and together where it doesn't.

pyca's ML-DSA signing releases the GIL, so a few threads use every core
(:class:`~worker.services.crypto_threads.CryptoThreads`, which hand calls over in groups);
ML-KEM calls are ~50 µs and hold the GIL, so they run inline unless the payload is
large enough to stall other requests.

Inline calls of requests that arrive together run back to back: each waits for the
event loop's next pass, which runs every call queued meanwhile in one go (at most
``GROUP_LIMIT``). Between other Python work OpenSSL's code and tables leave the CPU
cache; in a row a seal costs ≈ 20 % less (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from worker.services.crypto_threads import CryptoThreads

__all__ = ["GROUP_LIMIT", "INLINE_LIMIT_BYTES", "CryptoRunner"]

T = TypeVar("T")
INLINE_LIMIT_BYTES = 64 * 1024
# Calls run in one pass of the event loop, ≈ 1 ms of seals: a request arriving
# meanwhile waits no longer than for one slice of a batch.
GROUP_LIMIT = 16

_Queued = tuple[Callable[[], Any], "asyncio.Future[Any]"]


class CryptoRunner:
    """A few threads for crypto calls, and the queue of grouped inline calls."""

    def __init__(self, threads: int) -> None:
        self._pool = CryptoThreads(threads)
        self._submitted = 0
        self._queued: list[_Queued] = []

    @property
    def submitted(self) -> int:
        """Calls handed to the pool and not finished yet (running or queued)."""
        return self._submitted

    async def in_thread(self, call: Callable[[], T]) -> T:
        """Run ``call`` in the pool and await its result."""
        self._submitted += 1
        try:
            return await self._pool.run(call)
        finally:
            self._submitted -= 1

    async def sized(self, size: int, call: Callable[[], T]) -> T:
        """Inline (grouped with other requests' calls) for small inputs, in the pool for
        large ones."""
        if size <= INLINE_LIMIT_BYTES:
            return await self.together(call)
        return await self.in_thread(call)

    async def together(self, call: Callable[[], T]) -> T:
        """Run ``call`` on the event loop in its next pass, with every call queued until
        then."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._run_queued)
        self._queued.append((call, future))
        return await future

    def _run_queued(self) -> None:
        queued = self._queued[:GROUP_LIMIT]
        del self._queued[:GROUP_LIMIT]
        if self._queued:
            asyncio.get_running_loop().call_soon(self._run_queued)
        for call, future in queued:
            if future.cancelled():
                continue
            try:
                result = call()
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def close(self) -> None:
        """Stop the threads (waits for queued and running calls)."""
        self._pool.close()

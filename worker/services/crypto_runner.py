"""Run CPU-heavy crypto off the event loop where it pays.

pyca's ML-DSA signing releases the GIL, so a small thread pool uses every core;
ML-KEM calls are ~50 µs and hold the GIL, so they run inline unless the payload is
large enough to stall other requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["CryptoRunner", "INLINE_LIMIT_BYTES"]

T = TypeVar("T")
INLINE_LIMIT_BYTES = 64 * 1024


class CryptoRunner:
    """A bounded thread pool for crypto calls."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pqkms-crypto")
        self._submitted = 0

    @property
    def submitted(self) -> int:
        """Calls handed to the pool and not finished yet (running or queued)."""
        return self._submitted

    async def in_thread(self, call: Callable[[], T]) -> T:
        """Run ``call`` in the pool and await its result."""
        self._submitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        finally:
            self._submitted -= 1

    async def sized(self, size: int, call: Callable[[], T]) -> T:
        """Inline for small inputs, in the pool for large ones."""
        if size <= INLINE_LIMIT_BYTES:
            return call()
        return await self.in_thread(call)

    def close(self) -> None:
        """Stop the pool (waits for running calls)."""
        self._pool.shutdown(wait=True)

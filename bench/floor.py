"""The crypto floor: each operation in a plain loop, in 1 and in N processes."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from bench.fixture import LocalKeys, Seeds, crypto_call
from bench.measure import Measurement, summarize

__all__ = ["CryptoFloor"]


def _ready() -> bool:
    return True


def _loop(seeds: Seeds, operation: str, start_at: float, duration: float,
          max_ops: int, warmup: float) -> Measurement:
    """Run in a child process: warm up, wait for the common start, loop, report."""
    keys = LocalKeys(seeds)
    call = crypto_call(keys, operation)
    warm_until = time.perf_counter() + warmup
    call()
    while time.perf_counter() < warm_until:
        call()
    while time.time() < start_at:
        time.sleep(0.0005)
    latencies: list[float] = []
    clock = time.perf_counter
    started = clock()
    deadline = started + duration
    now = started
    while len(latencies) < max_ops and now < deadline:
        call()
        after = clock()
        latencies.append(after - now)
        now = after
    return Measurement(len(latencies), now - started, latencies)


class CryptoFloor:
    """A pool of spawned processes that run the crypto loops."""

    def __init__(self, processes: int, seeds: Seeds) -> None:
        self.processes = processes
        self._seeds = seeds
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=processes, mp_context=context)
        # Spawn and import in every process before anything is timed.
        for future in [self._pool.submit(_ready) for _ in range(processes * 2)]:
            future.result()

    def measure(self, operation: str, duration: float, max_ops: int,
                warmup: float) -> Measurement:
        """``operation`` in every process at once; ops add up, latencies merge."""
        per_process = max(1, max_ops // self.processes)
        start_at = time.time() + warmup + 0.3
        futures = [
            self._pool.submit(_loop, self._seeds, operation, start_at, duration,
                              per_process, warmup)
            for _ in range(self.processes)
        ]
        return summarize([future.result() for future in futures])

    def close(self) -> None:
        self._pool.shutdown(wait=True)

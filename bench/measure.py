"""Closed-loop load generation and the figures of one measurement."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Measurement", "closed_loop", "percentile", "summarize"]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass
class Measurement:
    """Completed operations over a wall-clock window, with per-operation latencies."""

    ops: int
    seconds: float
    latencies: list[float] = field(repr=False)
    errors: int = 0
    first_error: str | None = None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, float | int | str | None]:
        ordered = sorted(self.latencies)
        return {
            "ops": self.ops,
            "seconds": round(self.seconds, 4),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_ms": round(percentile(ordered, 0.50) * 1000, 4),
            "p99_ms": round(percentile(ordered, 0.99) * 1000, 4),
            "errors": self.errors,
            "first_error": self.first_error,
        }


def summarize(parts: list[Measurement]) -> Measurement:
    """Several processes measured over the same window: ops add, the window is the longest."""
    latencies: list[float] = []
    for part in parts:
        latencies.extend(part.latencies)
    errors = sum(part.errors for part in parts)
    first = next((part.first_error for part in parts if part.first_error), None)
    return Measurement(
        ops=sum(part.ops for part in parts),
        seconds=max(part.seconds for part in parts),
        latencies=latencies,
        errors=errors,
        first_error=first,
    )


Call = Callable[[], Awaitable[str | None]]
"""One request; returns ``None`` on success, else a short description of the error."""


async def closed_loop(
    call: Call, in_flight: int, duration: float, max_ops: int, warmup: float,
    on_window_start: Callable[[], None] | None = None,
) -> Measurement:
    """Keep ``in_flight`` requests outstanding until ``duration`` or ``max_ops`` is reached.

    A warm-up of ``warmup`` seconds (at least one round of requests) is not recorded;
    ``on_window_start`` is called when it is over, as the recorded window opens (e.g. to
    start a CPU meter, so that the warm-up's CPU is not charged to the recorded requests).
    """
    warm_deadline = time.perf_counter() + warmup

    async def warm() -> None:
        await call()
        while time.perf_counter() < warm_deadline:
            await call()

    await asyncio.gather(*(warm() for _ in range(in_flight)))
    if on_window_start is not None:
        on_window_start()

    latencies: list[float] = []
    issued = 0
    errors = 0
    first_error: str | None = None
    deadline = time.perf_counter() + duration

    async def runner() -> None:
        nonlocal issued, errors, first_error
        while issued < max_ops and time.perf_counter() < deadline:
            issued += 1
            started = time.perf_counter()
            error = await call()
            if error is None:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
                first_error = first_error or error

    started = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    return Measurement(len(latencies), elapsed, latencies, errors, first_error)

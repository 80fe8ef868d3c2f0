"""A job's status never reports counts read from part of its results."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.jobs.service import HEADER_FAILED, HEADER_ITEMS, JobService


class _Results:
    """Result headers of ``available`` chunks, then silence (as a slow stream)."""

    def __init__(self, available: int) -> None:
        self._left = available
        self.unsubscribed = False

    async def next_msg(self, timeout: float) -> Any:
        if self._left == 0:
            raise TimeoutError
        self._left -= 1
        return SimpleNamespace(headers={HEADER_ITEMS: "10", HEADER_FAILED: "1"})

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


def _service(results: _Results) -> JobService:
    async def subscribe(*_: Any, **__: Any) -> _Results:
        return results

    streams = SimpleNamespace(js=SimpleNamespace(subscribe=subscribe))
    return JobService(cast(Any, streams), cast(Any, None))


async def test_all_results_are_counted() -> None:
    results = _Results(available=3)
    assert await _service(results)._counts("pattern", 3) == (30, 3)
    assert results.unsubscribed


async def test_results_that_do_not_all_arrive_are_a_503_not_a_lower_count() -> None:
    results = _Results(available=2)
    with pytest.raises(ServiceError) as unavailable:
        await _service(results)._counts("pattern", 3)
    assert unavailable.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert results.unsubscribed

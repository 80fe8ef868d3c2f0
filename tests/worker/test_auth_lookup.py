"""Authenticator: concurrent cache misses for one API key share one database lookup."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import pytest

from schemas.algorithms import Plan
from schemas.errors import ErrorCode
from worker.errors import ServiceError
from worker.services.auth import Authenticator
from worker.store import TenantRecord

if TYPE_CHECKING:
    from worker.store import KeyStore

_KEY = "qph_" + "k" * 43


class _SlowStore:
    """Answers ``authenticate`` after ``release`` is set, counting the calls."""

    def __init__(self, answer: TenantRecord | None) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self._answer = answer

    async def authenticate(self, api_key: str) -> TenantRecord | None:
        self.calls += 1
        await self.release.wait()
        return self._answer


async def _many(auth: Authenticator, store: _SlowStore, count: int) -> list[object]:
    waiting = [asyncio.ensure_future(auth.authenticate(_KEY, f"r{i}")) for i in range(count)]
    await asyncio.sleep(0)
    store.release.set()
    return await asyncio.gather(*waiting, return_exceptions=True)


async def test_concurrent_misses_share_one_lookup() -> None:
    store = _SlowStore(TenantRecord("t-1", "acme", Plan.PRO))
    auth = Authenticator(cast("KeyStore", store))
    callers = await _many(auth, store, 50)
    assert store.calls == 1
    assert {getattr(c, "tenant_id", None) for c in callers} == {"t-1"}
    assert [getattr(c, "request_id", None) for c in callers] == [f"r{i}" for i in range(50)]


async def test_a_shared_unknown_key_is_401_for_everyone_and_not_cached() -> None:
    store = _SlowStore(None)
    auth = Authenticator(cast("KeyStore", store))
    results = await _many(auth, store, 10)
    assert store.calls == 1
    assert all(isinstance(r, ServiceError) and r.code is ErrorCode.AUTH for r in results)
    with pytest.raises(ServiceError):
        await auth.authenticate(_KEY, "again")
    assert store.calls == 2

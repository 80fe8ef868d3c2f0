"""Batch encrypt/decrypt on the lean path: the same answers as the single service, and a
failing item never fails the others."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from schemas.algorithms import Plan
from schemas.errors import ErrorCode
from schemas.subjects import Subject
from tests.support.kem_batch import VersionOneKeys as _Keys
from tests.support.kem_batch import b64, batch_service
from worker.crypto import seal
from worker.services import batch as batch_module
from worker.services import batch_inline
from worker.services.batch import BatchService
from worker.services.context import Caller

CALLER = Caller(tenant_id="t-1", plan=Plan.ENTERPRISE, request_id="r-1")


@pytest.fixture
def keys() -> _Keys:
    return _Keys()


@pytest.fixture
def service(keys: _Keys) -> BatchService:
    return batch_service(keys)


async def test_lean_and_model_items_answer_alike(service: BatchService, keys: _Keys) -> None:
    items: list[Any] = [
        {"plaintext": b64(b"one"), "reference": "a"},                  # lean
        {"plaintext": b64(b"two"), "mode": "standard"},                 # lean
        {"plaintext": b64(b"three"), "key_version": 1, "extra": 1},     # model: refused
        {"plaintext": "not base64!"},                                    # model: refused
        {"plaintext": b64(b"four"), "key_version": 9, "reference": "b"},  # not found
        {"plaintext": b64(b"x" * 5000)},                                # over the limit
    ]
    outcome = await service.run(Subject.KEM_ENCRYPT, CALLER, items, key_version=1)
    results = outcome.results
    assert [("data" in r, r.get("reference")) for r in results] == [
        (True, "a"), (True, None), (False, None), (False, None), (False, "b"), (False, None)]
    assert results[2]["error"]["code"] == results[3]["error"]["code"] == "ERR_INVALID_001"
    assert results[4]["error"]["code"] == "ERR_KEM_005"
    assert "over the 4096-byte limit" in results[5]["error"]["message"]
    assert (outcome.total, outcome.succeeded, outcome.failed) == (6, 2, 4)
    assert keys.lookups == 2  # one per key version, not one per item

    sealed = [{"ciphertext": r["data"]["ciphertext"], "reference": str(i)}
              for i, r in enumerate(results[:2])]
    sealed.append({"ciphertext": b64(b"garbage" * 10)})
    opened = await service.run(Subject.KEM_DECRYPT, CALLER, sealed, key_version=1)
    assert [base64.b64decode(r["data"]["plaintext"]) for r in opened.results[:2]] == [
        b"one", b"two"]
    assert opened.results[1]["data"] == {"plaintext": b64(b"two"), "key_version": 1,
                                         "algorithm": "Kyber768"}
    assert opened.results[2]["error"]["message"].startswith("Decryption failed")


async def test_a_crashing_item_fails_alone(service: BatchService,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real_seal = seal
    calls = 0

    def flaky_seal(*args: Any) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        return real_seal(*args)

    monkeypatch.setattr(batch_inline, "seal", flaky_seal)
    items = [{"plaintext": b64(bytes([i])), "reference": str(i)} for i in range(3)]
    outcome = await service.run(Subject.KEM_ENCRYPT, CALLER, items, key_version=1)
    assert ["data" in r for r in outcome.results] == [True, False, True]
    assert outcome.results[1] == {"reference": "1", "error": {
        "code": "ERR_INTERNAL_001", "error_code": "ERR_INTERNAL_001",
        "message": ErrorCode.INTERNAL.default_message}}


async def test_a_long_batch_lets_other_requests_run_between_its_slices(
    service: BatchService,
) -> None:
    items = [{"plaintext": b64(b"x" * 64)} for _ in range(batch_module._ITEMS_PER_SLICE * 4)]
    events: list[str] = []

    async def other_request() -> None:
        events.append("other request")

    async def long_batch() -> None:
        outcome = await service.run(Subject.KEM_ENCRYPT, CALLER, items, 1, "Kyber768")
        assert outcome.failed == 0
        events.append("batch done")

    await asyncio.gather(long_batch(), other_request())

    # Started second, answered first: the batch handed the event loop back.
    assert events == ["other request", "batch done"]


async def test_inline_batches_take_turns_and_each_gets_its_own_results(
    service: BatchService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = batch_module._ITEMS_PER_SLICE * 3
    first = [{"plaintext": b64(b"a" * 32), "reference": f"a{n}"} for n in range(count)]
    second = [{"plaintext": b64(b"b" * 32), "reference": f"b{n}"} for n in range(count)]
    order: list[str] = []
    real_seal = seal

    def spying_seal(key: Any, algorithm: Any, version: int, mode: Any, payload: bytes) -> bytes:
        order.append(chr(payload[0]))
        return real_seal(key, algorithm, version, mode, payload)

    monkeypatch.setattr(batch_inline, "seal", spying_seal)
    one, two = await asyncio.gather(
        service.run(Subject.KEM_ENCRYPT, CALLER, first, 1, "Kyber768"),
        service.run(Subject.KEM_ENCRYPT, CALLER, second, 1, "Kyber768"),
    )

    assert order == ["a"] * count + ["b"] * count  # one batch's slices, then the other's
    assert [result["reference"] for result in one.results] == [f"a{n}" for n in range(count)]
    assert [result["reference"] for result in two.results] == [f"b{n}" for n in range(count)]

"""Batch sign and verify items skip the models in their common form (verify items run
inline, slice by slice, as encrypt and decrypt items do), and answer every item exactly
as the model path does."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from schemas.algorithms import Plan
from schemas.batch import SignBatchRequest, VerifyBatchRequest
from schemas.subjects import Subject
from tests.support.signature_keys import OneSignatureKey
from worker.services import batch as batch_module
from worker.services.batch import BatchService
from worker.services.batch_items import BatchOutcome
from worker.services.context import Caller
from worker.services.crypto_runner import CryptoRunner
from worker.services.signatures import SignatureService

CALLER = Caller(tenant_id="t-1", plan=Plan.ENTERPRISE, request_id="r-1")
MESSAGE = base64.b64encode(b"hello world!").decode()
CONTEXT = base64.b64encode(b"ctx").decode()


@pytest.fixture
def service() -> BatchService:
    return BatchService(OneSignatureKey(), CryptoRunner(1), max_message_bytes=64, max_items=1000,
                        message_limit=8 * 1024 * 1024)


def _sign_items() -> list[Any]:
    return [
        {"message": MESSAGE},
        {"message": MESSAGE, "reference": "with a reference", "context": CONTEXT},
        {"message": MESSAGE, "key_version": 2},                      # not found
        {"message": MESSAGE, "algorithm": "Composite-ML-DSA"},
        {"message": MESSAGE, "key_version": "1"},                    # model: invalid
        {"message": base64.b64encode(b"m" * 65).decode()},           # too large
        {"message": "aGVsbG8h===="},                                 # not canonical
        {"message": MESSAGE, "extra": 1},
        {"message": MESSAGE, "reference": 5},
        "not an object",
    ]


async def _batch(service: BatchService, single: Subject, items: list[Any]) -> BatchOutcome:
    """As the batch subjects call the service: a validated request that names the key
    version and the algorithm (an ``Algorithm``, not a string) for every item."""
    body = {"items": items, "key_version": 1, "algorithm": "Dilithium3"}
    if single is Subject.SIGNATURE_SIGN:
        return await service.sign(CALLER, SignBatchRequest.model_validate(body))
    return await service.verify(CALLER, VerifyBatchRequest.model_validate(body))


async def _without_lean(service: BatchService, single: Subject, items: list[Any],
                        monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    async def no_lean(self: SignatureService, caller: Caller, body: Any) -> None:
        return None

    with monkeypatch.context() as patch:
        patch.setattr(SignatureService, "sign_lean", no_lean)
        patch.setattr(SignatureService, "verify_lean", no_lean)
        patch.setattr(batch_module, "INLINE_SUBJECTS",
                      frozenset({Subject.KEM_ENCRYPT, Subject.KEM_DECRYPT}))
        return (await _batch(service, single, items)).results


def _model_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Counts the calls of the model path's ``SignatureService.<name>``."""
    calls: list[int] = []
    model_call = getattr(SignatureService, name)

    async def counted(self: SignatureService, caller: Caller, request: Any) -> Any:
        calls.append(1)
        return await model_call(self, caller, request)

    monkeypatch.setattr(SignatureService, name, counted)
    return calls


async def test_verify_items_answer_as_on_the_model_path(
    service: BatchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed = (await service.run(Subject.SIGNATURE_SIGN, CALLER, [{"message": MESSAGE}],
                                key_version=1)).results[0]["data"]["signature"]
    items: list[Any] = [{**item, "signature": signature}
                        if isinstance(item, dict) else item
                        for item in _sign_items()
                        for signature in (signed, base64.b64encode(b"s" * 3309).decode())]
    items.append({"message": MESSAGE})  # no signature
    expected = await _without_lean(service, Subject.SIGNATURE_VERIFY, items, monkeypatch)
    model_calls = _model_calls(monkeypatch, "verify")
    outcome = await _batch(service, Subject.SIGNATURE_VERIFY, items)
    assert outcome.results == expected
    assert outcome.results[0]["data"]["valid"] is True
    assert outcome.results[1]["data"]["valid"] is False
    # Every item the model accepts here is in the common form: none took the model path.
    assert model_calls == []


async def test_sign_items_answer_as_on_the_model_path(
    service: BatchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _sign_items()
    expected = await _without_lean(service, Subject.SIGNATURE_SIGN, items, monkeypatch)
    model_calls = _model_calls(monkeypatch, "sign")
    outcome = await _batch(service, Subject.SIGNATURE_SIGN, items)
    assert [_unsigned(result) for result in outcome.results] == [
        _unsigned(result) for result in expected]
    assert outcome.failed == sum(1 for result in expected if "error" in result)
    # ML-DSA signs with fresh randomness: each signature is checked by verifying it.
    verify_items = [{"message": MESSAGE, "signature": result["data"]["signature"],
                     **({"context": CONTEXT} if index == 1 else {})}
                    for index, result in enumerate(outcome.results[:2])]
    verified = await service.run(Subject.SIGNATURE_VERIFY, CALLER, verify_items,
                                 key_version=1)
    assert [result["data"]["valid"] for result in verified.results] == [True, True]
    assert model_calls == []  # every item the model accepts here is read lean


async def test_a_verify_item_too_large_to_run_inline_goes_to_the_single_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = BatchService(OneSignatureKey(), CryptoRunner(1), max_message_bytes=128 * 1024,
                           max_items=10, message_limit=8 * 1024 * 1024)
    large = base64.b64encode(b"L" * (70 * 1024)).decode()
    signed = (await service.run(Subject.SIGNATURE_SIGN, CALLER, [{"message": large}],
                                key_version=1)).results[0]["data"]["signature"]
    items = [{"message": large, "signature": signed, "reference": "large"},
             {"message": MESSAGE, "signature": signed, "reference": "small"}]
    model_calls = _model_calls(monkeypatch, "verify")
    in_thread: list[int] = []
    real_in_thread = CryptoRunner.in_thread

    async def counted(self: CryptoRunner, call: Any) -> Any:
        in_thread.append(1)
        return await real_in_thread(self, call)

    monkeypatch.setattr(CryptoRunner, "in_thread", counted)
    outcome = await _batch(service, Subject.SIGNATURE_VERIFY, items)
    assert [result["data"]["valid"] for result in outcome.results] == [True, False]
    assert [result["reference"] for result in outcome.results] == ["large", "small"]
    # The large one through verify_lean, in the thread pool; the small one inline.
    assert model_calls == [] and in_thread == [1]


def _unsigned(result: dict[str, Any]) -> dict[str, Any]:
    if "data" not in result:
        return result
    return {**result, "data": {**result["data"], "signature": "…"}}

"""The lean reading of sign and verify bodies never accepts what the model refuses, reads
what it accepts exactly as the model does, and the service answers both paths alike."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import signature
from schemas.algorithms import Algorithm, Plan
from schemas.errors import ErrorCode
from tests.support.signature_keys import OneSignatureKey
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.crypto_runner import CryptoRunner
from worker.services.signature_items import read_signature_item
from worker.services.signatures import SignatureService

_MESSAGE = base64.b64encode(b"hello world!").decode()
_SIGNATURE = base64.b64encode(b"s" * 3309).decode()
_CONTEXT = base64.b64encode(b"c" * 255).decode()
_CASES: list[Any] = [
    {"message": _MESSAGE, "key_version": 1},
    {"message": _MESSAGE, "key_version": 2, "algorithm": "Dilithium3"},
    {"message": _MESSAGE, "key_version": 1, "algorithm": "Composite-ML-DSA"},
    {"message": _MESSAGE, "key_version": 1, "algorithm": "Kyber768"},
    {"message": _MESSAGE, "key_version": 1, "algorithm": "dilithium3"},
    {"message": _MESSAGE, "key_version": 1, "algorithm": None},
    {"message": _MESSAGE, "key_version": 1, "algorithm": 3},
    {"message": _MESSAGE, "key_version": 1, "context": _CONTEXT},
    {"message": _MESSAGE, "key_version": 1, "context": None},
    {"message": _MESSAGE, "key_version": 1, "context": ""},
    {"message": _MESSAGE, "key_version": 1, "context": base64.b64encode(b"c" * 256).decode()},
    {"message": _MESSAGE, "key_version": 1, "context": "QQ="},
    {"message": _MESSAGE, "key_version": 1, "context": 5},
    {"message": _MESSAGE, "key_version": True},
    {"message": _MESSAGE, "key_version": 0},
    {"message": _MESSAGE, "key_version": 2**31 - 1},
    {"message": _MESSAGE, "key_version": 2**31},
    {"message": _MESSAGE, "key_version": 1.0},
    {"message": _MESSAGE, "key_version": "1"},
    {"message": _MESSAGE, "key_version": None},
    {"message": _MESSAGE},
    {"message": _MESSAGE[:-1], "key_version": 1},
    {"message": "aGVsbG8=\n", "key_version": 1},
    {"message": "aGVs bG8=", "key_version": 1},
    {"message": "aGVsbG8_", "key_version": 1},
    {"message": "aGVsbG8h====", "key_version": 1},
    {"message": "", "key_version": 1},
    {"message": None, "key_version": 1},
    {"message": [1], "key_version": 1},
    {"message": _MESSAGE, "key_version": 1, "reference": "r"},
    {"message": _MESSAGE, "key_version": 1, "extra": 1},
    {"key_version": 1},
    {},
    [],
    "text",
]


def _with_signature(case: Any, value: Any = _SIGNATURE) -> Any:
    return {**case, "signature": value} if isinstance(case, dict) else case


_VERIFY_CASES: list[Any] = [
    *(_with_signature(case) for case in _CASES),
    *_CASES,  # no signature at all
    _with_signature(_CASES[0], ""),
    _with_signature(_CASES[0], "QQ="),
    _with_signature(_CASES[0], None),
    _with_signature(_CASES[0], 7),
]


def _model_reading(model: type[BaseModel], body: Any) -> tuple[Any, ...] | None:
    try:
        request = model.model_validate(body)
    except ValidationError:
        return None
    return (request.message, getattr(request, "signature", None),  # type: ignore[attr-defined]
            request.context, request.key_version, request.algorithm)  # type: ignore[attr-defined]


def _check(model: type[BaseModel], body: Any, *, verify: bool) -> None:
    lean = read_signature_item(body, verify=verify)
    if lean is None:
        return  # the model reads it; nothing to compare
    expected = _model_reading(model, body)
    assert expected is not None, f"lean path accepted a body the model refuses: {body!r}"
    assert tuple(lean) == expected
    assert type(lean.algorithm) is Algorithm


@pytest.mark.parametrize("body", _CASES)
def test_sign_bodies_read_as_the_model_reads_them(body: Any) -> None:
    _check(signature.SignRequest, body, verify=False)


@pytest.mark.parametrize("body", _VERIFY_CASES)
def test_verify_bodies_read_as_the_model_reads_them(body: Any) -> None:
    _check(signature.VerifyRequest, body, verify=True)


def test_the_common_bodies_take_the_lean_path() -> None:
    sign = read_signature_item({"message": _MESSAGE, "key_version": 3}, verify=False)
    assert sign == (b"hello world!", None, None, 3, Algorithm.DILITHIUM3)
    verify = read_signature_item(_with_signature(_CASES[7]), verify=True)
    assert verify == (b"hello world!", b"s" * 3309, b"c" * 255, 1, Algorithm.DILITHIUM3)


def test_random_bodies_never_disagree_with_the_model() -> None:
    rng = random.Random(11)
    values: list[Any] = [_MESSAGE, _SIGNATURE, _CONTEXT, "QQ==", "QQ=", "", None, 1, 0, -1,
                         2**31 - 1, True, 1.5, "1", "Dilithium3", "Composite-ML-DSA",
                         "Kyber768", [], {}]
    keys = ["message", "signature", "context", "key_version", "algorithm", "reference",
            "other"]
    for _ in range(3000):
        body = {key: rng.choice(values) for key in rng.sample(keys, rng.randint(0, 6))}
        _check(signature.SignRequest, body, verify=False)
        _check(signature.VerifyRequest, body, verify=True)


# -- the service on both paths -------------------------------------------------------------

CALLER = Caller(tenant_id="t-1", plan=Plan.ENTERPRISE, request_id="r-1")


@pytest.fixture
def service() -> SignatureService:
    return SignatureService(OneSignatureKey(), CryptoRunner(1), max_message_bytes=64)


async def test_a_lean_signature_is_the_model_path_s_reply(service: SignatureService) -> None:
    body = {"message": _MESSAGE, "key_version": 1, "context": _CONTEXT}
    lean = await service.sign_lean(CALLER, body)
    model = await service.sign(CALLER, signature.SignRequest.model_validate(body))
    assert lean is not None
    expected = model.model_dump(mode="json")
    assert list(lean.json_data()) == list(expected)  # same fields, same order
    assert {**lean.json_data(), "signature": ""} == {**expected, "signature": ""}
    for signed in (lean.json_data()["signature"], expected["signature"]):
        verified = await service.verify_lean(CALLER, {**body, "signature": signed})
        assert verified is not None and verified.json_data()["valid"] is True


@pytest.mark.parametrize("tampered", [False, True])
async def test_a_lean_verification_is_the_model_path_s_reply(
    service: SignatureService, tampered: bool
) -> None:
    signed = await service.sign_lean(CALLER, {"message": _MESSAGE, "key_version": 1})
    assert signed is not None
    message = base64.b64encode(b"hello world?" if tampered else b"hello world!").decode()
    body = {"message": message, "key_version": 1, "signature": signed.json_data()["signature"]}
    lean = await service.verify_lean(CALLER, body)
    model = await service.verify(CALLER, signature.VerifyRequest.model_validate(body))
    assert lean is not None
    assert lean.json_data() == model.model_dump(mode="json")
    assert lean.json_data()["valid"] is not tampered
    assert (lean.algorithm, lean.key_version) == (Algorithm.DILITHIUM3, 1)


async def test_both_paths_fail_alike(service: SignatureService) -> None:
    for body, code in (({"message": _MESSAGE, "key_version": 2}, ErrorCode.NOT_FOUND),
                       ({"message": base64.b64encode(b"m" * 65).decode(), "key_version": 1},
                        ErrorCode.INVALID)):
        with pytest.raises(ServiceError) as lean:
            await service.sign_lean(CALLER, body)
        with pytest.raises(ServiceError) as model:
            await service.sign(CALLER, signature.SignRequest.model_validate(body))
        assert (lean.value.code, lean.value.message) == (model.value.code, model.value.message)
        assert lean.value.code is code


async def test_other_bodies_are_left_to_the_model(service: SignatureService) -> None:
    assert await service.sign_lean(CALLER, {"message": _MESSAGE, "key_version": "1"}) is None
    assert await service.verify_lean(CALLER, {"message": _MESSAGE, "key_version": 1}) is None

"""The lean reading of KEM bodies and batch items never accepts what the model refuses, and
reads what it accepts exactly as the model does."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import kem
from schemas.algorithms import Algorithm
from schemas.batch import BatchResult
from schemas.errors import ErrorCode
from worker.services.batch_items import BatchOutcome, data_item, error_item
from worker.services.kem_items import read_kem_item

_B64 = base64.b64encode(b"hello world!").decode()
_CASES: list[dict[str, Any]] = [
    {"plaintext": _B64},
    {"plaintext": _B64, "key_version": 2},
    {"plaintext": _B64, "reference": "row-1"},
    {"plaintext": _B64, "reference": None},
    {"plaintext": _B64, "reference": 7},
    {"plaintext": _B64, "reference": "r" * 257},
    {"plaintext": _B64, "algorithm": "X-Wing"},
    {"plaintext": _B64, "algorithm": "Kyber768"},
    {"plaintext": _B64, "algorithm": "Dilithium3"},
    {"plaintext": _B64, "algorithm": None},
    {"plaintext": _B64, "algorithm": 3},
    {"plaintext": _B64, "mode": "standard"},
    {"plaintext": _B64, "mode": "deterministic"},
    {"plaintext": _B64, "mode": "deterministic", "salt": base64.b64encode(b"s" * 32).decode()},
    {"plaintext": _B64, "salt": base64.b64encode(b"s" * 32).decode()},
    {"plaintext": _B64, "key_version": True},
    {"plaintext": _B64, "key_version": 0},
    {"plaintext": _B64, "key_version": 2**31},
    {"plaintext": _B64, "key_version": 1.0},
    {"plaintext": _B64, "key_version": "1"},
    {"plaintext": _B64, "key_version": None},
    {"plaintext": _B64[:-1]},
    {"plaintext": "aGVsbG8=\n"},
    {"plaintext": "aGVs bG8="},
    {"plaintext": "aGVsbG8_"},
    {"plaintext": "ééé="},
    {"plaintext": ""},
    {"plaintext": None},
    {"plaintext": [1]},
    {"plaintext": _B64, "extra": 1},
    {"ciphertext": _B64},
    {},
    [],
    "text",
]
_DEFAULTS: list[dict[str, Any]] = [
    {"key_version": 1},
    {"key_version": 1, "algorithm": Algorithm.XWING},
    {},
    {"key_version": "1"},
    {"key_version": 1, "algorithm": "nope"},
]


def _model_reading(model: type[BaseModel], field: str, item: Any,
                   defaults: dict[str, Any]) -> tuple[bytes, int, Algorithm, Any] | None:
    """What BatchService's model path makes of the item (None: an error item)."""
    if not isinstance(item, dict):
        return None
    fields = dict(item)
    reference = fields.pop("reference", None)
    if reference is not None and not (isinstance(reference, str) and len(reference) <= 256):
        return None
    try:
        request = model.model_validate({**defaults, **fields})
    except ValidationError:
        return None
    if getattr(request, "salt", None) is not None:
        return None  # deterministic mode: the lean path must leave these alone
    return getattr(request, field), request.key_version, request.algorithm, reference  # type: ignore[attr-defined]


def _single_reading(model: type[BaseModel], field: str,
                    item: Any) -> tuple[bytes, int, Algorithm, Any] | None:
    """What the envelope handler's model path makes of a single request's body."""
    try:
        request = model.model_validate(item)
    except ValidationError:
        return None
    if getattr(request, "salt", None) is not None:
        return None
    return getattr(request, field), request.key_version, request.algorithm, None  # type: ignore[attr-defined]


def _check(model: type[BaseModel], field: str, item: Any, defaults: dict[str, Any]) -> None:
    single = read_kem_item(item, field, in_batch=False)
    if single is not None:
        assert "reference" not in item
        expected_single = _single_reading(model, field, item)
        assert expected_single is not None, f"lean path accepted a body the model refuses: {item!r}"
        assert (single.payload, single.key_version, single.algorithm, None) == expected_single
    lean = read_kem_item(item, field, defaults)
    if lean is None:
        return  # the model reads it; nothing to compare
    expected = _model_reading(model, field, item, defaults)
    assert expected is not None, f"lean path accepted what the model refuses: {item!r}"
    assert (lean.payload, lean.key_version, lean.algorithm, lean.reference) == expected
    assert type(lean.algorithm) is Algorithm


@pytest.mark.parametrize("defaults", _DEFAULTS)
@pytest.mark.parametrize("item", _CASES)
def test_encrypt_items_read_as_the_model_reads_them(item: Any, defaults: dict[str, Any]) -> None:
    _check(kem.EncryptRequest, "plaintext", item, defaults)


@pytest.mark.parametrize("defaults", _DEFAULTS)
@pytest.mark.parametrize("item", _CASES)
def test_decrypt_items_read_as_the_model_reads_them(item: Any, defaults: dict[str, Any]) -> None:
    swapped = ({("ciphertext" if k == "plaintext" else k): v for k, v in item.items()}
               if isinstance(item, dict) else item)
    _check(kem.DecryptRequest, "ciphertext", swapped, defaults)


def test_the_common_item_takes_the_lean_path() -> None:
    read = read_kem_item({"plaintext": _B64, "reference": "r"}, "plaintext", {"key_version": 3})
    assert read is not None
    assert (read.payload, read.key_version, read.algorithm) == (b"hello world!", 3,
                                                                Algorithm.KYBER768)


def test_random_items_never_disagree_with_the_model() -> None:
    rng = random.Random(7)
    values: list[Any] = [_B64, "QQ==", "QQ=", "", None, 1, 0, -1, 2**31 - 1, True, 1.5, "1",
                         "Kyber768", "X-Wing", "Dilithium3", "standard", "deterministic",
                         "r" * 256, "r" * 257, [], {}]
    keys = ["plaintext", "ciphertext", "key_version", "algorithm", "mode", "reference",
            "salt", "other"]
    for _ in range(3000):
        item = {key: rng.choice(values) for key in rng.sample(keys, rng.randint(0, 5))}
        defaults = rng.choice(_DEFAULTS)
        _check(kem.EncryptRequest, "plaintext", item, defaults)
        _check(kem.DecryptRequest, "ciphertext", item, defaults)


def test_outcome_matches_the_documented_batch_result() -> None:
    outcome = BatchOutcome([
        data_item({"ciphertext": "QQ==", "key_version": 1, "algorithm": "Kyber768"}, "a"),
        data_item({"ciphertext": "QQ==", "key_version": 1, "algorithm": "Kyber768"}, None),
        error_item(ErrorCode.INVALID, "Validation failed: x", "b"),
        error_item(ErrorCode.KEM_KEY_NOT_FOUND, None, None),
    ], failed=2)
    data = outcome.json_data()
    assert BatchResult.model_validate(data).model_dump(mode="json") == data
    assert (data["total"], data["succeeded"], data["failed"]) == (4, 2, 2)
    assert list(data["results"][0]) == ["reference", "data"]
    assert list(data["results"][2]) == ["reference", "error"]

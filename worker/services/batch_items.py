"""What a batch is made of on the worker: items in their plain JSON form, and the lean
reading of a KEM item.

A batch reply is plain dicts from the start: a pydantic result model per item and a
``model_dump`` of the 100-item whole cost more than the item's encryption (≈ 35 µs of
≈ 110 µs per item, docs/performance.md). The dicts have exactly the shape
``schemas.batch.BatchResult`` documents (tests compare them).

:func:`read_kem_item` reads an encrypt or decrypt item the way the request model would,
for the common item only — the binary field in canonical standard base64, an optional
reference, key version and algorithm, nothing else. For anything else it answers
``None`` and the item goes through the request model, which gives it the very same
answer or its validation error: the lean reading never accepts what the model refuses.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas.algorithms import DEFAULT_KEM_ALGORITHM, KEM_ALGORITHMS, Algorithm, EncryptMode
from schemas.batch import MAX_REFERENCE_CHARS
from schemas.errors import ErrorCode

__all__ = ["BatchOutcome", "JsonObject", "KemItem", "data_item", "error_item", "read_kem_item"]

JsonObject = dict[str, Any]
_KEM_BY_NAME: dict[str, Algorithm] = {algorithm.value: algorithm for algorithm in KEM_ALGORITHMS}
_MAX_KEY_VERSION = 2**31 - 1
_STANDARD = EncryptMode.STANDARD.value


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """A batch's results in item order (plain JSON objects), with counts."""

    results: list[JsonObject]
    failed: int

    @property
    def total(self) -> int:
        """How many items."""
        return len(self.results)

    @property
    def succeeded(self) -> int:
        """Items with ``data``."""
        return len(self.results) - self.failed

    def json_data(self) -> JsonObject:
        """The ``BatchResult`` object of the reply."""
        return {"results": self.results, "total": self.total, "succeeded": self.succeeded,
                "failed": self.failed}


def error_item(code: ErrorCode, message: str | None, reference: str | None) -> JsonObject:
    """One item's error object (``reference`` first when there is one)."""
    error = {"code": code.value, "error_code": code.value,
             "message": message or code.default_message}
    return {"error": error} if reference is None else {"reference": reference, "error": error}


def data_item(data: JsonObject, reference: str | None) -> JsonObject:
    """One item's result object."""
    return {"data": data} if reference is None else {"reference": reference, "data": data}


class KemItem(NamedTuple):
    """An encrypt or decrypt item, read: the decoded payload and the key it names."""

    payload: bytes
    key_version: int
    algorithm: Algorithm
    reference: str | None


def _allowed_fields(field: str, with_mode: bool) -> frozenset[str]:
    return frozenset({field, "reference", "key_version", "algorithm",
                      *(("mode",) if with_mode else ())})


_ENCRYPT_FIELDS = _allowed_fields("plaintext", with_mode=True)
_DECRYPT_FIELDS = _allowed_fields("ciphertext", with_mode=False)


def read_kem_item(item: Any, field: str, defaults: Mapping[str, Any]) -> KemItem | None:
    """``item`` read without the request model, or ``None`` for the model to read.

    ``field`` is ``plaintext`` (encrypt: ``mode`` may be ``standard``) or
    ``ciphertext`` (decrypt); ``defaults`` are the batch's ``key_version`` and
    ``algorithm`` for items that leave them out.
    """
    if type(item) is not dict:
        return None
    if not (_ENCRYPT_FIELDS if field == "plaintext" else _DECRYPT_FIELDS).issuperset(item):
        return None
    if "mode" in item and item["mode"] != _STANDARD:
        return None
    encoded = item.get(field)
    reference = item.get("reference")
    version = item["key_version"] if "key_version" in item else defaults.get("key_version")
    name = item["algorithm"] if "algorithm" in item else defaults.get("algorithm",
                                                                       DEFAULT_KEM_ALGORITHM)
    algorithm = _KEM_BY_NAME.get(name) if isinstance(name, str) else None
    if (type(encoded) is not str or len(encoded) % 4
            or (reference is not None and (type(reference) is not str
                                           or len(reference) > MAX_REFERENCE_CHARS))
            or type(version) is not int or not 1 <= version <= _MAX_KEY_VERSION
            or algorithm is None):
        return None
    try:
        # b64decode(validate=True), as the model's field, without its wrapper.
        payload = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    return KemItem(payload, version, algorithm, reference)

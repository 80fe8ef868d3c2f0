"""Batch variants of encrypt, decrypt, sign and verify: many items in, one result each.

``{"items": [<single request body> + optional "reference"], "key_version"?, "algorithm"?}``
→ ``{"results": [{"reference"?, "data"} | {"reference"?, "error"}], "total", "succeeded",
"failed"}``, results in item order. ``key_version`` and ``algorithm`` at the top level are
defaults for items that leave them out; an item's own value wins.

Items stay raw JSON here: each is validated on its own by the worker, so one bad item
gets its own error and never fails the others. The helpers at the end give a cheap upper
bound of a batch's reply size, shared by the worker (to refuse a batch whose reply would
not fit in one NATS message) and the Python client (to split batches and job chunks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from schemas.fields import KemAlgorithm, KeyVersion, SignatureAlgorithm
from schemas.subjects import Subject

__all__ = [
    "BATCH_OF",
    "BatchItemError",
    "BatchItemResult",
    "BatchResult",
    "DEFAULT_MAX_BATCH_ITEMS",
    "DecryptBatchRequest",
    "EncryptBatchRequest",
    "MAX_REFERENCE_CHARS",
    "REPLY_ENVELOPE_BYTES",
    "RawItems",
    "SignBatchRequest",
    "VerifyBatchRequest",
    "batch_cost",
    "item_reply_bound",
    "reply_bound_of",
]

DEFAULT_MAX_BATCH_ITEMS = 1000
MAX_REFERENCE_CHARS = 256
# Envelope, counters and request id around the results list.
REPLY_ENVELOPE_BYTES = 512

_STRICT = ConfigDict(extra="forbid", frozen=True)
_ITEMS_SCHEMA = WithJsonSchema({
    "type": "array",
    "minItems": 1,
    "description": "Single-operation request bodies, each with an optional 'reference' "
                   "(string, at most 256 characters) echoed in its result. An item that "
                   "is not a valid body gets its own error in the results.",
    "items": {},
})
RawItems = Annotated[list[Any], _ITEMS_SCHEMA]


class _BatchRequest(BaseModel):
    model_config = _STRICT
    items: RawItems
    key_version: KeyVersion | None = Field(
        default=None, description="Default key_version for items that leave it out"
    )

    @field_validator("items")
    @classmethod
    def _not_empty(cls, items: list[Any]) -> list[Any]:
        if not items:
            raise PydanticCustomError("items_empty", "must hold at least one item")
        return items


class _KemBatchRequest(_BatchRequest):
    algorithm: KemAlgorithm | None = Field(
        default=None, description="Default algorithm for items that leave it out"
    )


class _SignatureBatchRequest(_BatchRequest):
    algorithm: SignatureAlgorithm | None = Field(
        default=None, description="Default algorithm for items that leave it out"
    )


class EncryptBatchRequest(_KemBatchRequest):
    """``POST /api/v1/kem/encrypt/batch``: items are kem/encrypt bodies."""


class DecryptBatchRequest(_KemBatchRequest):
    """``POST /api/v1/kem/decrypt/batch``: items are kem/decrypt bodies."""


class SignBatchRequest(_SignatureBatchRequest):
    """``POST /api/v1/signature/sign/batch``: items are signature/sign bodies."""


class VerifyBatchRequest(_SignatureBatchRequest):
    """``POST /api/v1/signature/verify/batch``: items are signature/verify bodies."""


class BatchItemError(BaseModel):
    """One item's error: the same fields as the envelope's error object."""

    code: str
    error_code: str
    message: str


class BatchItemResult(BaseModel):
    """One item's outcome: ``data`` (the single operation's result) or ``error``."""

    reference: str | None = None
    data: dict[str, Any] | None = None
    error: BatchItemError | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {key: value for key, value in dumped.items() if value is not None}


class BatchResult(BaseModel):
    """Results in item order, with counts."""

    results: list[BatchItemResult]
    total: int
    succeeded: int
    failed: int


# The batch subject → the single operation each of its items is.
BATCH_OF: dict[Subject, Subject] = {
    Subject.KEM_ENCRYPT_BATCH: Subject.KEM_ENCRYPT,
    Subject.KEM_DECRYPT_BATCH: Subject.KEM_DECRYPT,
    Subject.SIGNATURE_SIGN_BATCH: Subject.SIGNATURE_SIGN,
    Subject.SIGNATURE_VERIFY_BATCH: Subject.SIGNATURE_VERIFY,
}


def batch_cost(body: Mapping[str, Any]) -> int:
    """Rate-limit tokens of a batch: one per item (at least one)."""
    items = body.get("items")
    return len(items) if isinstance(items, list) and items else 1


# Upper bounds for the reply-size estimate, in bytes before base64.
_MAX_KEM_CIPHERTEXT_OVERHEAD = 11 + 1120 + 16 + 2 + 16  # header, X-Wing enc, tag; SIV + len
_MAX_SIGNATURE_BYTES = 3309 + 72  # ML-DSA-65 + DER ECDSA P-256 (Composite-ML-DSA)
_RESULT_FIELDS_BYTES = 160  # key_version, algorithm, keys, quotes, separators
_ERROR_BYTES = 600  # an error object with the longest message we write


def _b64_len(raw_len: int) -> int:
    return 4 * math.ceil(raw_len / 3)


def _str_len(item: Mapping[str, Any], field: str) -> int:
    value = item.get(field)
    return len(value) if isinstance(value, str) else 0


def _encrypt_data(item: Mapping[str, Any]) -> int:
    plaintext = _str_len(item, "plaintext") * 3 // 4
    salt = _str_len(item, "salt") * 3 // 4
    return _b64_len(plaintext + salt + _MAX_KEM_CIPHERTEXT_OVERHEAD)


def _decrypt_data(item: Mapping[str, Any]) -> int:
    return _str_len(item, "ciphertext")  # a plaintext is shorter than its ciphertext


def _sign_data(item: Mapping[str, Any]) -> int:
    return _b64_len(_MAX_SIGNATURE_BYTES)


def _no_data(item: Mapping[str, Any]) -> int:
    return 0


# The bound of an item's ``data`` object before its fixed fields, by single operation.
_DATA_BOUNDS: dict[Subject, Callable[[Mapping[str, Any]], int]] = {
    Subject.KEM_ENCRYPT: _encrypt_data,
    Subject.KEM_DECRYPT: _decrypt_data,
    Subject.SIGNATURE_SIGN: _sign_data,
}


def _names_length(item: Mapping[Any, Any]) -> int:
    try:
        return len("".join(item))  # JSON objects: every name is a string
    except TypeError:
        return sum(map(len, map(str, item)))


def reply_bound_of(single: Subject) -> Callable[[Any], int]:
    """The upper bound of one item's result in a batch reply of ``single`` items, in
    bytes of JSON (the operation looked up once, for a loop over many items)."""
    data_bound = _DATA_BOUNDS.get(single, _no_data)

    def bound(item: Any) -> int:
        # type() first: isinstance against the Mapping ABC costs more than the rest.
        if type(item) is not dict and not isinstance(item, Mapping):
            return _ERROR_BYTES
        reference = item.get("reference")
        reference_bytes = (min(len(reference), MAX_REFERENCE_CHARS)
                           if isinstance(reference, str) else 0) + 20
        # A validation error may quote the field names the caller sent.
        error = _ERROR_BYTES + _names_length(item)
        return reference_bytes + max(error, data_bound(item) + _RESULT_FIELDS_BYTES)

    return bound


def item_reply_bound(single: Subject, item: Any) -> int:
    """An upper bound of one item's result in a batch reply, in bytes of JSON."""
    return reply_bound_of(single)(item)

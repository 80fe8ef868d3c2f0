"""Sign and verify request bodies read without their pydantic models.

:func:`read_signature_item` reads a single sign or verify body the way the request model
would, for the common body only: the message (and, for verify, the signature) in
canonical standard base64, the key version, the algorithm, and a context of at most 255
bytes. For anything else it answers ``None`` and the body goes through the request
model, which gives it the very same answer or its validation error: the lean reading
never accepts what the model refuses (``tests/worker/test_signature_items.py`` checks it
against the model). Skipping the model and the result model saves ≈ 25 µs per request
(docs/performance.md), as :mod:`worker.services.kem_items` does for encrypt and decrypt.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from schemas.algorithms import DEFAULT_SIGNATURE_ALGORITHM, SIGNATURE_ALGORITHMS, Algorithm
from schemas.fields import b64decode_canonical
from schemas.signature import MAX_CONTEXT_BYTES

__all__ = ["SignatureItem", "read_signature_item"]

_BY_NAME: dict[str, Algorithm] = {algorithm.value: algorithm
                                  for algorithm in SIGNATURE_ALGORITHMS}
_MAX_KEY_VERSION = 2**31 - 1
_SIGN_FIELDS = frozenset({"message", "key_version", "algorithm", "context"})
_VERIFY_FIELDS = _SIGN_FIELDS | {"signature"}


class SignatureItem(NamedTuple):
    """A sign or verify body, read: decoded bytes and the key it names."""

    message: bytes
    signature: bytes | None  # verify only
    context: bytes | None
    key_version: int
    algorithm: Algorithm


def read_signature_item(body: Any, *, verify: bool) -> SignatureItem | None:
    """``body`` read without the request model, or ``None`` for the model to read.

    ``verify``: a verify body (``signature`` required), else a sign body.
    """
    if type(body) is not dict or not (_VERIFY_FIELDS if verify else _SIGN_FIELDS).issuperset(
            body):
        return None
    encoded_message: Any = body.get("message")
    encoded_signature: Any = body.get("signature")
    encoded_context: Any = body.get("context")
    version: Any = body.get("key_version")
    name: Any = body.get("algorithm", DEFAULT_SIGNATURE_ALGORITHM.value)
    algorithm = _BY_NAME.get(name) if type(name) is str else None
    if (type(encoded_message) is not str
            or (verify and type(encoded_signature) is not str)
            or (encoded_context is not None and type(encoded_context) is not str)
            or type(version) is not int or not 1 <= version <= _MAX_KEY_VERSION
            or algorithm is None):
        return None
    try:  # as the models' base64 fields read them
        message = b64decode_canonical(encoded_message)
        signature = b64decode_canonical(encoded_signature) if verify else None
        context = None if encoded_context is None else b64decode_canonical(encoded_context)
    except ValueError:
        return None
    if context is not None and len(context) > MAX_CONTEXT_BYTES:
        return None
    return SignatureItem(message, signature, context, version, algorithm)

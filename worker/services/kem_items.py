"""Encrypt and decrypt requests read without their pydantic models, results as plain JSON.

:func:`read_kem_item` reads an encrypt or decrypt body (a single request's, or a batch
item's) the way the request model would, for the common body only — the binary field in
canonical standard base64, key version, algorithm, ``mode: standard`` for encrypt and,
in a batch, a reference; nothing else. For anything else it answers ``None`` and the body
goes through the request model, which gives it the very same answer or its validation
error: the lean reading never accepts what the model refuses (``tests/worker/
test_kem_items.py`` checks it against the model). Skipping the models saves ≈ 20 µs per
request of ≈ 300 (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas.algorithms import DEFAULT_KEM_ALGORITHM, KEM_ALGORITHMS, Algorithm, EncryptMode
from schemas.batch import MAX_REFERENCE_CHARS
from schemas.fields import b64decode_canonical

__all__ = ["KemItem", "LeanResult", "read_kem_item"]

_KEM_BY_NAME: dict[str, Algorithm] = {algorithm.value: algorithm for algorithm in KEM_ALGORITHMS}
_MAX_KEY_VERSION = 2**31 - 1
_STANDARD = EncryptMode.STANDARD.value


@dataclass(frozen=True, slots=True)
class LeanResult:
    """A single operation's result already as the reply's ``data`` object."""

    data: dict[str, Any]
    algorithm: Algorithm
    key_version: int

    def json_data(self) -> dict[str, Any]:
        """The reply's ``data``."""
        return self.data


class KemItem(NamedTuple):
    """An encrypt or decrypt item, read: the decoded payload and the key it names."""

    payload: bytes
    key_version: int
    algorithm: Algorithm
    reference: str | None


def _allowed_fields(field: str, *, with_mode: bool, in_batch: bool) -> frozenset[str]:
    return frozenset({field, "key_version", "algorithm", *(("mode",) if with_mode else ()),
                      *(("reference",) if in_batch else ())})


_FIELDS = {
    (field, in_batch): _allowed_fields(field, with_mode=field == "plaintext", in_batch=in_batch)
    for field in ("plaintext", "ciphertext") for in_batch in (False, True)
}
_NO_DEFAULTS: Mapping[str, Any] = {}


def read_kem_item(item: Any, field: str, defaults: Mapping[str, Any] = _NO_DEFAULTS, *,
                  in_batch: bool = True) -> KemItem | None:
    """``item`` read without the request model, or ``None`` for the model to read.

    ``field`` is ``plaintext`` (encrypt: ``mode`` may be ``standard``) or
    ``ciphertext`` (decrypt); ``defaults`` are the batch's ``key_version`` and
    ``algorithm`` for items that leave them out; ``in_batch``: a batch item, which may
    carry a ``reference`` (a single request's body may not).
    """
    if type(item) is not dict or not _FIELDS[field, in_batch].issuperset(item):
        return None
    if "mode" in item and item["mode"] != _STANDARD:
        return None
    encoded = item.get(field)
    reference = item.get("reference")
    version = item["key_version"] if "key_version" in item else defaults.get("key_version")
    name = item["algorithm"] if "algorithm" in item else defaults.get("algorithm",
                                                                       DEFAULT_KEM_ALGORITHM)
    algorithm = _KEM_BY_NAME.get(name) if isinstance(name, str) else None
    if (type(encoded) is not str
            or (reference is not None and (type(reference) is not str
                                           or len(reference) > MAX_REFERENCE_CHARS))
            or type(version) is not int or not 1 <= version <= _MAX_KEY_VERSION
            or algorithm is None):
        return None
    try:
        payload = b64decode_canonical(encoded)  # as the model's field reads it
    except ValueError:
        return None
    return KemItem(payload, version, algorithm, reference)

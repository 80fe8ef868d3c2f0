"""Batch items that run inline on the event loop, without models: encrypt, decrypt, verify.

``BatchService`` runs these kinds slice by slice (``worker.services.batch``); each kind
here says how one item is read (``None``: the single service takes it, with its model),
which key it needs, what its crypto is and what it answers. The checks are the single
service's, in the same order, so an item gets the same result or error either way
(``tests/worker/test_batch_lean.py``, ``tests/worker/test_batch_signature_lean.py``).
Verify items joined encrypt and decrypt in the round after their bodies went lean:
no model, no task per item and no future per verification, +23 % items/s for batches
of 100 (docs/performance.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from schemas.algorithms import Algorithm
from schemas.batch import MAX_REFERENCE_CHARS
from schemas.fields import b64encode
from schemas.subjects import Subject
from worker.crypto import KemKey, Mode, SignatureKey, seal
from worker.errors import ServiceError
from worker.services.batch_items import JsonObject, data_item, error_item
from worker.services.context import Caller
from worker.services.crypto_runner import INLINE_LIMIT_BYTES
from worker.services.kem import check_message_size, open_encrypted
from worker.services.kem_items import KemItem, read_kem_item
from worker.services.key_access import KeyAccess, Usage
from worker.services.signature_items import read_signature_item

__all__ = ["INLINE_SUBJECTS", "InlineItems", "VerifyItem", "inline_items"]

INLINE_SUBJECTS = frozenset({Subject.KEM_ENCRYPT, Subject.KEM_DECRYPT,
                             Subject.SIGNATURE_VERIFY})


class VerifyItem(NamedTuple):
    """A verify item, read: decoded bytes, the key it names and its reference."""

    message: bytes
    signature: bytes
    context: bytes | None
    key_version: int
    algorithm: Algorithm
    reference: str | None


ReadT = TypeVar("ReadT", KemItem, VerifyItem)
KeyT = TypeVar("KeyT", KemKey, SignatureKey)
OutputT = TypeVar("OutputT", bytes, bool)


class InlineItems(ABC, Generic[ReadT, KeyT, OutputT]):
    """One kind of inline item: read, key, crypto, answer."""

    def __init__(self, defaults: Mapping[str, Any], max_message_bytes: int) -> None:
        self.defaults = defaults  # the batch's key_version and algorithm
        self.limit = max_message_bytes

    @abstractmethod
    def read(self, item: Any) -> ReadT | None:
        """The item read, or ``None`` for the single service (unusual or large)."""

    @abstractmethod
    async def key(self, keys: KeyAccess, caller: Caller, read: ReadT) -> KeyT:
        """The key the item names (raises the single service's ``ServiceError``)."""

    @abstractmethod
    def crypt(self, key: KeyT | ServiceError, read: ReadT) -> OutputT | JsonObject:
        """The crypto's output, or the item's error object."""

    @abstractmethod
    def answer(self, read: ReadT, output: OutputT) -> JsonObject:
        """The item's result object."""


class _Encrypt(InlineItems[KemItem, KemKey, bytes]):
    field, answered, usage = "plaintext", "ciphertext", Usage.PROTECT

    def read(self, item: Any) -> KemItem | None:
        read = read_kem_item(item, self.field, self.defaults)
        return None if read is None or len(read.payload) > INLINE_LIMIT_BYTES else read

    async def key(self, keys: KeyAccess, caller: Caller, read: KemItem) -> KemKey:
        return await keys.kem_key(caller, read.algorithm, read.key_version, self.usage)

    def crypt(self, key: KemKey | ServiceError, read: KemItem) -> bytes | JsonObject:
        if len(read.payload) > self.limit:
            return _size_error("plaintext", read.payload, self.limit, read.reference)
        if isinstance(key, ServiceError):
            return error_item(key.code, key.message, read.reference)
        return seal(key, read.algorithm, read.key_version, Mode.STANDARD, read.payload)

    def answer(self, read: KemItem, output: bytes) -> JsonObject:
        return data_item({self.answered: b64encode(output), "key_version": read.key_version,
                          "algorithm": read.algorithm.value}, read.reference)


class _Decrypt(_Encrypt):
    field, answered, usage = "ciphertext", "plaintext", Usage.RECOVER

    def crypt(self, key: KemKey | ServiceError, read: KemItem) -> bytes | JsonObject:
        if isinstance(key, ServiceError):
            return error_item(key.code, key.message, read.reference)
        try:
            return open_encrypted(key, read.algorithm, read.key_version, read.payload)
        except ServiceError as exc:
            return error_item(exc.code, exc.message, read.reference)


class _Verify(InlineItems[VerifyItem, SignatureKey, bool]):
    def read(self, item: Any) -> VerifyItem | None:
        if type(item) is not dict:
            return None
        reference = item.get("reference")
        if reference is not None and (type(reference) is not str
                                      or len(reference) > MAX_REFERENCE_CHARS):
            return None
        body = {**self.defaults, **item}
        body.pop("reference", None)
        read = read_signature_item(body, verify=True)
        if read is None or read.signature is None or len(read.message) > INLINE_LIMIT_BYTES:
            return None
        return VerifyItem(read.message, read.signature, read.context, read.key_version,
                          read.algorithm, reference)

    async def key(self, keys: KeyAccess, caller: Caller, read: VerifyItem) -> SignatureKey:
        return await keys.signature_key(caller, read.algorithm, read.key_version,
                                        Usage.RECOVER)

    def crypt(self, key: SignatureKey | ServiceError, read: VerifyItem) -> bool | JsonObject:
        if len(read.message) > self.limit:
            return _size_error("message", read.message, self.limit, read.reference)
        if isinstance(key, ServiceError):
            return error_item(key.code, key.message, read.reference)
        return key.verify(read.signature, read.message, read.context)

    def answer(self, read: VerifyItem, output: bool) -> JsonObject:
        return data_item({"valid": output, "key_version": read.key_version,
                          "algorithm": read.algorithm.value}, read.reference)


_KINDS: dict[Subject, type[InlineItems[Any, Any, Any]]] = {
    Subject.KEM_ENCRYPT: _Encrypt, Subject.KEM_DECRYPT: _Decrypt,
    Subject.SIGNATURE_VERIFY: _Verify,
}


def inline_items(single: Subject, defaults: Mapping[str, Any],
                 max_message_bytes: int) -> InlineItems[Any, Any, Any]:
    """The inline kind of ``single`` (one of :data:`INLINE_SUBJECTS`)."""
    return _KINDS[single](defaults, max_message_bytes)


def _size_error(field: str, value: bytes, limit: int, reference: str | None) -> JsonObject:
    try:
        check_message_size(field, value, limit)
    except ServiceError as exc:
        return error_item(exc.code, exc.message, reference)
    raise AssertionError("the value is within the limit")

"""Signature operations: sign, verify, sign-hash, verify-hash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from schemas import signature
from schemas.algorithms import Algorithm
from schemas.errors import ErrorCode
from schemas.fields import b64encode
from worker.crypto import InvalidInput
from worker.errors import ServiceError
from worker.services.context import Caller
from worker.services.crypto_runner import CryptoRunner
from worker.services.kem import check_message_size
from worker.services.kem_items import LeanResult
from worker.services.key_access import KeyAccess, Usage
from worker.services.signature_items import read_signature_item

__all__ = ["SIGNATURE_TYPE", "SignatureService"]

# What sign-hash returns: a detached signature (HashML-DSA, FIPS 204 §5.4, for
# Dilithium3; the draft's own SHA-512 pre-hash for Composite-ML-DSA).
SIGNATURE_TYPE = "detached"

T = TypeVar("T")


def _valid_request(call: Callable[[], T]) -> T:
    """A request the key's algorithm cannot serve (e.g. its hash algorithm) is a 400."""
    try:
        return call()
    except InvalidInput as exc:
        raise ServiceError(ErrorCode.INVALID, f"Validation failed: {exc}") from None


class SignatureService:
    """Signature operations on a tenant's keys."""

    def __init__(self, keys: KeyAccess, runner: CryptoRunner, max_message_bytes: int) -> None:
        self._keys = keys
        self._runner = runner
        self._limit = max_message_bytes

    async def sign(self, caller: Caller, request: signature.SignRequest) -> signature.SignResult:
        """A signature with the optional context (pure ML-DSA-65, or composite)."""
        signed = await self._signed(caller, request.algorithm, request.key_version,
                                    request.message, request.context)
        return signature.SignResult(
            signature=b64encode(signed),
            key_version=request.key_version,
            algorithm=request.algorithm,
        )

    async def sign_lean(self, caller: Caller, body: dict[str, Any]) -> LeanResult | None:
        """``sign`` of a body in its common form, without the models; ``None`` for any
        other body (``worker.services.signature_items``)."""
        item = read_signature_item(body, verify=False)
        if item is None:
            return None
        signed = await self._signed(caller, item.algorithm, item.key_version, item.message,
                                    item.context)
        return LeanResult({"signature": b64encode(signed), "key_version": item.key_version,
                           "algorithm": item.algorithm.value}, item.algorithm, item.key_version)

    async def verify(
        self, caller: Caller, request: signature.VerifyRequest
    ) -> signature.VerifyResult:
        """``valid: false`` for any signature that does not verify; never an error."""
        valid = await self._verified(caller, request.algorithm, request.key_version,
                                     request.message, request.signature, request.context)
        return signature.VerifyResult(
            valid=valid, key_version=request.key_version, algorithm=request.algorithm
        )

    async def verify_lean(self, caller: Caller, body: dict[str, Any]) -> LeanResult | None:
        """``verify`` of a body in its common form, without the models; ``None`` for any
        other body."""
        item = read_signature_item(body, verify=True)
        if item is None or item.signature is None:
            return None
        valid = await self._verified(caller, item.algorithm, item.key_version, item.message,
                                     item.signature, item.context)
        return LeanResult({"valid": valid, "key_version": item.key_version,
                           "algorithm": item.algorithm.value}, item.algorithm, item.key_version)

    async def _signed(self, caller: Caller, algorithm: Algorithm, version: int,
                      message: bytes, context: bytes | None) -> bytes:
        check_message_size("message", message, self._limit)
        key = await self._keys.signature_key(caller, algorithm, version, Usage.PROTECT)
        return await key.sign_async(message, context, self._runner.in_thread)

    async def _verified(self, caller: Caller, algorithm: Algorithm, version: int,
                        message: bytes, signed: bytes, context: bytes | None) -> bool:
        check_message_size("message", message, self._limit)
        key = await self._keys.signature_key(caller, algorithm, version, Usage.RECOVER)
        return await self._runner.sized(
            len(message), lambda: key.verify(signed, message, context)
        )

    async def sign_hash(
        self, caller: Caller, request: signature.SignHashRequest
    ) -> signature.SignHashResult:
        """A signature over a caller-computed digest (the algorithm's pre-hash mode)."""
        key = await self._keys.signature_key(
            caller, request.algorithm, request.key_version, Usage.PROTECT
        )
        signed = await self._runner.in_thread(
            lambda: _valid_request(
                lambda: key.sign_hash(request.hash, request.hash_algorithm, request.context)
            )
        )
        return signature.SignHashResult(
            signature=b64encode(signed),
            key_version=request.key_version,
            algorithm=request.algorithm,
            hash_algorithm=request.hash_algorithm,
            signature_type=SIGNATURE_TYPE,
        )

    async def verify_hash(
        self, caller: Caller, request: signature.VerifyHashRequest
    ) -> signature.VerifyHashResult:
        """``valid: false`` for any signature that does not verify over the digest."""
        key = await self._keys.signature_key(
            caller, request.algorithm, request.key_version, Usage.RECOVER
        )
        valid = _valid_request(
            lambda: key.verify_hash(
                request.signature, request.hash, request.hash_algorithm, request.context
            )
        )
        return signature.VerifyHashResult(
            valid=valid,
            key_version=request.key_version,
            algorithm=request.algorithm,
            hash_algorithm=request.hash_algorithm,
        )

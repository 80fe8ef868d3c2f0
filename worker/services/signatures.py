"""Signature operations: sign, verify, sign-hash, verify-hash."""

from __future__ import annotations

from schemas import signature
from schemas.fields import b64encode
from worker.services.context import Caller
from worker.services.crypto_runner import CryptoRunner
from worker.services.kem import check_message_size
from worker.services.key_access import KeyAccess, Usage

__all__ = ["SIGNATURE_TYPE", "SignatureService"]

# What sign-hash returns: a detached HashML-DSA signature (FIPS 204 §5.4).
SIGNATURE_TYPE = "detached"


class SignatureService:
    """Signature operations on a tenant's keys."""

    def __init__(self, keys: KeyAccess, runner: CryptoRunner, max_message_bytes: int) -> None:
        self._keys = keys
        self._runner = runner
        self._limit = max_message_bytes

    async def sign(self, caller: Caller, request: signature.SignRequest) -> signature.SignResult:
        """Pure ML-DSA-65 signature with the optional context."""
        check_message_size("message", request.message, self._limit)
        key = await self._keys.signature_key(
            caller, request.algorithm, request.key_version, Usage.PROTECT
        )
        signed = await self._runner.in_thread(lambda: key.sign(request.message, request.context))
        return signature.SignResult(
            signature=b64encode(signed),
            key_version=request.key_version,
            algorithm=request.algorithm,
        )

    async def verify(
        self, caller: Caller, request: signature.VerifyRequest
    ) -> signature.VerifyResult:
        """``valid: false`` for any signature that does not verify; never an error."""
        check_message_size("message", request.message, self._limit)
        key = await self._keys.signature_key(
            caller, request.algorithm, request.key_version, Usage.RECOVER
        )
        valid = await self._runner.sized(
            len(request.message),
            lambda: key.verify(request.signature, request.message, request.context),
        )
        return signature.VerifyResult(
            valid=valid, key_version=request.key_version, algorithm=request.algorithm
        )

    async def sign_hash(
        self, caller: Caller, request: signature.SignHashRequest
    ) -> signature.SignHashResult:
        """HashML-DSA-65 signature over a caller-computed digest."""
        key = await self._keys.signature_key(
            caller, request.algorithm, request.key_version, Usage.PROTECT
        )
        signed = await self._runner.in_thread(
            lambda: key.sign_hash(request.hash, request.hash_algorithm, request.context)
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
        valid = key.verify_hash(
            request.signature, request.hash, request.hash_algorithm, request.context
        )
        return signature.VerifyHashResult(
            valid=valid,
            key_version=request.key_version,
            algorithm=request.algorithm,
            hash_algorithm=request.hash_algorithm,
        )

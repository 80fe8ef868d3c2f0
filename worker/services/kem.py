"""KEM operations: encrypt, decrypt, encapsulate, decapsulate, wrap, unwrap."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas import kem
from schemas.algorithms import Algorithm, EncryptMode
from schemas.errors import ErrorCode
from schemas.fields import b64encode
from schemas.kem import WRAPPABLE_KEY_SIZES
from worker.crypto import (
    WRAPPING_METHODS,
    InvalidCiphertext,
    InvalidInput,
    KemKey,
    Mode,
    open_ciphertext,
    seal,
    seal_deterministic_ciphertext,
)
from worker.errors import DecryptionFailed, ServiceError
from worker.services.context import Caller
from worker.services.crypto_runner import CryptoRunner
from worker.services.kem_items import LeanResult, read_kem_item
from worker.services.key_access import KeyAccess, Usage

__all__ = ["ENCRYPTED_MODES", "KemService", "check_message_size", "open_encrypted"]

ENCRYPTED_MODES = frozenset({Mode.STANDARD, Mode.DETERMINISTIC})
# Seal or open bytes under a tenant's key version: (caller, algorithm, version, input).
_KemStep = Callable[[Caller, Algorithm, int, bytes], Awaitable[bytes]]
_WRAPPED_MODES = frozenset({Mode.KEY_WRAP})


_LARGER_DATA = {
    "plaintext": "use kem/key/wrap with a data key for larger data (encrypt the data under "
                 "the data key yourself)",
    "message": "sign and verify a digest of a larger message with signature/sign-hash and "
               "signature/verify-hash",
}


def check_message_size(field: str, data: bytes, limit: int) -> None:
    """400 when a payload is over the configured per-request limit; says what to do
    instead for the field's kind of operation."""
    if len(data) > limit:
        raise ServiceError(
            ErrorCode.INVALID,
            f"Validation failed: {field} is {len(data)} bytes, over the {limit}-byte limit; "
            + _LARGER_DATA.get(field, "send it in smaller parts"),
        )


def open_encrypted(key: KemKey, algorithm: Algorithm, version: int, blob: bytes) -> bytes:
    """The plaintext of a ``kem/encrypt`` ciphertext (either mode); any failure is the one
    opaque 400."""
    try:
        return open_ciphertext(key, algorithm, version, blob, ENCRYPTED_MODES)
    except InvalidCiphertext:
        raise DecryptionFailed("ciphertext") from None


class KemService:
    """KEM operations on a tenant's keys."""

    def __init__(self, keys: KeyAccess, runner: CryptoRunner, max_message_bytes: int) -> None:
        self._keys = keys
        self._runner = runner
        self._limit = max_message_bytes

    async def encrypt(self, caller: Caller, request: kem.EncryptRequest) -> kem.EncryptResult:
        """Standard (HPKE) or deterministic (AES-SIV) encryption."""
        if request.mode is EncryptMode.DETERMINISTIC:
            check_message_size("plaintext", request.plaintext, self._limit)
            key = await self._keys.kem_key(
                caller, request.algorithm, request.key_version, Usage.PROTECT
            )
            salt = request.salt or b""
            ciphertext = await self._runner.sized(
                len(request.plaintext),
                lambda: seal_deterministic_ciphertext(
                    key, request.algorithm, request.key_version, salt, request.plaintext
                ),
            )
        else:
            ciphertext = await self._sealed(caller, request.algorithm, request.key_version,
                                            request.plaintext)
        return kem.EncryptResult(
            ciphertext=b64encode(ciphertext),
            key_version=request.key_version,
            algorithm=request.algorithm,
        )

    async def encrypt_lean(self, caller: Caller, body: dict[str, Any]) -> LeanResult | None:
        """``encrypt`` of a body in its common form, without the models; ``None`` for any
        other body (``worker.services.kem_items``)."""
        return await self._lean(caller, body, "plaintext", "ciphertext", self._sealed)

    async def decrypt(self, caller: Caller, request: kem.DecryptRequest) -> kem.DecryptResult:
        """Open a ciphertext from encrypt; any failure is one opaque 400."""
        plaintext = await self._opened(caller, request.algorithm, request.key_version,
                                       request.ciphertext)
        return kem.DecryptResult(
            plaintext=b64encode(plaintext),
            key_version=request.key_version,
            algorithm=request.algorithm,
        )

    async def decrypt_lean(self, caller: Caller, body: dict[str, Any]) -> LeanResult | None:
        """``decrypt`` of a body in its common form, without the models; ``None`` for any
        other body."""
        return await self._lean(caller, body, "ciphertext", "plaintext", self._opened)

    async def _lean(self, caller: Caller, body: dict[str, Any], given: str, answered: str,
                    step: _KemStep) -> LeanResult | None:
        item = read_kem_item(body, given, in_batch=False)
        if item is None:
            return None
        output = await step(caller, item.algorithm, item.key_version, item.payload)
        return LeanResult({answered: b64encode(output), "key_version": item.key_version,
                           "algorithm": item.algorithm.value}, item.algorithm, item.key_version)

    async def _sealed(self, caller: Caller, algorithm: Algorithm, version: int,
                      plaintext: bytes) -> bytes:
        check_message_size("plaintext", plaintext, self._limit)
        key = await self._keys.kem_key(caller, algorithm, version, Usage.PROTECT)
        return await self._runner.sized(
            len(plaintext), lambda: seal(key, algorithm, version, Mode.STANDARD, plaintext)
        )

    async def _opened(self, caller: Caller, algorithm: Algorithm, version: int,
                      blob: bytes) -> bytes:
        key = await self._keys.kem_key(caller, algorithm, version, Usage.RECOVER)
        return await self._runner.sized(
            len(blob), lambda: open_encrypted(key, algorithm, version, blob)
        )

    async def encapsulate(
        self, caller: Caller, request: kem.EncapsulateRequest
    ) -> kem.EncapsulateResult:
        """A fresh shared secret and its KEM ciphertext (the secret is returned by design)."""
        key = await self._keys.kem_key(
            caller, request.algorithm, request.key_version, Usage.PROTECT
        )
        kem_ciphertext, shared_secret = key.encapsulate()
        return kem.EncapsulateResult(
            kem_ciphertext=b64encode(kem_ciphertext),
            shared_secret=b64encode(shared_secret),
            key_version=request.key_version,
            algorithm=request.algorithm,
        )

    async def decapsulate(
        self, caller: Caller, request: kem.DecapsulateRequest
    ) -> kem.DecapsulateResult:
        """The shared secret of a KEM ciphertext (implicit rejection for modified ones)."""
        key = await self._keys.kem_key(
            caller, request.algorithm, request.key_version, Usage.RECOVER
        )
        try:
            shared_secret = key.decapsulate(request.kem_ciphertext)
        except InvalidInput as exc:
            raise ServiceError(ErrorCode.INVALID, f"Validation failed: {exc}") from None
        return kem.DecapsulateResult(
            shared_secret=b64encode(shared_secret),
            key_version=request.key_version,
            algorithm=request.algorithm,
        )

    async def wrap(self, caller: Caller, request: kem.WrapKeyRequest) -> kem.WrapKeyResult:
        """Wrap a 16 to 64-byte symmetric key under the KEM key (HPKE, key-wrap mode)."""
        key = await self._keys.kem_key(
            caller, request.algorithm, request.key_version, Usage.PROTECT
        )
        wrapped = seal(
            key, request.algorithm, request.key_version, Mode.KEY_WRAP, request.symmetric_key
        )
        return kem.WrapKeyResult(
            wrapped_key=b64encode(wrapped),
            key_version=request.key_version,
            algorithm=request.algorithm,
            wrapping_method=WRAPPING_METHODS[request.algorithm],
        )

    async def unwrap(self, caller: Caller, request: kem.UnwrapKeyRequest) -> kem.UnwrapKeyResult:
        """Recover a wrapped symmetric key; any failure is one opaque 400."""
        key = await self._keys.kem_key(
            caller, request.algorithm, request.key_version, Usage.RECOVER
        )
        try:
            symmetric_key = open_ciphertext(
                key, request.algorithm, request.key_version, request.wrapped_key, _WRAPPED_MODES
            )
        except InvalidCiphertext:
            raise DecryptionFailed("wrapped_key") from None
        if len(symmetric_key) not in WRAPPABLE_KEY_SIZES:
            raise DecryptionFailed("wrapped_key")
        return kem.UnwrapKeyResult(
            symmetric_key=b64encode(symmetric_key),
            key_version=request.key_version,
            algorithm=request.algorithm,
        )

"""KEM family: encrypt, decrypt, encapsulate, decapsulate, key wrap and unwrap."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from schemas.algorithms import DEFAULT_KEM_ALGORITHM, Algorithm, EncryptMode
from schemas.fields import Base64Bytes, KemAlgorithm, KeyVersion

__all__ = [
    "DecapsulateRequest",
    "DecapsulateResult",
    "DecryptRequest",
    "DecryptResult",
    "EncapsulateRequest",
    "EncapsulateResult",
    "EncryptRequest",
    "EncryptResult",
    "MAX_DETERMINISTIC_SALT",
    "MIN_DETERMINISTIC_SALT",
    "UnwrapKeyRequest",
    "UnwrapKeyResult",
    "WRAPPABLE_KEY_SIZES",
    "WrapKeyRequest",
    "WrapKeyResult",
]

MIN_DETERMINISTIC_SALT = 32
MAX_DETERMINISTIC_SALT = 1024
WRAPPABLE_KEY_SIZES = (16, 24, 32, 48, 64)

_STRICT = ConfigDict(extra="forbid", frozen=True)


class EncryptRequest(BaseModel):
    """``POST /api/v1/kem/encrypt``."""

    model_config = _STRICT
    plaintext: Base64Bytes
    key_version: KeyVersion
    mode: EncryptMode = EncryptMode.STANDARD
    salt: Base64Bytes | None = Field(
        default=None, description="Deterministic mode only; at least 32 bytes"
    )
    algorithm: KemAlgorithm = DEFAULT_KEM_ALGORITHM

    @model_validator(mode="after")
    def _salt_matches_mode(self) -> EncryptRequest:
        if self.mode is EncryptMode.DETERMINISTIC:
            if self.salt is None:
                raise PydanticCustomError("salt", "salt is required in deterministic mode")
            if not MIN_DETERMINISTIC_SALT <= len(self.salt) <= MAX_DETERMINISTIC_SALT:
                raise PydanticCustomError(
                    "salt",
                    f"salt must be at least {MIN_DETERMINISTIC_SALT} and at most "
                    f"{MAX_DETERMINISTIC_SALT} bytes",
                )
        elif self.salt is not None:
            raise PydanticCustomError("salt", "salt is only accepted in deterministic mode")
        return self


class EncryptResult(BaseModel):
    ciphertext: str
    key_version: int
    algorithm: Algorithm


class DecryptRequest(BaseModel):
    """``POST /api/v1/kem/decrypt``."""

    model_config = _STRICT
    ciphertext: Base64Bytes
    key_version: KeyVersion
    algorithm: KemAlgorithm = DEFAULT_KEM_ALGORITHM


class DecryptResult(BaseModel):
    plaintext: str
    key_version: int
    algorithm: Algorithm


class EncapsulateRequest(BaseModel):
    """``POST /api/v1/kem/encapsulate``."""

    model_config = _STRICT
    key_version: KeyVersion
    algorithm: KemAlgorithm = DEFAULT_KEM_ALGORITHM


class EncapsulateResult(BaseModel):
    kem_ciphertext: str
    shared_secret: str
    key_version: int
    algorithm: Algorithm


class DecapsulateRequest(BaseModel):
    """``POST /api/v1/kem/decapsulate``."""

    model_config = _STRICT
    kem_ciphertext: Base64Bytes
    key_version: KeyVersion
    algorithm: KemAlgorithm = DEFAULT_KEM_ALGORITHM


class DecapsulateResult(BaseModel):
    shared_secret: str
    key_version: int
    algorithm: Algorithm


class WrapKeyRequest(BaseModel):
    """``POST /api/v1/kem/key/wrap``."""

    model_config = _STRICT
    symmetric_key: Base64Bytes
    key_version: KeyVersion
    algorithm: KemAlgorithm = DEFAULT_KEM_ALGORITHM

    @model_validator(mode="after")
    def _key_size(self) -> WrapKeyRequest:
        if len(self.symmetric_key) not in WRAPPABLE_KEY_SIZES:
            raise PydanticCustomError(
                "key_size", "symmetric_key must be 16, 24, 32, 48 or 64 bytes"
            )
        return self


class WrapKeyResult(BaseModel):
    wrapped_key: str
    key_version: int
    algorithm: Algorithm
    wrapping_method: str


class UnwrapKeyRequest(BaseModel):
    """``POST /api/v1/kem/key/unwrap``."""

    model_config = _STRICT
    wrapped_key: Base64Bytes
    key_version: KeyVersion
    algorithm: KemAlgorithm = DEFAULT_KEM_ALGORITHM


class UnwrapKeyResult(BaseModel):
    symmetric_key: str
    key_version: int
    algorithm: Algorithm

"""Signature family: sign, verify, sign-hash, verify-hash (optional FIPS 204 context)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from schemas.algorithms import DEFAULT_SIGNATURE_ALGORITHM, Algorithm, HashAlgorithm
from schemas.fields import Base64Bytes, KeyVersion, SignatureAlgorithm

__all__ = [
    "MAX_CONTEXT_BYTES",
    "SignHashRequest",
    "SignHashResult",
    "SignRequest",
    "SignResult",
    "VerifyHashRequest",
    "VerifyHashResult",
    "VerifyRequest",
    "VerifyResult",
]

MAX_CONTEXT_BYTES = 255
_STRICT = ConfigDict(extra="forbid", frozen=True)
_CONTEXT = Field(default=None, description="Optional FIPS 204 context string, at most 255 bytes")


class _HasContext(BaseModel):
    model_config = _STRICT
    context: Base64Bytes | None = _CONTEXT

    @model_validator(mode="after")
    def _context_length(self) -> _HasContext:
        if self.context is not None and len(self.context) > MAX_CONTEXT_BYTES:
            raise PydanticCustomError("context", "context must be at most 255 bytes")
        return self


class _HasHash(_HasContext):
    hash: Base64Bytes
    hash_algorithm: HashAlgorithm

    @model_validator(mode="after")
    def _hash_length(self) -> _HasHash:
        if len(self.hash) != self.hash_algorithm.digest_size:
            raise PydanticCustomError(
                "hash",
                f"hash must be {self.hash_algorithm.digest_size} bytes for "
                f"{self.hash_algorithm.value}",
            )
        return self


class SignRequest(_HasContext):
    """``POST /api/v1/signature/sign``."""

    message: Base64Bytes
    key_version: KeyVersion
    algorithm: SignatureAlgorithm = DEFAULT_SIGNATURE_ALGORITHM


class SignResult(BaseModel):
    signature: str
    key_version: int
    algorithm: Algorithm


class VerifyRequest(_HasContext):
    """``POST /api/v1/signature/verify``."""

    message: Base64Bytes
    signature: Base64Bytes
    key_version: KeyVersion
    algorithm: SignatureAlgorithm = DEFAULT_SIGNATURE_ALGORITHM


class VerifyResult(BaseModel):
    valid: bool
    key_version: int
    algorithm: Algorithm


class SignHashRequest(_HasHash):
    """``POST /api/v1/signature/sign-hash`` (HashML-DSA, FIPS 204 §5.4)."""

    key_version: KeyVersion
    algorithm: SignatureAlgorithm = DEFAULT_SIGNATURE_ALGORITHM


class SignHashResult(BaseModel):
    signature: str
    key_version: int
    algorithm: Algorithm
    hash_algorithm: HashAlgorithm
    signature_type: str


class VerifyHashRequest(_HasHash):
    """``POST /api/v1/signature/verify-hash``."""

    signature: Base64Bytes
    key_version: KeyVersion
    algorithm: SignatureAlgorithm = DEFAULT_SIGNATURE_ALGORITHM


class VerifyHashResult(BaseModel):
    valid: bool
    key_version: int
    algorithm: Algorithm
    hash_algorithm: HashAlgorithm

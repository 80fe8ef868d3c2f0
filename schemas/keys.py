"""Key management family: generate, list, active, get, rotate, retire, archive."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.algorithms import Algorithm, KeyStatus
from schemas.fields import AnyAlgorithm, KeyVersion

__all__ = [
    "ActiveKeyRequest",
    "ArchiveKeyRequest",
    "GenerateKeyRequest",
    "GetKeyRequest",
    "KeyInfo",
    "KeyListResult",
    "ListKeysRequest",
    "RetireKeyRequest",
    "RotateKeyRequest",
    "RotateResult",
]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class GenerateKeyRequest(BaseModel):
    """``POST /api/v1/kms/keys/generate``."""

    model_config = _STRICT
    algorithm: AnyAlgorithm


class ListKeysRequest(BaseModel):
    """``GET /api/v1/kms/keys?algorithm=&status=`` (both filters optional)."""

    model_config = _STRICT
    algorithm: AnyAlgorithm | None = None
    status: KeyStatus | None = None


class ActiveKeyRequest(BaseModel):
    """``GET /api/v1/kms/keys/active?algorithm=``."""

    model_config = _STRICT
    algorithm: AnyAlgorithm


class GetKeyRequest(BaseModel):
    """``GET /api/v1/kms/keys/{algorithm}/{version}`` or ``/kms/keys/{version}?algorithm=``."""

    model_config = _STRICT
    algorithm: AnyAlgorithm
    key_version: KeyVersion


class RotateKeyRequest(BaseModel):
    """``POST /api/v1/kms/keys/rotate``."""

    model_config = _STRICT
    algorithm: AnyAlgorithm


class RetireKeyRequest(BaseModel):
    """``POST /api/v1/kms/keys/retire``."""

    model_config = _STRICT
    algorithm: AnyAlgorithm
    key_version: KeyVersion


class ArchiveKeyRequest(BaseModel):
    """``POST /api/v1/kms/keys/archive``."""

    model_config = _STRICT
    algorithm: AnyAlgorithm
    key_version: KeyVersion


class KeyInfo(BaseModel):
    """One key version as clients see it: never any private material."""

    key_version: int
    algorithm: Algorithm
    status: KeyStatus
    public_key: str = Field(description="base64 of the SubjectPublicKeyInfo DER")
    created_at: str


class RotateResult(KeyInfo):
    old_key_version: int


class KeyListResult(BaseModel):
    keys: list[KeyInfo]
    total: int

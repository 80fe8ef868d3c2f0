"""The error-code registry: code → HTTP status → default message. The only copy."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode", "http_status_for"]


class ErrorCode(StrEnum):
    """Every error code a client can see."""

    AUTH = "ERR_AUTH_001"
    INVALID = "ERR_INVALID_001"
    FORBIDDEN = "ERR_FORBIDDEN_001"
    NOT_FOUND = "ERR_NOT_FOUND_001"
    KEM_KEY_NOT_FOUND = "ERR_KEM_005"
    KMS_KEY_NOT_FOUND = "ERR_KMS_003"
    KMS_ACTIVE_KEY_EXISTS = "ERR_KMS_004"
    KMS_CANNOT_RETIRE_ACTIVE = "ERR_KMS_005"
    RATE_LIMITED = "ERR_RATE_001"
    CRYPTO = "ERR_CRYPTO_001"
    INTERNAL = "ERR_INTERNAL_001"
    BAD_GATEWAY = "ERR_BAD_GATEWAY_001"
    SERVICE_UNAVAILABLE = "ERR_SERVICE_001"
    TIMEOUT = "ERR_TIMEOUT_001"

    @property
    def http_status(self) -> int:
        """The HTTP status the REST API answers with for this code."""
        return _REGISTRY[self][0]

    @property
    def default_message(self) -> str:
        """The message used when no more specific one is given."""
        return _REGISTRY[self][1]


_REGISTRY: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.AUTH: (401, "Invalid or missing API key"),
    ErrorCode.INVALID: (400, "Request validation failed"),
    ErrorCode.FORBIDDEN: (403, "Operation not allowed by policy"),
    ErrorCode.NOT_FOUND: (404, "Resource not found"),
    ErrorCode.KEM_KEY_NOT_FOUND: (404, "Key version not found"),
    ErrorCode.KMS_KEY_NOT_FOUND: (404, "Key version not found"),
    ErrorCode.KMS_ACTIVE_KEY_EXISTS: (409, "Active key already exists for this algorithm"),
    ErrorCode.KMS_CANNOT_RETIRE_ACTIVE: (409, "Cannot retire the only active key"),
    ErrorCode.RATE_LIMITED: (429, "Rate limit exceeded"),
    ErrorCode.CRYPTO: (500, "Internal cryptography error"),
    ErrorCode.INTERNAL: (500, "Internal server error"),
    ErrorCode.BAD_GATEWAY: (502, "Downstream service error"),
    ErrorCode.SERVICE_UNAVAILABLE: (503, "Service temporarily unavailable"),
    ErrorCode.TIMEOUT: (504, "Gateway timeout"),
}


def http_status_for(code: str) -> int:
    """HTTP status for a code string; unknown codes map to 500."""
    try:
        return ErrorCode(code).http_status
    except ValueError:
        return 500

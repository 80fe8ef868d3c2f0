"""Typed, safe errors. Services raise these; the transport turns them into envelopes.

A ``ServiceError`` message is shown to the caller, so it must never contain key
material, plaintext or anything from a stack trace.
"""

from __future__ import annotations

from schemas.errors import ErrorCode

__all__ = [
    "DecryptionFailed",
    "ServiceError",
    "RateLimited",
]


class ServiceError(Exception):
    """A user-visible failure with an error code from the registry."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        self.code = code
        self.message = message or code.default_message
        super().__init__(self.message)


class RateLimited(ServiceError):
    """Over the tenant's request rate.

    ``retry_after`` is the whole seconds told to callers; ``wait_seconds`` the exact time
    until enough tokens exist, for waiters inside pqkms (bulk jobs).
    """

    def __init__(self, retry_after: int, wait_seconds: float | None = None) -> None:
        self.retry_after = max(1, retry_after)
        self.wait_seconds = self.retry_after if wait_seconds is None else max(0.0, wait_seconds)
        super().__init__(
            ErrorCode.RATE_LIMITED,
            f"Rate limit exceeded. Retry after {self.retry_after} "
            f"{'second' if self.retry_after == 1 else 'seconds'}.",
        )


class DecryptionFailed(ServiceError):
    """One opaque error for every way a ciphertext can fail to open."""

    def __init__(self, what: str = "ciphertext") -> None:
        super().__init__(
            ErrorCode.INVALID,
            f"Decryption failed: the {what} is invalid or was not produced by this key version",
        )

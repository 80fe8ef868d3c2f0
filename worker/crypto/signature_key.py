"""The small interface every signature provider's loaded key offers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from schemas.algorithms import HashAlgorithm

__all__ = ["SignatureKey"]


class SignatureKey(ABC):
    """A loaded signature key pair. Never serialised; lives only in worker memory.

    ``verify`` and ``verify_hash`` answer False for any signature that does not verify
    (wrong length, wrong encoding, another algorithm's signature) and never raise for
    it; ``InvalidInput`` is only for a request this algorithm cannot serve at all (a
    digest of the wrong length, a hash algorithm it does not support, a context over
    255 bytes when signing).
    """

    __slots__ = ()

    #: The public key as SubjectPublicKeyInfo DER (what the API returns).
    public_key_spki: bytes

    @abstractmethod
    def sign(self, message: bytes, context: bytes | None = None) -> bytes:
        """A signature over ``message`` with the optional context (at most 255 bytes)."""

    async def sign_async(
        self,
        message: bytes,
        context: bytes | None,
        in_thread: Callable[[Callable[[], bytes]], Awaitable[bytes]],
    ) -> bytes:
        """``sign`` off the event loop: in the crypto thread pool unless a provider
        needs another place (SLH-DSA holds the GIL and signs in a process pool)."""
        return await in_thread(lambda: self.sign(message, context))

    @abstractmethod
    def verify(self, signature: bytes, message: bytes, context: bytes | None = None) -> bool:
        """True only for a valid signature over ``message`` and ``context``."""

    @abstractmethod
    def sign_hash(
        self, digest: bytes, hash_algorithm: HashAlgorithm, context: bytes | None = None
    ) -> bytes:
        """A signature over a caller-computed digest (the algorithm's pre-hash mode)."""

    @abstractmethod
    def verify_hash(
        self,
        signature: bytes,
        digest: bytes,
        hash_algorithm: HashAlgorithm,
        context: bytes | None = None,
    ) -> bool:
        """True only for a valid signature made by ``sign_hash`` over ``digest``."""

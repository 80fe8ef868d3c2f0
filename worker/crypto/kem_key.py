"""The small interface every KEM provider's loaded key offers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KemKey"]


@dataclass(frozen=True, slots=True)
class KemKey(ABC):
    """A loaded KEM key pair. Never serialised; lives only in worker memory."""

    public_key_spki: bytes
    deterministic_root: bytes = field(repr=False)

    @abstractmethod
    def encapsulate(self) -> tuple[bytes, bytes]:
        """``(kem_ciphertext, shared_secret)`` for this key's public half."""

    @abstractmethod
    def decapsulate(self, kem_ciphertext: bytes) -> bytes:
        """The shared secret; raises InvalidInput on a wrong-length ciphertext."""

    @property
    @abstractmethod
    def hpke_private_key(self) -> Any:
        """The private key object the HPKE suite accepts."""

    @property
    @abstractmethod
    def hpke_public_key(self) -> Any:
        """The public key object the HPKE suite accepts."""

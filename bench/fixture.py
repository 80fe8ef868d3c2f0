"""The payloads and local keys every layer of the benchmark uses (1 KiB, fixed seeds)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from schemas.algorithms import Algorithm
from worker.crypto import (
    KemKey,
    Mode,
    SignatureKey,
    kem_algorithm,
    open_ciphertext,
    seal,
    signature_algorithm,
)

__all__ = ["OPERATIONS", "PAYLOAD_SIZE", "Seeds", "LocalKeys", "crypto_call"]

PAYLOAD_SIZE = 1024
OPERATIONS = ("encrypt", "decrypt", "sign", "verify")
KEY_VERSION = 1
_STANDARD = frozenset({Mode.STANDARD})


@dataclass(frozen=True)
class Seeds:
    """Seeds of the floor's local keys; passed to child processes so they share keys."""

    kem: bytes
    dsa: bytes

    @classmethod
    def fresh(cls) -> Seeds:
        return cls(
            kem_algorithm(Algorithm.KYBER768).generate_seed(),
            signature_algorithm(Algorithm.DILITHIUM3).generate_seed(),
        )


class LocalKeys:
    """Loaded keys plus a ready ciphertext and signature of the 1 KiB payload."""

    def __init__(self, seeds: Seeds, payload: bytes | None = None) -> None:
        self.payload = payload if payload is not None else os.urandom(PAYLOAD_SIZE)
        self.kem: KemKey = kem_algorithm(Algorithm.KYBER768).load(seeds.kem)
        self.dsa: SignatureKey = signature_algorithm(Algorithm.DILITHIUM3).load(seeds.dsa)
        self.ciphertext = self.encrypt(self.payload)
        self.signature = self.dsa.sign(self.payload)

    def encrypt(self, plaintext: bytes) -> bytes:
        return seal(self.kem, Algorithm.KYBER768, KEY_VERSION, Mode.STANDARD, plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        return open_ciphertext(self.kem, Algorithm.KYBER768, KEY_VERSION, ciphertext, _STANDARD)

    def sign(self, message: bytes) -> bytes:
        return self.dsa.sign(message)

    def verify(self, signature: bytes, message: bytes) -> bool:
        return self.dsa.verify(signature, message)


def crypto_call(keys: LocalKeys, operation: str) -> Callable[[], object]:
    """The bare crypto of one operation on the fixed payload, as a no-argument call."""
    payload, ciphertext, signature = keys.payload, keys.ciphertext, keys.signature
    calls: dict[str, Callable[[], object]] = {
        "encrypt": lambda: keys.encrypt(payload),
        "decrypt": lambda: keys.decrypt(ciphertext),
        "sign": lambda: keys.sign(payload),
        "verify": lambda: keys.verify(signature, payload),
    }
    return calls[operation]

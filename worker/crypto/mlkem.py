"""ML-KEM-768 (FIPS 203) from pyca/cryptography, keys kept as their 64-byte seed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from worker.crypto.deterministic import derive_root
from worker.crypto.errors import InvalidInput
from worker.crypto.kem_key import KemKey

__all__ = ["MlKem768"]

SEED_SIZE = 64
PUBLIC_KEY_SIZE = 1184
CIPHERTEXT_SIZE = 1088
SHARED_SECRET_SIZE = 32


@dataclass(frozen=True, slots=True)
class _MlKem768Key(KemKey):
    private: mlkem.MLKEM768PrivateKey = field(repr=False)
    public: mlkem.MLKEM768PublicKey = field(repr=False)

    def encapsulate(self) -> tuple[bytes, bytes]:
        shared_secret, ciphertext = self.public.encapsulate()
        return ciphertext, shared_secret

    def decapsulate(self, kem_ciphertext: bytes) -> bytes:
        if len(kem_ciphertext) != CIPHERTEXT_SIZE:
            raise InvalidInput(f"kem_ciphertext must be {CIPHERTEXT_SIZE} bytes for Kyber768")
        # ML-KEM has implicit rejection: a wrong ciphertext of the right length
        # yields an unrelated secret, never an error.
        return self.private.decapsulate(kem_ciphertext)

    @property
    def hpke_private_key(self) -> mlkem.MLKEM768PrivateKey:
        return self.private

    @property
    def hpke_public_key(self) -> mlkem.MLKEM768PublicKey:
        return self.public


class MlKem768:
    """The Kyber768 algorithm: seed generation and key loading."""

    seed_size = SEED_SIZE
    public_key_size = PUBLIC_KEY_SIZE
    ciphertext_size = CIPHERTEXT_SIZE
    shared_secret_size = SHARED_SECRET_SIZE
    hpke_kem = hpke.KEM.MLKEM768

    def generate_seed(self) -> bytes:
        """A fresh 64-byte (d ‖ z) seed from the OS CSPRNG."""
        return os.urandom(SEED_SIZE)

    def load(self, seed: bytes) -> KemKey:
        """Expand a seed into a usable key (≈ 120 µs: cache the result)."""
        if len(seed) != SEED_SIZE:
            raise InvalidInput("ML-KEM-768 seed must be 64 bytes")
        private = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        public = private.public_key()
        spki = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return _MlKem768Key(spki, derive_root(seed), private, public)

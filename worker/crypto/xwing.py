"""X-Wing: ML-KEM-768 + X25519 (draft-connolly-cfrg-xwing-kem-10).

The private key is the draft's 32-byte decapsulation key ``sk``; everything else is
derived from it::

    expanded = SHAKE256(sk, 96 bytes)
    ML-KEM-768 key = KeyGen_internal(d = expanded[0:32], z = expanded[32:64])
    X25519 secret  = expanded[64:96]
    public key     = ML-KEM ek (1184) ‖ X25519 pk (32)                  1216 bytes
    ciphertext     = ML-KEM ct (1088) ‖ X25519 ephemeral pk (32)        1120 bytes
    shared secret  = SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ 5c2e2f2f5e5c)  32 bytes

The HPKE suite ``MLKEM768_X25519`` of pyca/cryptography is X-Wing (HPKE KEM 0x647a);
tests/crypto/test_xwing.py proves it by opening its output with this module's
decapsulation and a hand-written RFC 9180 key schedule, and the other way round.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from worker.crypto.deterministic import derive_root
from worker.crypto.errors import InvalidInput
from worker.crypto.kem_key import KemKey
from worker.crypto.spki import encode_spki

__all__ = [
    "CIPHERTEXT_SIZE",
    "LABEL",
    "OID",
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SHARED_SECRET_SIZE",
    "XWing",
    "combiner",
]

OID = "1.3.6.1.4.1.62253.25722"
LABEL = b"\\.//^\\"  # the draft's XWingLabel, hex 5c2e2f2f5e5c
SEED_SIZE = 32
MLKEM_PUBLIC_KEY_SIZE = 1184
MLKEM_CIPHERTEXT_SIZE = 1088
X25519_SIZE = 32
PUBLIC_KEY_SIZE = MLKEM_PUBLIC_KEY_SIZE + X25519_SIZE
CIPHERTEXT_SIZE = MLKEM_CIPHERTEXT_SIZE + X25519_SIZE
SHARED_SECRET_SIZE = 32


def combiner(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    """The draft's combiner: ``SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ XWingLabel)``."""
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + LABEL).digest()


def _x25519(private: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    """RFC 7748 X25519(k, u) without the optional all-zero check.

    OpenSSL refuses a low-order peer point (all-zero output). The draft's Decapsulate
    has no such check: the combined secret still depends on ML-KEM's shared secret, so
    a low-order ``ct_X`` degrades X-Wing to ML-KEM-768 and nothing else. Decapsulation
    therefore stays total, as ML-KEM's implicit rejection is: the all-zero output is
    what X25519 computes, and it goes into the combiner like any other value. Which
    points are low order is public, so this branch leaks nothing about the key.
    """
    try:
        return private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        return bytes(X25519_SIZE)


@dataclass(frozen=True, slots=True)
class _XWingKey(KemKey):
    mlkem_private: mlkem.MLKEM768PrivateKey = field(repr=False)
    mlkem_public: mlkem.MLKEM768PublicKey = field(repr=False)
    x25519_private: x25519.X25519PrivateKey = field(repr=False)
    x25519_public: x25519.X25519PublicKey = field(repr=False)
    pk_x: bytes = field(repr=False)
    hpke_private: hpke.MLKEM768X25519PrivateKey = field(repr=False)

    def encapsulate(self) -> tuple[bytes, bytes]:
        ephemeral = x25519.X25519PrivateKey.generate()
        ct_x = ephemeral.public_key().public_bytes_raw()
        ss_x = ephemeral.exchange(self.x25519_public)  # our own key: never low order
        ss_m, ct_m = self.mlkem_public.encapsulate()
        return ct_m + ct_x, combiner(ss_m, ss_x, ct_x, self.pk_x)

    def decapsulate(self, kem_ciphertext: bytes) -> bytes:
        if len(kem_ciphertext) != CIPHERTEXT_SIZE:
            raise InvalidInput(
                f"kem_ciphertext must be {CIPHERTEXT_SIZE} bytes for X-Wing "
                f"({MLKEM_CIPHERTEXT_SIZE}-byte ML-KEM-768 ciphertext followed by the "
                f"{X25519_SIZE}-byte X25519 ephemeral key), got {len(kem_ciphertext)}"
            )
        ct_m = kem_ciphertext[:MLKEM_CIPHERTEXT_SIZE]
        ct_x = kem_ciphertext[MLKEM_CIPHERTEXT_SIZE:]
        ss_m = self.mlkem_private.decapsulate(ct_m)  # implicit rejection, never raises
        ss_x = _x25519(self.x25519_private, ct_x)
        return combiner(ss_m, ss_x, ct_x, self.pk_x)

    @property
    def hpke_private_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return self.hpke_private

    @property
    def hpke_public_key(self) -> hpke.MLKEM768X25519PublicKey:
        return self.hpke_private.public_key()


class XWing:
    """The X-Wing algorithm: seed generation and key loading."""

    seed_size = SEED_SIZE
    public_key_size = PUBLIC_KEY_SIZE
    ciphertext_size = CIPHERTEXT_SIZE
    shared_secret_size = SHARED_SECRET_SIZE

    def generate_seed(self) -> bytes:
        """A fresh 32-byte decapsulation key from the OS CSPRNG (the draft's GenerateKeyPair)."""
        return os.urandom(SEED_SIZE)

    def load(self, seed: bytes) -> KemKey:
        """Expand a 32-byte seed into a usable key (cache the result)."""
        if len(seed) != SEED_SIZE:
            raise InvalidInput("X-Wing seed must be 32 bytes")
        expanded = hashlib.shake_256(seed).digest(96)
        mlkem_private = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        mlkem_public = mlkem_private.public_key()
        x25519_private = x25519.X25519PrivateKey.from_private_bytes(expanded[64:96])
        x25519_public = x25519_private.public_key()
        pk_x = x25519_public.public_bytes_raw()
        public_raw = mlkem_public.public_bytes_raw() + pk_x
        return _XWingKey(
            encode_spki(OID, public_raw),
            derive_root(seed),
            mlkem_private,
            mlkem_public,
            x25519_private,
            x25519_public,
            pk_x,
            hpke.MLKEM768X25519PrivateKey(mlkem_private, x25519_private),
        )

"""ML-DSA-65 (FIPS 204) from pyca/cryptography: pure signing and HashML-DSA.

Keys are kept as their 32-byte seed. ``sign_hash`` implements HashML-DSA (FIPS 204
§5.4) by computing μ over ``M' = 1 ‖ |ctx| ‖ ctx ‖ OID(PH) ‖ PH(M)`` and signing μ
with the external-μ interface, so the signature verifies with any FIPS 204
HashML-DSA-65 implementation.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.algorithms import HashAlgorithm
from worker.crypto.errors import InvalidInput
from worker.crypto.signature_key import SignatureKey as SignatureKeyInterface

__all__ = ["HASH_OIDS", "MlDsa65", "MlDsa65Key", "SignatureKey"]

SEED_SIZE = 32
SIGNATURE_SIZE = 3309
PUBLIC_KEY_SIZE = 1952

# DER encodings of the NIST hash OIDs (FIPS 204 Algorithm 4, step 10 onwards).
HASH_OIDS: dict[HashAlgorithm, bytes] = {
    HashAlgorithm.SHA256: bytes.fromhex("0609608648016503040201"),
    HashAlgorithm.SHA384: bytes.fromhex("0609608648016503040202"),
    HashAlgorithm.SHA512: bytes.fromhex("0609608648016503040203"),
}


@dataclass(frozen=True, slots=True)
class MlDsa65Key(SignatureKeyInterface):
    """A loaded ML-DSA-65 key pair; lives only in worker memory."""

    public_key_spki: bytes
    private: mldsa.MLDSA65PrivateKey = field(repr=False)
    public: mldsa.MLDSA65PublicKey = field(repr=False)
    public_raw: bytes = field(repr=False)

    def sign(self, message: bytes, context: bytes | None = None) -> bytes:
        """Pure ML-DSA-65 signature (hedged, randomised)."""
        return self.private.sign(message, context)

    def verify(self, signature: bytes, message: bytes, context: bytes | None = None) -> bool:
        """True only for a valid signature; wrong lengths are simply invalid."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self.public.verify(signature, message, context)
        except (InvalidSignature, ValueError):
            return False
        return True

    def _hash_mu(self, digest: bytes, hash_algorithm: HashAlgorithm, context: bytes) -> bytes:
        if len(digest) != hash_algorithm.digest_size:
            raise InvalidInput(
                f"hash must be {hash_algorithm.digest_size} bytes for {hash_algorithm.value}"
            )
        if len(context) > 255:
            raise InvalidInput("context must be at most 255 bytes")
        tr = hashlib.shake_256(self.public_raw).digest(64)
        message_prime = (
            b"\x01" + bytes([len(context)]) + context + HASH_OIDS[hash_algorithm] + digest
        )
        return hashlib.shake_256(tr + message_prime).digest(64)

    def sign_hash(
        self, digest: bytes, hash_algorithm: HashAlgorithm, context: bytes | None = None
    ) -> bytes:
        """HashML-DSA-65 signature over a pre-computed digest."""
        return self.private.sign_mu(self._hash_mu(digest, hash_algorithm, context or b""))

    def verify_hash(
        self,
        signature: bytes,
        digest: bytes,
        hash_algorithm: HashAlgorithm,
        context: bytes | None = None,
    ) -> bool:
        """True only for a valid HashML-DSA-65 signature over ``digest``."""
        # Outside the try: InvalidInput is a ValueError and must reach the caller.
        mu = self._hash_mu(digest, hash_algorithm, context or b"")
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self.public.verify_mu(signature, mu)
        except (InvalidSignature, ValueError):
            return False
        return True


# The ML-DSA-65 key under its first name, kept so that code building one directly
# (e.g. a verify-only key in tests) keeps working. The interface every signature key
# implements is ``worker.crypto.SignatureKey`` (worker/crypto/signature_key.py).
SignatureKey = MlDsa65Key


class MlDsa65:
    """The Dilithium3 algorithm: seed generation and key loading."""

    seed_size = SEED_SIZE
    public_key_size = PUBLIC_KEY_SIZE
    signature_size = SIGNATURE_SIZE

    def generate_seed(self) -> bytes:
        """A fresh 32-byte ξ seed from the OS CSPRNG."""
        return os.urandom(SEED_SIZE)

    def load(self, seed: bytes) -> MlDsa65Key:
        """Expand a seed into a usable key pair (cache the result)."""
        if len(seed) != SEED_SIZE:
            raise InvalidInput("ML-DSA-65 seed must be 32 bytes")
        private = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        public = private.public_key()
        spki = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return MlDsa65Key(spki, private, public, public.public_bytes_raw())

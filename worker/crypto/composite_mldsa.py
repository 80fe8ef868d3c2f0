"""Composite ML-DSA: id-MLDSA65-ECDSA-P256-SHA512 (draft-ietf-lamps-pq-composite-sigs).

Follows the draft (the test vectors are identical in -14 to -19) so that other
implementations verify our signatures and read our keys::

    M'         = "CompositeAlgorithmSignatures2025" ‖ Label ‖ len(ctx) (1 byte) ‖ ctx ‖ SHA-512(M)
    Label      = "COMPSIG-MLDSA65-ECDSA-P256-SHA512"
    signature  = ML-DSA-65.Sign(M', context=Label) (3309) ‖ ECDSA-P256-SHA256(M') (DER, ≤ 72)
    public key = ML-DSA-65 pk (1952) ‖ uncompressed P-256 point (65)        2017 bytes
    SPKI       = AlgorithmIdentifier { 1.3.6.1.5.5.7.6.45 } (no parameters), BIT STRING pk
    private    = ML-DSA-65 seed ξ (32) ‖ RFC 5915 ECPrivateKey DER (51)    83 bytes

The 83-byte private key is the draft's own private-key encoding; it is what the key
store wraps (the "seed" of this algorithm), so a key can be exported to, or imported
from, any implementation of the draft without conversion.

Because ``M'`` already contains ``SHA-512(M)``, the draft signs a pre-hashed message by
construction: ``sign_hash`` with a SHA-512 digest produces exactly the signature
``sign`` would produce over the original message, verifiable by any implementation of
the draft. Other digests have no construction in the draft and are refused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.algorithms import HashAlgorithm
from worker.crypto import mldsa as mldsa65
from worker.crypto.errors import InvalidInput
from worker.crypto.signature_key import SignatureKey
from worker.crypto.spki import encode_spki

__all__ = [
    "LABEL",
    "MAX_SIGNATURE_SIZE",
    "OID",
    "PREFIX",
    "PRIVATE_KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "CompositeMlDsa65EcdsaP256",
    "CompositeSignatureKey",
    "message_representative",
]

OID = "1.3.6.1.5.5.7.6.45"
PREFIX = b"CompositeAlgorithmSignatures2025"
LABEL = b"COMPSIG-MLDSA65-ECDSA-P256-SHA512"
PRE_HASH = HashAlgorithm.SHA512

MLDSA_SEED_SIZE = mldsa65.SEED_SIZE
EC_POINT_SIZE = 65  # 04 ‖ X ‖ Y
PUBLIC_KEY_SIZE = mldsa65.PUBLIC_KEY_SIZE + EC_POINT_SIZE
MAX_ECDSA_SIGNATURE_SIZE = 72  # DER SEQUENCE of two INTEGERs of at most 33 bytes each
MIN_ECDSA_SIGNATURE_SIZE = 8
MAX_SIGNATURE_SIZE = mldsa65.SIGNATURE_SIZE + MAX_ECDSA_SIGNATURE_SIZE

# RFC 5915 ECPrivateKey without the optional publicKey, as the draft stores it:
# SEQUENCE { INTEGER 1, OCTET STRING (32-byte scalar), [0] { OID prime256v1 } }
_EC_PRIVATE_HEAD = bytes.fromhex("30310201010420")
_EC_PRIVATE_TAIL = bytes.fromhex("a00a06082a8648ce3d030107")
_EC_SCALAR_SIZE = 32
EC_PRIVATE_KEY_SIZE = len(_EC_PRIVATE_HEAD) + _EC_SCALAR_SIZE + len(_EC_PRIVATE_TAIL)
PRIVATE_KEY_SIZE = MLDSA_SEED_SIZE + EC_PRIVATE_KEY_SIZE
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ECDSA = ec.ECDSA(hashes.SHA256())


def message_representative(message_digest: bytes, context: bytes) -> bytes:
    """The draft's ``M'`` given ``PH(M) = SHA-512(M)`` and the caller's context."""
    if len(context) > 255:
        raise InvalidInput("context must be at most 255 bytes")
    return PREFIX + LABEL + bytes([len(context)]) + context + message_digest


@dataclass(frozen=True, slots=True)
class CompositeSignatureKey(SignatureKey):
    """A loaded id-MLDSA65-ECDSA-P256-SHA512 key pair; lives only in worker memory."""

    public_key_spki: bytes
    mldsa_private: mldsa.MLDSA65PrivateKey | None = field(repr=False)
    mldsa_public: mldsa.MLDSA65PublicKey = field(repr=False)
    ec_private: ec.EllipticCurvePrivateKey | None = field(repr=False)
    ec_public: ec.EllipticCurvePublicKey = field(repr=False)

    @classmethod
    def verifier(cls, public_key: bytes) -> CompositeSignatureKey:
        """A verify-only key from the draft's 2017-byte public key (raises InvalidInput)."""
        if len(public_key) != PUBLIC_KEY_SIZE:
            raise InvalidInput(f"composite public key must be {PUBLIC_KEY_SIZE} bytes")
        split = mldsa65.PUBLIC_KEY_SIZE
        try:
            mldsa_public = mldsa.MLDSA65PublicKey.from_public_bytes(public_key[:split])
            ec_public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), public_key[split:]
            )
        except ValueError:
            raise InvalidInput("not a valid composite public key") from None
        return cls(encode_spki(OID, public_key), None, mldsa_public, None, ec_public)

    def _sign_representative(self, representative: bytes) -> bytes:
        if self.mldsa_private is None or self.ec_private is None:
            raise InvalidInput("this key can only verify")
        return self.mldsa_private.sign(representative, LABEL) + self.ec_private.sign(
            representative, _ECDSA
        )

    def _verify_representative(self, signature: bytes, representative: bytes) -> bool:
        split = mldsa65.SIGNATURE_SIZE
        ecdsa_size = len(signature) - split
        if not MIN_ECDSA_SIGNATURE_SIZE <= ecdsa_size <= MAX_ECDSA_SIGNATURE_SIZE:
            return False
        try:
            # Both components must verify. The reply is the same whichever failed; the
            # inputs are public, so the time taken (ECDSA is skipped) reveals nothing.
            self.mldsa_public.verify(signature[:split], representative, LABEL)
            self.ec_public.verify(signature[split:], representative, _ECDSA)
        except (InvalidSignature, ValueError):
            return False
        return True

    def sign(self, message: bytes, context: bytes | None = None) -> bytes:
        """Composite signature over ``message`` (both components hedged/randomised)."""
        digest = hashlib.sha512(message).digest()
        return self._sign_representative(message_representative(digest, context or b""))

    def verify(self, signature: bytes, message: bytes, context: bytes | None = None) -> bool:
        """True only when both the ML-DSA-65 and the ECDSA P-256 component verify."""
        if context is not None and len(context) > 255:
            return False
        digest = hashlib.sha512(message).digest()
        return self._verify_representative(
            signature, message_representative(digest, context or b"")
        )

    def _check_digest(self, digest: bytes, hash_algorithm: HashAlgorithm) -> None:
        if hash_algorithm is not PRE_HASH:
            raise InvalidInput(
                "hash_algorithm must be SHA-512 for Composite-ML-DSA: the composite "
                "draft signs SHA-512(message) (id-MLDSA65-ECDSA-P256-SHA512)"
            )
        if len(digest) != PRE_HASH.digest_size:
            raise InvalidInput(f"hash must be {PRE_HASH.digest_size} bytes for SHA-512")

    def sign_hash(
        self, digest: bytes, hash_algorithm: HashAlgorithm, context: bytes | None = None
    ) -> bytes:
        """The composite signature of the message whose SHA-512 digest is ``digest``."""
        self._check_digest(digest, hash_algorithm)
        return self._sign_representative(message_representative(digest, context or b""))

    def verify_hash(
        self,
        signature: bytes,
        digest: bytes,
        hash_algorithm: HashAlgorithm,
        context: bytes | None = None,
    ) -> bool:
        """True only for a valid composite signature of the message with this digest."""
        # Outside any try: InvalidInput (unsupported hash) must reach the caller.
        self._check_digest(digest, hash_algorithm)
        if context is not None and len(context) > 255:
            return False
        return self._verify_representative(
            signature, message_representative(digest, context or b"")
        )


def _ec_private_key_der(scalar: int) -> bytes:
    return _EC_PRIVATE_HEAD + scalar.to_bytes(_EC_SCALAR_SIZE, "big") + _EC_PRIVATE_TAIL


def _ec_scalar(der: bytes) -> int:
    """The scalar of the draft's fixed-form P-256 ECPrivateKey; anything else is refused."""
    head, tail = len(_EC_PRIVATE_HEAD), len(_EC_PRIVATE_HEAD) + _EC_SCALAR_SIZE
    if (
        len(der) != EC_PRIVATE_KEY_SIZE
        or der[:head] != _EC_PRIVATE_HEAD
        or der[tail:] != _EC_PRIVATE_TAIL
    ):
        raise InvalidInput("composite private key: not a P-256 ECPrivateKey")
    scalar = int.from_bytes(der[head:tail], "big")
    if not 1 <= scalar < _P256_ORDER:
        raise InvalidInput("composite private key: P-256 scalar out of range")
    return scalar


class CompositeMlDsa65EcdsaP256:
    """The Composite-ML-DSA algorithm: key generation and loading."""

    seed_size = PRIVATE_KEY_SIZE
    public_key_size = PUBLIC_KEY_SIZE
    signature_size = MAX_SIGNATURE_SIZE  # the ECDSA part is DER: 3379 to 3381 bytes in practice

    def generate_seed(self) -> bytes:
        """A fresh 83-byte private key: ML-DSA ξ ‖ ECPrivateKey, both from the OS CSPRNG."""
        ec_private = ec.generate_private_key(ec.SECP256R1())
        scalar = ec_private.private_numbers().private_value
        return os.urandom(MLDSA_SEED_SIZE) + _ec_private_key_der(scalar)

    def load(self, seed: bytes) -> CompositeSignatureKey:
        """Load the draft's 83-byte private key (cache the result)."""
        if len(seed) != PRIVATE_KEY_SIZE:
            raise InvalidInput(f"Composite-ML-DSA private key must be {PRIVATE_KEY_SIZE} bytes")
        mldsa_private = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed[:MLDSA_SEED_SIZE])
        ec_private = ec.derive_private_key(_ec_scalar(seed[MLDSA_SEED_SIZE:]), ec.SECP256R1())
        mldsa_public = mldsa_private.public_key()
        ec_public = ec_private.public_key()
        public_raw = mldsa_public.public_bytes_raw() + ec_public.public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        return CompositeSignatureKey(
            encode_spki(OID, public_raw), mldsa_private, mldsa_public, ec_private, ec_public
        )

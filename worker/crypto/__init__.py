"""Our hazmat layer: HPKE encryption and its byte format over ML-KEM-768 and X-Wing,
ML-DSA-65 and composite ML-DSA-65 + ECDSA P-256 signatures.

Knows nothing of NATS, databases or tenants.
"""

from worker.crypto.ciphertext_format import Mode
from worker.crypto.errors import InvalidCiphertext, InvalidInput, UnsupportedAlgorithm
from worker.crypto.hybrid import (
    WRAPPING_METHODS,
    open_ciphertext,
    seal,
    seal_deterministic_ciphertext,
)
from worker.crypto.kem_key import KemKey
from worker.crypto.registry import (
    KemAlgorithm,
    NewKey,
    SignatureAlgorithm,
    kem_algorithm,
    load_public_spki,
    new_key,
    signature_algorithm,
)
from worker.crypto.signature_key import SignatureKey

__all__ = [
    "InvalidCiphertext",
    "InvalidInput",
    "KemAlgorithm",
    "KemKey",
    "Mode",
    "NewKey",
    "SignatureAlgorithm",
    "SignatureKey",
    "UnsupportedAlgorithm",
    "WRAPPING_METHODS",
    "kem_algorithm",
    "load_public_spki",
    "new_key",
    "open_ciphertext",
    "seal",
    "seal_deterministic_ciphertext",
    "signature_algorithm",
]

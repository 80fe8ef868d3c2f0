"""Our hazmat layer: ML-KEM hybrid encryption and its byte format, ML-DSA signatures.

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
from worker.crypto.mldsa import SignatureKey
from worker.crypto.registry import NewKey, kem_algorithm, new_key, signature_algorithm

__all__ = [
    "InvalidCiphertext",
    "InvalidInput",
    "KemKey",
    "Mode",
    "NewKey",
    "SignatureKey",
    "UnsupportedAlgorithm",
    "WRAPPING_METHODS",
    "kem_algorithm",
    "new_key",
    "open_ciphertext",
    "seal",
    "seal_deterministic_ciphertext",
    "signature_algorithm",
]

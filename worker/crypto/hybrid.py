"""kem/encrypt, kem/decrypt, key wrap and unwrap over RFC 9180 HPKE (base mode).

Suite: KEM = the key's algorithm (ML-KEM-768, or ML-KEM-768+X25519 for X-Wing),
KDF = HKDF-SHA256, AEAD = AES-256-GCM, ``info`` = the ciphertext header. Any HPKE
implementation with ML-KEM can produce a ciphertext this service opens.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke

from schemas.algorithms import Algorithm
from worker.crypto.ciphertext_format import (
    HEADER_SIZE,
    Header,
    Mode,
    header_bytes,
    parse_header,
)
from worker.crypto.deterministic import open_deterministic, seal_deterministic
from worker.crypto.errors import InvalidCiphertext
from worker.crypto.kem_key import KemKey

__all__ = ["WRAPPING_METHODS", "open_ciphertext", "seal", "seal_deterministic_ciphertext"]

_SUITES: dict[Algorithm, hpke.Suite] = {
    Algorithm.KYBER768: hpke.Suite(hpke.KEM.MLKEM768, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    Algorithm.XWING: hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
}

WRAPPING_METHODS: dict[Algorithm, str] = {
    Algorithm.KYBER768: "HPKE-Base(ML-KEM-768, HKDF-SHA256, AES-256-GCM)",
    Algorithm.XWING: "HPKE-Base(ML-KEM-768+X25519, HKDF-SHA256, AES-256-GCM)",
}


def seal(
    key: KemKey, algorithm: Algorithm, key_version: int, mode: Mode, plaintext: bytes
) -> bytes:
    """Standard encryption or key wrap: ``header | enc | ciphertext``."""
    header = header_bytes(algorithm, mode, key_version)
    return header + _SUITES[algorithm].encrypt(plaintext, key.hpke_public_key, info=header)


def seal_deterministic_ciphertext(
    key: KemKey, algorithm: Algorithm, key_version: int, salt: bytes, plaintext: bytes
) -> bytes:
    """Deterministic encryption under the key version's derived secret and the salt."""
    header = Header(algorithm, Mode.DETERMINISTIC, key_version).to_bytes()
    return seal_deterministic(key.deterministic_root, salt, header, plaintext)


def open_ciphertext(
    key: KemKey, algorithm: Algorithm, key_version: int, blob: bytes, allowed: frozenset[Mode]
) -> bytes:
    """Open any ciphertext of this key version whose mode is allowed; one opaque error."""
    header = parse_header(blob)
    if (
        header.algorithm != algorithm
        or header.key_version != key_version
        or header.mode not in allowed
    ):
        raise InvalidCiphertext
    header_bytes = blob[:HEADER_SIZE]
    body = blob[HEADER_SIZE:]
    if header.mode is Mode.DETERMINISTIC:
        return open_deterministic(key.deterministic_root, header_bytes, body)
    try:
        return _SUITES[algorithm].decrypt(body, key.hpke_private_key, info=header_bytes)
    except Exception:  # every HPKE failure is the same opaque error
        raise InvalidCiphertext from None

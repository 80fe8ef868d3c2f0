"""Deterministic encryption: AES-SIV keyed per (key version, caller salt).

Same plaintext + same salt + same key version ⇒ same ciphertext, for equality search
and de-duplication. AES-SIV is nonce-misuse resistant, so determinism costs only the
obvious leak (equal plaintexts are visible as equal), nothing more.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from worker.crypto.errors import InvalidCiphertext, InvalidInput

__all__ = ["derive_root", "open_deterministic", "seal_deterministic"]

_ROOT_INFO = b"pqkms/v1 deterministic-encryption root"
_SALT_LENGTH = struct.Struct(">H")


def derive_root(seed: bytes) -> bytes:
    """A 32-byte secret bound to one private seed; computed once per loaded key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_ROOT_INFO).derive(seed)


def _siv(root: bytes, salt: bytes, header: bytes) -> AESSIV:
    key = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=header).derive(root)
    return AESSIV(key)


def seal_deterministic(root: bytes, salt: bytes, header: bytes, plaintext: bytes) -> bytes:
    """``header | len(salt) | salt | AES-SIV(plaintext, ad=[header])``."""
    if len(salt) > 0xFFFF:  # the salt length is a u16 in the format
        raise InvalidInput("salt must be at most 65535 bytes")
    sealed = _siv(root, salt, header).encrypt(plaintext, [header])
    return header + _SALT_LENGTH.pack(len(salt)) + salt + sealed


def open_deterministic(root: bytes, header: bytes, body: bytes) -> bytes:
    """Inverse of :func:`seal_deterministic` given the bytes after the header."""
    if len(body) < _SALT_LENGTH.size:
        raise InvalidCiphertext
    (salt_length,) = _SALT_LENGTH.unpack_from(body)
    salt = body[_SALT_LENGTH.size : _SALT_LENGTH.size + salt_length]
    sealed = body[_SALT_LENGTH.size + salt_length :]
    if len(salt) != salt_length or len(sealed) < 16:
        raise InvalidCiphertext
    try:
        return _siv(root, salt, header).decrypt(sealed, [header])
    except (InvalidTag, ValueError):
        raise InvalidCiphertext from None

"""The master key-encryption key (KEK): loading, creating, seed wrapping, key-check value.

Private keys are stored as their FIPS seeds, each wrapped with AES-256-GCM under the
KEK with a random 96-bit nonce and associated data that binds tenant, algorithm, key
version and KEK id, so a wrapped seed copied to another row does not open. A deployment
may hold several KEKs at once (rotation): see :mod:`worker.store.keyring`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_SIZE",
    "MasterKey",
    "MasterKeyError",
    "MasterKeyMismatch",
    "SeedIntegrityError",
    "key_check_value",
    "load_or_create_master_key",
    "master_key_from_base64",
    "seed_aad",
    "unwrap_seed",
    "wrap_seed",
]

KEY_SIZE = 32
NONCE_SIZE = 12
_KEK_ID_LABEL = b"pqkms-kek-id"
_KCV_LABEL = b"pqkms key check value v1"
_AAD_PREFIX = b"pqkms/seed/v1|"


class MasterKeyError(Exception):
    """The master key file is missing, unreadable or malformed."""


class MasterKeyMismatch(Exception):
    """The master key is not the one the database was created with."""


class SeedIntegrityError(Exception):
    """A wrapped seed failed authentication: wrong key, tampered row or wrong binding."""


@dataclass(frozen=True)
class MasterKey:
    """A 32-byte AES-256 key-encryption key and its public identifier."""

    key: bytes = field(repr=False)
    kek_id: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise MasterKeyError(f"The master key must be {KEY_SIZE} bytes, got {len(self.key)}")
        digest = hashlib.sha256(_KEK_ID_LABEL + self.key).digest()
        object.__setattr__(self, "kek_id", digest[:8].hex())

    def __repr__(self) -> str:
        return f"MasterKey(kek_id={self.kek_id!r})"

    __str__ = __repr__


def master_key_from_base64(text: str) -> MasterKey:
    """Decode a master key given as base64 text (surrounding whitespace ignored)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError("The master key is not valid base64") from exc
    if len(raw) != KEY_SIZE:
        raise MasterKeyError(f"The master key must decode to {KEY_SIZE} bytes, got {len(raw)}")
    return MasterKey(raw)


def load_or_create_master_key(path: Path, *, create: bool = True) -> MasterKey:
    """The primary key of the keyring file, creating a one-key file (mode 0600) when
    absent and ``create`` is set (see :func:`worker.store.keyring.load_keyring`).

    Code that unwraps stored seeds needs the whole keyring, not only this key.
    """
    # Imported here: the keyring module builds on this one.
    from worker.store.keyring import load_keyring

    return load_keyring(Path(path), create=create).primary


def seed_aad(tenant_id: str, algorithm: str, version: int, kek_id: str) -> bytes:
    """Associated data binding a wrapped seed to its tenant, algorithm, version and KEK."""
    fields = [tenant_id, str(algorithm), str(int(version)), kek_id]
    if any("|" in f for f in fields):
        raise ValueError("seed AAD fields must not contain '|'")
    return _AAD_PREFIX + "|".join(fields).encode("utf-8")


def wrap_seed(master: MasterKey, seed: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt a seed with AES-256-GCM; returns ``(nonce, ciphertext)``."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce, AESGCM(master.key).encrypt(nonce, seed, aad)


def unwrap_seed(master: MasterKey, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt a wrapped seed; raises :class:`SeedIntegrityError` if it does not authenticate."""
    try:
        return AESGCM(master.key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise SeedIntegrityError("Stored key material failed its integrity check") from exc


def key_check_value(master: MasterKey) -> bytes:
    """16-byte value stored in the database to recognise the right master key at start."""
    return hmac.new(master.key, _KCV_LABEL, hashlib.sha256).digest()[:16]

"""Algorithm registry: each wire name → the provider that implements it.

Handlers and services look algorithms up here; there are no ``if algorithm == …``
chains elsewhere. An algorithm with no installed provider raises
``UnsupportedAlgorithm`` with a message that says what to install.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.algorithms import Algorithm
from worker.crypto.errors import UnsupportedAlgorithm
from worker.crypto.kem_key import KemKey
from worker.crypto.mldsa import MlDsa65, SignatureKey
from worker.crypto.mlkem import MlKem768

__all__ = ["KemAlgorithm", "NewKey", "SignatureAlgorithm", "kem_algorithm", "new_key",
           "signature_algorithm", "load_public_spki"]


class KemAlgorithm(Protocol):
    """What a KEM provider offers."""

    seed_size: int
    ciphertext_size: int

    def generate_seed(self) -> bytes: ...
    def load(self, seed: bytes) -> KemKey: ...


class SignatureAlgorithm(Protocol):
    """What a signature provider offers."""

    seed_size: int
    signature_size: int

    def generate_seed(self) -> bytes: ...
    def load(self, seed: bytes) -> SignatureKey: ...


_KEM: dict[Algorithm, KemAlgorithm] = {Algorithm.KYBER768: MlKem768()}
_SIGNATURE: dict[Algorithm, SignatureAlgorithm] = {Algorithm.DILITHIUM3: MlDsa65()}


def kem_algorithm(algorithm: Algorithm) -> KemAlgorithm:
    """The KEM provider for a wire name."""
    try:
        return _KEM[algorithm]
    except KeyError:
        raise UnsupportedAlgorithm(
            f"{algorithm.value} is not available in this deployment"
        ) from None


def signature_algorithm(algorithm: Algorithm) -> SignatureAlgorithm:
    """The signature provider for a wire name."""
    try:
        return _SIGNATURE[algorithm]
    except KeyError:
        raise UnsupportedAlgorithm(
            f"{algorithm.value} is not available in this deployment"
        ) from None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: its seed (to be wrapped) and its public key (SPKI DER)."""

    seed: bytes
    public_key_spki: bytes

    def __repr__(self) -> str:
        return f"NewKey(public_key_spki=<{len(self.public_key_spki)} bytes>)"


def new_key(algorithm: Algorithm) -> NewKey:
    """Generate a seed for any registered algorithm and derive its public key."""
    if algorithm in _KEM:
        provider_kem = _KEM[algorithm]
        seed = provider_kem.generate_seed()
        return NewKey(seed, provider_kem.load(seed).public_key_spki)
    provider_sig = signature_algorithm(algorithm)
    seed = provider_sig.generate_seed()
    return NewKey(seed, provider_sig.load(seed).public_key_spki)


def load_public_spki(algorithm: Algorithm, seed: bytes) -> bytes:
    """The SPKI public key of a stored seed (used by consistency checks)."""
    if algorithm in _KEM:
        return _KEM[algorithm].load(seed).public_key_spki
    return signature_algorithm(algorithm).load(seed).public_key_spki

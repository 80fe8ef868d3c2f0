"""Algorithm registry: each wire name → the provider that implements it, with its sizes.

Handlers and services look algorithms up here; there are no ``if algorithm == …``
chains elsewhere. An algorithm with no installed provider raises
``UnsupportedAlgorithm`` with a message that says why and what would provide it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.algorithms import Algorithm
from worker.crypto.composite_mldsa import CompositeMlDsa65EcdsaP256
from worker.crypto.errors import UnsupportedAlgorithm
from worker.crypto.kem_key import KemKey
from worker.crypto.mldsa import MlDsa65
from worker.crypto.mlkem import MlKem768
from worker.crypto.signature_key import SignatureKey
from worker.crypto.slh_dsa import INSTALL_HINT, PARAMETER_SETS, providers
from worker.crypto.xwing import XWing

__all__ = [
    "KemAlgorithm",
    "NewKey",
    "SignatureAlgorithm",
    "kem_algorithm",
    "load_public_spki",
    "new_key",
    "signature_algorithm",
]


class KemAlgorithm(Protocol):
    """What a KEM provider offers: sizes in bytes, seed generation, key loading."""

    @property
    def seed_size(self) -> int: ...
    @property
    def public_key_size(self) -> int: ...
    @property
    def ciphertext_size(self) -> int: ...
    @property
    def shared_secret_size(self) -> int: ...

    def generate_seed(self) -> bytes: ...
    def load(self, seed: bytes) -> KemKey: ...


class SignatureAlgorithm(Protocol):
    """What a signature provider offers; ``signature_size`` is the maximum length."""

    @property
    def seed_size(self) -> int: ...
    @property
    def public_key_size(self) -> int: ...
    @property
    def signature_size(self) -> int: ...

    def generate_seed(self) -> bytes: ...
    def load(self, seed: bytes) -> SignatureKey: ...


_KEM: dict[Algorithm, KemAlgorithm] = {
    Algorithm.KYBER768: MlKem768(),
    Algorithm.XWING: XWing(),
}
_SIGNATURE: dict[Algorithm, SignatureAlgorithm] = {
    Algorithm.DILITHIUM3: MlDsa65(),
    Algorithm.COMPOSITE_ML_DSA: CompositeMlDsa65EcdsaP256(),
}
# SLH-DSA when the optional pqcrypto wheel imports (worker/crypto/slh_dsa.py).
_SIGNATURE.update(providers())

# Names on the wire with no provider in this build, and why (docs/algorithms.md).
_SLH_DSA_MISSING = (
    "no SLH-DSA provider is installed: the pqcrypto wheel does not import; "
    f"install it with {INSTALL_HINT} (see docs/algorithms.md, SLH-DSA)"
)
_UNAVAILABLE: dict[Algorithm, str] = {
    algorithm: _SLH_DSA_MISSING for algorithm in PARAMETER_SETS if algorithm not in _SIGNATURE
}


def _unsupported(algorithm: Algorithm) -> UnsupportedAlgorithm:
    reason = _UNAVAILABLE.get(algorithm, "no provider implements it")
    return UnsupportedAlgorithm(f"{algorithm.value} is not available in this deployment: {reason}")


def kem_algorithm(algorithm: Algorithm) -> KemAlgorithm:
    """The KEM provider for a wire name."""
    try:
        return _KEM[algorithm]
    except KeyError:
        raise _unsupported(algorithm) from None


def signature_algorithm(algorithm: Algorithm) -> SignatureAlgorithm:
    """The signature provider for a wire name."""
    try:
        return _SIGNATURE[algorithm]
    except KeyError:
        raise _unsupported(algorithm) from None


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
    """The SPKI public key of a stored seed (the stored public key is checked against it)."""
    if algorithm in _KEM:
        return _KEM[algorithm].load(seed).public_key_spki
    return signature_algorithm(algorithm).load(seed).public_key_spki

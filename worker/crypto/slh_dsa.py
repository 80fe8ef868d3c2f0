"""SLH-DSA (FIPS 205, pure mode) from the optional ``pqcrypto`` wheel.

``pip install 'pqkms[slh-dsa]'`` installs it. The wheel's ``slh_dsa_sha2_*`` modules are
FIPS 205 SLH-DSA, not round-3 SPHINCS+: their signatures verify under an independent
FIPS 205 verifier that builds ``M' = 0 ‖ |ctx| ‖ ctx ‖ M`` (tests/crypto/test_slh_dsa.py).

Stored key material is the provider's secret key, the FIPS 205 private key
``SK.seed ‖ SK.prf ‖ PK.seed ‖ PK.root`` (4n bytes): the wheel has no key generation
from a seed. The public key is its last half.

The wheel holds the GIL for a whole call, and one signature takes 17 ms (128f) to
~0.8 s (192s), so signing runs in a small process pool owned by this module (created
on first use, at most two processes). Verification takes about 1 ms and runs where
the service runs other verifications. ``sign_hash``/``verify_hash`` are refused: the
wheel's HashSLH-DSA hashes the message itself and cannot sign a caller's digest.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Final

from schemas.algorithms import Algorithm, HashAlgorithm
from worker.crypto.errors import InvalidInput
from worker.crypto.signature_key import SignatureKey
from worker.crypto.spki import encode_spki

__all__ = [
    "INSTALL_HINT",
    "PARAMETER_SETS",
    "SlhDsa",
    "SlhDsaKey",
    "providers",
    "shutdown_pool",
]

INSTALL_HINT: Final = "pip install 'pqkms[slh-dsa]'"
MAX_CONTEXT_BYTES: Final = 255
MAX_SIGNING_PROCESSES: Final = 2


@dataclass(frozen=True, slots=True)
class ParameterSet:
    """One FIPS 205 parameter set: its pqcrypto module, SPKI OID and sizes (bytes)."""

    module: str
    oid: str
    n: int
    signature_size: int


# OIDs: NIST CSOR sigAlgs (2.16.840.1.101.3.4.3.x), as in RFC 9909 / OpenSSL's names.
PARAMETER_SETS: Final[dict[Algorithm, ParameterSet]] = {
    Algorithm.SLH_DSA_SHA2_128S: ParameterSet("slh_dsa_sha2_128s", "2.16.840.1.101.3.4.3.20",
                                              16, 7856),
    Algorithm.SLH_DSA_SHA2_128F: ParameterSet("slh_dsa_sha2_128f", "2.16.840.1.101.3.4.3.21",
                                              16, 17088),
    Algorithm.SLH_DSA_SHA2_192S: ParameterSet("slh_dsa_sha2_192s", "2.16.840.1.101.3.4.3.22",
                                              24, 16224),
    Algorithm.SLH_DSA_SHA2_256S: ParameterSet("slh_dsa_sha2_256s", "2.16.840.1.101.3.4.3.24",
                                              32, 29792),
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"pqcrypto.sign.{name}")


def _sign_in_process(module: str, secret: bytes, message: bytes, context: bytes | None) -> bytes:
    """Runs in a pool process: only the secret key bytes and the message cross over."""
    signature: bytes = _module(module).sign(secret, message, context=context)
    return signature


_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _signing_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn: never fork a process that runs an event loop and threads.
            _pool = ProcessPoolExecutor(
                max_workers=min(MAX_SIGNING_PROCESSES, os.cpu_count() or 1),
                mp_context=multiprocessing.get_context("spawn"),
            )
        return _pool


def shutdown_pool() -> None:
    """Stop the signing processes (they are started again on the next signature)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True)


def _check_context(context: bytes | None) -> None:
    if context is not None and len(context) > MAX_CONTEXT_BYTES:
        raise InvalidInput("context must be at most 255 bytes")


def _no_hash_mode(algorithm: str) -> InvalidInput:
    return InvalidInput(
        f"sign-hash and verify-hash are not supported for {algorithm}: the pqcrypto "
        "provider cannot sign a caller-computed digest (HashSLH-DSA); use sign/verify"
    )


@dataclass(frozen=True, slots=True)
class SlhDsaKey(SignatureKey):
    """A loaded SLH-DSA key pair; lives only in worker memory."""

    public_key_spki: bytes
    algorithm: str
    params: ParameterSet = field(repr=False)
    secret: bytes = field(repr=False)
    public_raw: bytes = field(repr=False)

    def sign(self, message: bytes, context: bytes | None = None) -> bytes:
        """A pure SLH-DSA signature (randomised), computed in the signing pool."""
        _check_context(context)
        future = _signing_pool().submit(
            _sign_in_process, self.params.module, self.secret, message, context
        )
        return future.result()

    async def sign_async(
        self,
        message: bytes,
        context: bytes | None,
        in_thread: Callable[[Callable[[], bytes]], Awaitable[bytes]],
    ) -> bytes:
        """Await the signing pool directly: no crypto thread waits on it."""
        _check_context(context)
        return await asyncio.get_running_loop().run_in_executor(
            _signing_pool(), _sign_in_process, self.params.module, self.secret, message, context
        )

    def verify(self, signature: bytes, message: bytes, context: bytes | None = None) -> bool:
        """True only for a valid signature; wrong lengths and contexts are simply invalid."""
        if len(signature) != self.params.signature_size:
            return False
        if context is not None and len(context) > MAX_CONTEXT_BYTES:
            return False
        try:
            _module(self.params.module).verify(self.public_raw, message, signature,
                                               context=context)
        except Exception:  # InvalidSignatureError, ValueError: never a valid signature
            return False
        return True

    def sign_hash(
        self, digest: bytes, hash_algorithm: HashAlgorithm, context: bytes | None = None
    ) -> bytes:
        """Refused: see the module docstring."""
        raise _no_hash_mode(self.algorithm)

    def verify_hash(
        self,
        signature: bytes,
        digest: bytes,
        hash_algorithm: HashAlgorithm,
        context: bytes | None = None,
    ) -> bool:
        """Refused: see the module docstring."""
        raise _no_hash_mode(self.algorithm)


class SlhDsa:
    """One SLH-DSA parameter set: key generation and key loading."""

    def __init__(self, algorithm: Algorithm) -> None:
        self._algorithm = algorithm
        self._params = PARAMETER_SETS[algorithm]
        self.seed_size = 4 * self._params.n
        self.public_key_size = 2 * self._params.n
        self.signature_size = self._params.signature_size

    def generate_seed(self) -> bytes:
        """A fresh FIPS 205 private key from the provider's key generation."""
        _public, secret = _module(self._params.module).keygen()
        if not isinstance(secret, bytes) or len(secret) != self.seed_size:
            raise RuntimeError(f"pqcrypto returned an unexpected {self._algorithm.value} key")
        return secret

    def load(self, seed: bytes) -> SlhDsaKey:
        """A usable key pair from the stored private key (no recomputation of PK.root)."""
        if len(seed) != self.seed_size:
            raise InvalidInput(f"{self._algorithm.value} private key must be "
                               f"{self.seed_size} bytes")
        public_raw = seed[2 * self._params.n:]
        return SlhDsaKey(encode_spki(self._params.oid, public_raw), self._algorithm.value,
                         self._params, bytes(seed), public_raw)


def providers() -> dict[Algorithm, SlhDsa]:
    """Every parameter set, when the pqcrypto wheel imports; empty when it does not."""
    try:
        for params in PARAMETER_SETS.values():
            _module(params.module)
    except ImportError:
        return {}
    return {algorithm: SlhDsa(algorithm) for algorithm in PARAMETER_SETS}

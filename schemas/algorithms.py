"""Algorithm, plan, status and mode names exactly as they appear on the wire."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "Algorithm",
    "HashAlgorithm",
    "KEM_ALGORITHMS",
    "KeyStatus",
    "Plan",
    "EncryptMode",
    "SIGNATURE_ALGORITHMS",
    "DEFAULT_KEM_ALGORITHM",
    "DEFAULT_SIGNATURE_ALGORITHM",
]


class Algorithm(StrEnum):
    """Key algorithms. ``Kyber768`` is ML-KEM-768, ``Dilithium3`` is ML-DSA-65.

    docs/algorithms.md gives each one's standard, sizes and encodings. The SLH-DSA
    names are accepted on the wire so that a deployment without an SLH-DSA provider
    answers with a clear 400 saying so, rather than "unknown algorithm".
    """

    KYBER768 = "Kyber768"
    XWING = "X-Wing"
    DILITHIUM3 = "Dilithium3"
    COMPOSITE_ML_DSA = "Composite-ML-DSA"
    SLH_DSA_SHA2_128S = "SLH-DSA-SHA2-128s"
    SLH_DSA_SHA2_128F = "SLH-DSA-SHA2-128f"
    SLH_DSA_SHA2_192S = "SLH-DSA-SHA2-192s"
    SLH_DSA_SHA2_256S = "SLH-DSA-SHA2-256s"


KEM_ALGORITHMS: frozenset[Algorithm] = frozenset({Algorithm.KYBER768, Algorithm.XWING})
SIGNATURE_ALGORITHMS: frozenset[Algorithm] = frozenset(
    {
        Algorithm.DILITHIUM3,
        Algorithm.COMPOSITE_ML_DSA,
        Algorithm.SLH_DSA_SHA2_128S,
        Algorithm.SLH_DSA_SHA2_128F,
        Algorithm.SLH_DSA_SHA2_192S,
        Algorithm.SLH_DSA_SHA2_256S,
    }
)
DEFAULT_KEM_ALGORITHM = Algorithm.KYBER768
DEFAULT_SIGNATURE_ALGORITHM = Algorithm.DILITHIUM3


class HashAlgorithm(StrEnum):
    """Digests accepted by sign-hash / verify-hash."""

    SHA256 = "SHA-256"
    SHA384 = "SHA-384"
    SHA512 = "SHA-512"

    @property
    def digest_size(self) -> int:
        """Length in bytes of a digest of this algorithm."""
        return {"SHA-256": 32, "SHA-384": 48, "SHA-512": 64}[self.value]


class KeyStatus(StrEnum):
    """Lifecycle states: active → retired → archived."""

    ACTIVE = "active"
    RETIRED = "retired"
    ARCHIVED = "archived"


class Plan(StrEnum):
    """Tenant plans; limits per plan are configured in the worker."""

    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class EncryptMode(StrEnum):
    """``kem/encrypt`` modes."""

    STANDARD = "standard"
    DETERMINISTIC = "deterministic"

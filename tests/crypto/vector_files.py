"""Loading of the known-answer and Wycheproof files the crypto tests run against.

NIST-style ``.rsp`` files come from the ``cryptography-vectors`` package (same version
as ``cryptography``); Wycheproof JSON files from ``PQKMS_WYCHEPROOF_DIR`` (by default the
shared copy of C2SP/wycheproof ``testvectors_v1``). Tests skip, not fail, when the
Wycheproof directory is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cryptography_vectors
import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa

from worker.crypto.mldsa import SignatureKey

WYCHEPROOF_DIR = Path(os.environ.get("PQKMS_WYCHEPROOF_DIR", "/work/shared/vectors/wycheproof"))


def load_rsp(relative_path: str) -> list[dict[str, str]]:
    """Records of a NIST ``.rsp`` file: ``key = value`` lines, each record from ``count``."""
    with cryptography_vectors.open_vector_file(relative_path, "r") as handle:
        lines = handle.read().splitlines()
    records: list[dict[str, str]] = []
    for line in lines:
        if " = " not in line:
            continue
        key, value = (part.strip() for part in line.split(" = ", 1))
        if key == "count":
            records.append({})
        records[-1][key] = value
    return records


@cache
def wycheproof(name: str) -> dict[str, Any]:
    """One Wycheproof file, parsed (cached: several tests walk the same file)."""
    path = WYCHEPROOF_DIR / name
    if not path.is_file():
        pytest.skip(f"Wycheproof vectors not found at {path} (set PQKMS_WYCHEPROOF_DIR)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@dataclass(frozen=True)
class Case:
    """One Wycheproof test with the group it belongs to."""

    group: dict[str, Any]
    test: dict[str, Any]

    @property
    def valid(self) -> bool:
        # "acceptable" does not occur in the ML-KEM/ML-DSA files; treat it as a failure
        # to classify so that a new vector file cannot slip through unnoticed.
        assert self.test["result"] in ("valid", "invalid"), self.test["result"]
        return bool(self.test["result"] == "valid")

    def bytes(self, field: str) -> bytes:
        return bytes.fromhex(self.test[field])

    def optional(self, field: str) -> bytes | None:
        value = self.test.get(field)
        return None if value is None else bytes.fromhex(value)


def wycheproof_cases(name: str) -> list[pytest.param]:
    """Every test of a Wycheproof file as a pytest param named ``tcId-comment``."""
    path = WYCHEPROOF_DIR / name
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} not found"))]
    data = json.loads(path.read_text())
    params = []
    for group in data["testGroups"]:
        for test in group["tests"]:
            comment = (test.get("comment") or "-")[:40].replace(" ", "_")
            params.append(pytest.param(Case(group, test), id=f"{test['tcId']}-{comment}"))
    return params


def iter_cases(name: str) -> Iterator[Case]:
    for group in wycheproof(name)["testGroups"]:
        for test in group["tests"]:
            yield Case(group, test)


def verifier(public_raw: bytes) -> SignatureKey:
    """A verify-only ``SignatureKey`` for a raw ML-DSA-65 public key (no private half).

    The service only verifies with its own keys; vectors come with a public key only, so
    this builds the same object without a private key to run our ``verify`` code on them.
    Raises ``ValueError`` for a public key that is not 1952 valid bytes.
    """
    public = mldsa.MLDSA65PublicKey.from_public_bytes(public_raw)
    return SignatureKey(b"", None, public, public_raw)  # type: ignore[arg-type]


def pure_mu(public_raw: bytes, message: bytes, context: bytes = b"") -> bytes:
    """FIPS 204 Algorithm 2 + 7: μ for pure ML-DSA, computed independently of our code."""
    tr = hashlib.shake_256(public_raw).digest(64)
    message_prime = b"\x00" + bytes([len(context)]) + context + message
    return hashlib.shake_256(tr + message_prime).digest(64)

"""Wycheproof ML-DSA-65 vectors (C2SP/wycheproof testvectors_v1) through our signature key.

``SignatureKey.verify`` is the code under test: every valid signature verifies, every
invalid one (wrong signature or public-key length, context over 255 bytes, modified
signatures, bad hint encodings, norm violations) answers False and never raises.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa

from worker.crypto.errors import InvalidInput
from worker.crypto.mldsa import SEED_SIZE, MlDsa65, SignatureKey

from .vector_files import Case, pure_mu, verifier, wycheproof_cases


def _verifier_or_none(public_raw: bytes) -> SignatureKey | None:
    try:
        return verifier(public_raw)
    except ValueError:
        return None


def _context(case: Case) -> bytes | None:
    return case.optional("ctx")


@pytest.mark.parametrize("case", wycheproof_cases("mldsa_65_verify_test.json"))
def test_verify(case: Case) -> None:
    public_raw = bytes.fromhex(case.group["publicKey"])
    key = _verifier_or_none(public_raw)
    if key is None:
        # A public key of the wrong length cannot even be loaded: never a valid signature.
        assert not case.valid
        assert "IncorrectPublicKeyLength" in case.test["flags"]
        with pytest.raises(ValueError):
            serialization.load_der_public_key(bytes.fromhex(case.group["publicKeyDer"]))
        return
    from_der = serialization.load_der_public_key(bytes.fromhex(case.group["publicKeyDer"]))
    assert isinstance(from_der, mldsa.MLDSA65PublicKey)
    assert from_der.public_bytes_raw() == public_raw

    assert key.verify(case.bytes("sig"), case.bytes("msg"), _context(case)) is case.valid


@pytest.mark.parametrize("case", wycheproof_cases("mldsa_65_sign_seed_test.json"))
def test_sign_from_seed(case: Case) -> None:
    """Our key loaded from ξ has the vector's public key; the vector's (deterministic)
    signature verifies under our key; our own (hedged) signature over the same message
    and context verifies under the vector's public key."""
    seed = bytes.fromhex(case.group["privateSeed"])
    if len(seed) != SEED_SIZE:
        assert not case.valid
        with pytest.raises(InvalidInput):
            MlDsa65().load(seed)
        return
    key = MlDsa65().load(seed)
    public_raw = bytes.fromhex(case.group["publicKey"])
    assert key.public_raw == public_raw
    vector_public = mldsa.MLDSA65PublicKey.from_public_bytes(public_raw)
    message, context = case.optional("msg"), _context(case)

    if not case.valid:
        # The only invalid seed-file case with a usable seed: a context over 255 bytes.
        assert "InvalidContext" in case.test["flags"]
        assert context is not None and len(context) > 255
        assert message is not None
        with pytest.raises(ValueError):  # the API rejects it earlier, in the schema
            key.sign(message, context)
        assert key.verify(b"\x00" * 3309, message, context) is False
        return

    signature, mu = case.bytes("sig"), case.optional("mu")
    if message is None:
        # "Internal" cases: external μ only.
        assert mu is not None
        vector_public.verify_mu(signature, mu)
        key.public.verify_mu(signature, mu)
        return
    if mu is not None:
        assert pure_mu(public_raw, message, context or b"") == mu
    assert key.verify(signature, message, context)
    vector_public.verify(key.sign(message, context), message, context)


@pytest.mark.parametrize("case", wycheproof_cases("mldsa_65_sign_noseed_test.json"))
def test_sign_noseed_verify_side(case: Case) -> None:
    """Vectors with an expanded 4032-byte private key. pqkms loads only 32-byte seeds, so
    an expanded key is refused as a seed; the valid signatures are checked verify-side
    through our verify, with a one-bit change in the signature making them invalid."""
    private = bytes.fromhex(case.group["privateKey"])
    with pytest.raises(InvalidInput):
        MlDsa65().load(private)
    if not case.valid:
        flags = case.test["flags"]
        if "InvalidContext" in flags and case.group.get("publicKey"):
            key = verifier(bytes.fromhex(case.group["publicKey"]))
            assert key.verify(b"\x00" * 3309, case.bytes("msg"), _context(case)) is False
        return
    key = verifier(bytes.fromhex(case.group["publicKey"]))
    signature = case.bytes("sig")
    message, mu = case.optional("msg"), case.optional("mu")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    if message is None:
        assert mu is not None
        key.public.verify_mu(signature, mu)
        return
    assert key.verify(signature, message, _context(case))
    assert not key.verify(flipped, message, _context(case))

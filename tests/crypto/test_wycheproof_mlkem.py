"""Wycheproof ML-KEM-768 vectors (C2SP/wycheproof testvectors_v1) through our KEM key.

Our keys are loaded from 64-byte d ‖ z seeds only; expanded decapsulation keys are never
accepted (the service stores seeds), so vectors that need one check that instead.
"""

from __future__ import annotations

from functools import cache

import pytest
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import mlkem

from worker.crypto.errors import InvalidInput
from worker.crypto.mlkem import CIPHERTEXT_SIZE, SEED_SIZE, MlKem768

from .vector_files import Case, iter_cases, wycheproof_cases


def _raw_public(key_spki: bytes) -> bytes:
    public = serialization.load_der_public_key(key_spki)
    assert isinstance(public, mlkem.MLKEM768PublicKey)
    return public.public_bytes_raw()


def _spki(raw: bytes) -> bytes:
    """SubjectPublicKeyInfo DER (id-alg-ml-kem-768, RFC 5280 / FIPS 203 OIDs) for raw bytes."""

    def tlv(tag: int, body: bytes) -> bytes:
        n = len(body)
        length = bytes([n]) if n < 128 else b"\x82" + n.to_bytes(2, "big")
        return bytes([tag]) + length + body

    algorithm = tlv(0x30, bytes.fromhex("0609608648016503040402"))
    return tlv(0x30, algorithm + tlv(0x03, b"\x00" + raw))


@pytest.mark.parametrize("case", wycheproof_cases("mlkem_768_keygen_seed_test.json"))
def test_keygen_from_seed(case: Case) -> None:
    assert case.valid  # the file has no invalid cases
    key = MlKem768().load(case.bytes("seed"))
    assert _raw_public(key.public_key_spki) == case.bytes("ek")


@pytest.mark.parametrize("case", wycheproof_cases("mlkem_768_test.json"))
def test_decapsulate(case: Case) -> None:
    """Seed → key → decapsulate ``c``: K for every valid case (including bit-flipped and
    random ciphertexts, i.e. implicit rejection); InvalidInput for wrong-length seeds
    and ciphertexts."""
    seed, ciphertext = case.bytes("seed"), case.bytes("c")
    if len(seed) != SEED_SIZE:
        assert not case.valid
        with pytest.raises(InvalidInput):
            MlKem768().load(seed)
        return
    key = MlKem768().load(seed)
    if case.test.get("ek"):
        assert _raw_public(key.public_key_spki) == case.bytes("ek")
    if len(ciphertext) != CIPHERTEXT_SIZE:
        assert not case.valid
        with pytest.raises(InvalidInput):
            key.decapsulate(ciphertext)
        return
    assert case.valid
    assert key.decapsulate(ciphertext) == case.bytes("K")


@cache
def _seeds_by_public_key() -> dict[bytes, bytes]:
    seeds = {}
    for name in ("mlkem_768_keygen_seed_test.json", "mlkem_768_test.json"):
        for case in iter_cases(name):
            if case.test.get("ek") and len(case.bytes("seed")) == SEED_SIZE:
                seeds[case.bytes("ek")] = case.bytes("seed")
    return seeds


@pytest.mark.parametrize("case", wycheproof_cases("mlkem_768_encaps_test.json"))
def test_encapsulation_key(case: Case) -> None:
    """What a public-key-only client sees: a valid ek loads (raw and as SPKI DER) and HPKE
    can seal to it; an invalid one (wrong length, unreduced coefficients) is refused.

    pyca has no encapsulation with caller-chosen randomness m, so (c, K) are checked from
    the decapsulation side, with our key, wherever the seed of ek is in another file.
    """
    ek = case.bytes("ek")
    if not case.valid:
        with pytest.raises(ValueError):
            mlkem.MLKEM768PublicKey.from_public_bytes(ek)
        with pytest.raises(ValueError):
            serialization.load_der_public_key(_spki(ek))
        return
    public = serialization.load_der_public_key(_spki(ek))
    assert isinstance(public, mlkem.MLKEM768PublicKey)
    assert public.public_bytes_raw() == ek
    suite = hpke.Suite(hpke.KEM.MLKEM768, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    assert len(suite.encrypt(b"x", public, info=b"i")) == CIPHERTEXT_SIZE + 1 + 16
    seed = _seeds_by_public_key().get(ek)
    if seed is not None:
        assert MlKem768().load(seed).decapsulate(case.bytes("c")) == case.bytes("K")


def test_encaps_vectors_were_cross_checked() -> None:
    """The (c, K) cross-check above must actually have run for the official seeds."""
    seeds = _seeds_by_public_key()
    checked = [
        c for c in iter_cases("mlkem_768_encaps_test.json") if c.valid and c.bytes("ek") in seeds
    ]
    assert len(checked) >= 100


@pytest.mark.parametrize("case", wycheproof_cases("mlkem_768_semi_expanded_decaps_test.json"))
def test_semi_expanded_decapsulation(case: Case) -> None:
    """These vectors carry a 2400-byte expanded dk. We only ever load 64-byte seeds, so:
    wrong-length ciphertexts must be InvalidInput from our decapsulate (the length check
    does not depend on the key), and an expanded dk is never accepted as a seed."""
    flags = case.test.get("flags", [])
    if "IncorrectCiphertextLength" in flags:
        key = MlKem768().load(bytes(range(SEED_SIZE)))
        with pytest.raises(InvalidInput):
            key.decapsulate(case.bytes("c"))
        return
    with pytest.raises(InvalidInput):
        MlKem768().load(case.bytes("dk"))
    if case.valid:
        pytest.skip("needs an expanded decapsulation key; pyca and pqkms load seeds only")

"""Composite ML-DSA (id-MLDSA65-ECDSA-P256-SHA512) against draft-ietf-lamps-pq-composite-sigs.

Vectors: ../shared/vectors/composite-sigs/ (README there: draft -14 to -19, M' examples).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mldsa

from schemas.algorithms import Algorithm, HashAlgorithm
from worker.crypto import (
    InvalidInput,
    SignatureKey,
    UnsupportedAlgorithm,
    new_key,
    signature_algorithm,
)
from worker.crypto.composite_mldsa import (
    LABEL,
    OID,
    PREFIX,
    PRIVATE_KEY_SIZE,
    PUBLIC_KEY_SIZE,
    CompositeMlDsa65EcdsaP256,
    CompositeSignatureKey,
    message_representative,
)
from worker.crypto.mldsa import MlDsa65, MlDsa65Key
from worker.crypto.spki import encode_oid, encode_spki

VECTORS = Path(os.environ.get("PQKMS_VECTORS_DIR", "/work/shared/vectors")) / "composite-sigs"
TC_ID = "id-MLDSA65-ECDSA-P256-SHA512"


def _file(name: str) -> Path:
    path = VECTORS / name
    if not path.is_file():
        pytest.skip(f"composite vectors not found at {path}")
    return path


def _vectors(name: str) -> tuple[bytes, bytes, list[dict[str, Any]]]:
    data = json.loads(_file(name).read_text())
    tests = [t for t in data["tests"] if t["tcId"] == TC_ID]
    return base64.b64decode(data["m"]), base64.b64decode(data["ctx"]), tests


def _b(test: dict[str, Any], field: str) -> bytes:
    return base64.b64decode(test[field])


@pytest.fixture(scope="module", params=["testvectors.json", "testvectors-mldsa65-ecdsa-p256.json"])
def vector(request: pytest.FixtureRequest) -> tuple[bytes, bytes, dict[str, Any]]:
    message, context, tests = _vectors(request.param)
    assert len(tests) == 1, f"{request.param} should hold exactly one {TC_ID} test"
    return message, context, tests[0]


@pytest.fixture(scope="module")
def key() -> CompositeSignatureKey:
    provider = CompositeMlDsa65EcdsaP256()
    return provider.load(provider.generate_seed())


def test_vector_signatures_verify_with_and_without_context(
    vector: tuple[bytes, bytes, dict[str, Any]],
) -> None:
    message, context, test = vector
    verifier = CompositeSignatureKey.verifier(_b(test, "pk"))
    assert verifier.verify(_b(test, "s"), message)
    assert verifier.verify(_b(test, "s"), message, b"")
    assert verifier.verify(_b(test, "sWithContext"), message, context)
    # swapped contexts, a changed message
    assert not verifier.verify(_b(test, "s"), message, context)
    assert not verifier.verify(_b(test, "sWithContext"), message)
    assert not verifier.verify(_b(test, "s"), message + b"!")


def test_vector_private_key_regenerates_the_public_key_and_signs(
    vector: tuple[bytes, bytes, dict[str, Any]],
) -> None:
    message, context, test = vector
    sk = _b(test, "sk")
    assert len(sk) == PRIVATE_KEY_SIZE == 83
    loaded = CompositeMlDsa65EcdsaP256().load(sk)
    assert loaded.public_key_spki == encode_spki(OID, _b(test, "pk"))
    fresh = loaded.sign(message, context)
    assert CompositeSignatureKey.verifier(_b(test, "pk")).verify(fresh, message, context)


def test_vector_pkcs8_carries_the_oid_and_our_private_key_encoding(
    vector: tuple[bytes, bytes, dict[str, Any]],
) -> None:
    _, _, test = vector
    pkcs8 = _b(test, "sk_pkcs8")
    assert encode_oid(OID) in pkcs8
    assert pkcs8.endswith(_b(test, "sk"))


def test_vector_certificate_spki_and_self_signature(
    vector: tuple[bytes, bytes, dict[str, Any]],
) -> None:
    _, _, test = vector
    der = _b(test, "x5c")
    certificate = x509.load_der_x509_certificate(der)
    assert certificate.signature_algorithm_oid.dotted_string == OID
    loaded = CompositeMlDsa65EcdsaP256().load(_b(test, "sk"))
    assert loaded.public_key_spki in der  # our SPKI DER is the certificate's, byte for byte
    assert loaded.verify(certificate.signature, certificate.tbs_certificate_bytes)


def test_pure_mldsa_vector_is_not_a_composite_signature() -> None:
    message, _, _ = _vectors("testvectors-mldsa65-ecdsa-p256.json")
    data = json.loads(_file("testvectors-mldsa65-ecdsa-p256.json").read_text())
    (pure,) = [t for t in data["tests"] if t["tcId"] == "id-ML-DSA-65"]
    (composite,) = [t for t in data["tests"] if t["tcId"] == TC_ID]
    verifier = CompositeSignatureKey.verifier(_b(composite, "pk"))
    assert not verifier.verify(_b(pure, "s"), message)


def _mprime_example(name: str) -> tuple[bytes, bytes, bytes]:
    """(M, ctx, M') of one of the draft's "Message Representative Examples"."""
    fields: dict[str, str] = {}
    current: str | None = None
    for line in _file(name).read_text().splitlines():
        label, colon, value = line.partition(":")
        if colon and not line.startswith("#") and re.fullmatch(r"[\w'()]+", label):
            current = label
            fields[current] = value.strip()
        elif current is not None and re.fullmatch(r"[0-9a-f]+", line.strip()):
            fields[current] += line.strip()  # a hex value wrapped over several lines
        else:
            current = None

    def hex_or_empty(value: str) -> bytes:
        return b"" if value == "<empty>" else bytes.fromhex(value)

    return hex_or_empty(fields["M"]), hex_or_empty(fields["ctx"]), bytes.fromhex(fields["M'"])


@pytest.mark.parametrize("name", ["mprime-example-noctx.txt", "mprime-example-ctx.txt"])
def test_message_representative_examples_byte_for_byte(name: str) -> None:
    message, context, expected = _mprime_example(name)
    assert message == bytes(range(10))
    digest = hashlib.sha512(message).digest()
    assert message_representative(digest, context) == expected
    assert expected.startswith(PREFIX + LABEL)


def test_signature_components_are_the_drafts(key: CompositeSignatureKey) -> None:
    """Verify each half with pyca directly: ML-DSA(M', ctx=Label), ECDSA-SHA256(M')."""
    message, context = b"component check", b"ctx"
    signature = key.sign(message, context)
    representative = (
        PREFIX + LABEL + bytes([len(context)]) + context + hashlib.sha512(message).digest()
    )
    raw = key.public_key_spki[-PUBLIC_KEY_SIZE:]
    mldsa.MLDSA65PublicKey.from_public_bytes(raw[:1952]).verify(
        signature[:3309], representative, LABEL
    )
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw[1952:]).verify(
        signature[3309:], representative, ec.ECDSA(hashes.SHA256())
    )


def test_round_trip_and_context(key: CompositeSignatureKey) -> None:
    signature = key.sign(b"message")
    assert key.verify(signature, b"message")
    assert not key.verify(signature, b"message", b"ctx")
    with_context = key.sign(b"message", b"ctx")
    assert key.verify(with_context, b"message", b"ctx")
    assert not key.verify(with_context, b"message")
    with pytest.raises(InvalidInput):
        key.sign(b"message", b"c" * 256)
    assert not key.verify(signature, b"message", b"c" * 256)


@pytest.mark.parametrize("length", [0, 1, 3309, 3309 + 7, 3309 + 73, 4000])
def test_wrong_length_signature_is_false(key: CompositeSignatureKey, length: int) -> None:
    signature = key.sign(b"m")
    candidate = (signature + b"\x00" * length)[:length]  # truncated or zero-padded
    assert not key.verify(candidate, b"m")
    assert not key.verify_hash(candidate, hashlib.sha512(b"m").digest(), HashAlgorithm.SHA512)


def test_mldsa_signature_presented_as_composite_is_false(key: CompositeSignatureKey) -> None:
    signature = key.sign(b"m")
    mldsa_part = signature[:3309]
    assert not key.verify(mldsa_part, b"m")
    # An ML-DSA-65 signature from the same ML-DSA seed, over the plain message.
    assert isinstance(key.mldsa_private, mldsa.MLDSA65PrivateKey)
    assert not key.verify(key.mldsa_private.sign(b"m"), b"m")


def test_each_component_is_required(key: CompositeSignatureKey) -> None:
    signature = key.sign(b"m")
    other = key.sign(b"other")
    for position in (10, 3308, 3309 + 10, len(signature) - 1):
        tampered = bytearray(signature)
        tampered[position] ^= 0x01
        assert not key.verify(bytes(tampered), b"m")
    # mix and match: a valid ML-DSA half with the ECDSA half of another message
    assert not key.verify(signature[:3309] + other[3309:], b"m")
    assert not key.verify(other[:3309] + signature[3309:], b"m")


def test_sign_hash_is_the_draft_signature_of_the_message(key: CompositeSignatureKey) -> None:
    message, context = b"a large document", b"ctx"
    digest = hashlib.sha512(message).digest()
    by_hash = key.sign_hash(digest, HashAlgorithm.SHA512, context)
    assert key.verify(by_hash, message, context)
    assert key.verify_hash(key.sign(message, context), digest, HashAlgorithm.SHA512, context)
    assert not key.verify_hash(by_hash, digest, HashAlgorithm.SHA512)
    assert not key.verify_hash(by_hash, hashlib.sha512(b"x").digest(), HashAlgorithm.SHA512)


@pytest.mark.parametrize("hash_algorithm", [HashAlgorithm.SHA256, HashAlgorithm.SHA384])
def test_sign_hash_refuses_other_digests(
    key: CompositeSignatureKey, hash_algorithm: HashAlgorithm
) -> None:
    digest = b"\x00" * hash_algorithm.digest_size
    with pytest.raises(InvalidInput, match="SHA-512"):
        key.sign_hash(digest, hash_algorithm)
    with pytest.raises(InvalidInput, match="SHA-512"):
        key.verify_hash(b"\x00" * 3380, digest, hash_algorithm)


def test_sign_hash_refuses_a_wrong_length_digest(key: CompositeSignatureKey) -> None:
    with pytest.raises(InvalidInput, match="64 bytes"):
        key.sign_hash(b"\x00" * 63, HashAlgorithm.SHA512)


def test_private_key_encoding() -> None:
    provider = CompositeMlDsa65EcdsaP256()
    seed = provider.generate_seed()
    assert len(seed) == 83
    assert seed[32:39] == bytes.fromhex("30310201010420")
    assert seed[71:] == bytes.fromhex("a00a06082a8648ce3d030107")
    for bad in (seed[:82], seed + b"\x00", seed[:33] + b"\x32" + seed[34:]):
        with pytest.raises(InvalidInput):
            provider.load(bad)
    zero_scalar = seed[:39] + bytes(32) + seed[71:]
    with pytest.raises(InvalidInput, match="out of range"):
        provider.load(zero_scalar)
    # the ECDSA half is the scalar stored in the ECPrivateKey
    loaded = provider.load(seed)
    assert isinstance(loaded.ec_private, ec.EllipticCurvePrivateKey)
    assert loaded.ec_private.private_numbers().private_value == int.from_bytes(seed[39:71], "big")


def test_spki_encoding(key: CompositeSignatureKey) -> None:
    spki = key.public_key_spki
    assert spki.startswith(bytes.fromhex("308207f2300a06082b0601050507062d038207e200"))
    assert len(spki) == 2017 + 21
    assert spki[-65] == 0x04  # uncompressed P-256 point


def test_registry_serves_composite_and_both_keys_share_one_interface() -> None:
    provider = signature_algorithm(Algorithm.COMPOSITE_ML_DSA)
    assert (provider.seed_size, provider.public_key_size, provider.signature_size) == (
        83, 2017, 3381)
    generated = new_key(Algorithm.COMPOSITE_ML_DSA)
    assert generated.public_key_spki == provider.load(generated.seed).public_key_spki
    mldsa_key = MlDsa65().load(bytes(32))
    assert isinstance(mldsa_key, SignatureKey) and isinstance(provider.load(generated.seed),
                                                              SignatureKey)
    from worker.crypto.mldsa import SignatureKey as HistoricalName

    assert HistoricalName is MlDsa65Key


@pytest.mark.skipif(importlib.util.find_spec("pqcrypto") is not None,
                    reason="pqcrypto is installed, so SLH-DSA is served (test_slh_dsa.py)")
@pytest.mark.parametrize("algorithm", [
    Algorithm.SLH_DSA_SHA2_128S, Algorithm.SLH_DSA_SHA2_128F,
    Algorithm.SLH_DSA_SHA2_192S, Algorithm.SLH_DSA_SHA2_256S,
])
def test_slh_dsa_is_refused_with_a_clear_reason(algorithm: Algorithm) -> None:
    with pytest.raises(UnsupportedAlgorithm, match="no SLH-DSA provider") as caught:
        new_key(algorithm)
    assert algorithm.value in str(caught.value)
    assert "docs/algorithms.md" in str(caught.value)

"""HashML-DSA-65 (FIPS 204 §5.4, Algorithm 4) against an independent construction.

No vector file we have (cryptography-vectors 50, Wycheproof testvectors_v1) carries
HashML-DSA cases, so interoperability is shown by rebuilding μ here from the standard —
M' = 1 ‖ |ctx| ‖ ctx ‖ DER(OID of PH) ‖ PH(M), μ = SHAKE256(SHAKE256(pk, 64) ‖ M', 64) —
with the OID encoded from its dotted form rather than copied from our code. The same
μ helper reproduces the Wycheproof pure-mode μ values (test_wycheproof_mldsa), which
pins down the tr and length-byte parts it shares with this one.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from schemas.algorithms import HashAlgorithm
from worker.crypto.errors import InvalidInput
from worker.crypto.mldsa import MlDsa65, SignatureKey

# NIST hash algorithm OIDs (csor): id-sha256, id-sha384, id-sha512.
_OIDS = {
    HashAlgorithm.SHA256: ("2.16.840.1.101.3.4.2.1", hashlib.sha256),
    HashAlgorithm.SHA384: ("2.16.840.1.101.3.4.2.2", hashlib.sha384),
    HashAlgorithm.SHA512: ("2.16.840.1.101.3.4.2.3", hashlib.sha512),
}
MESSAGE = b"the document that was hashed"


def _der_oid(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return bytes([0x06, len(body)]) + bytes(body)


def _hash_mu(public_raw: bytes, digest: bytes, oid: str, context: bytes) -> bytes:
    tr = hashlib.shake_256(public_raw).digest(64)
    message_prime = b"\x01" + bytes([len(context)]) + context + _der_oid(oid) + digest
    return hashlib.shake_256(tr + message_prime).digest(64)


@pytest.fixture(scope="module")
def key() -> SignatureKey:
    return MlDsa65().load(bytes(range(32)))


def test_der_oid_encoder() -> None:
    # id-sha256, as printed by `openssl asn1parse` on any RSA-PSS/SHA-256 structure.
    assert _der_oid("2.16.840.1.101.3.4.2.1").hex() == "0609608648016503040201"


@pytest.mark.parametrize("hash_algorithm", list(HashAlgorithm))
@pytest.mark.parametrize("context", [None, b"", b"ctx", bytes(range(255))])
def test_sign_hash_matches_independent_mu(
    key: SignatureKey, hash_algorithm: HashAlgorithm, context: bytes | None
) -> None:
    oid, hash_function = _OIDS[hash_algorithm]
    digest = hash_function(MESSAGE).digest()
    signature = key.sign_hash(digest, hash_algorithm, context)

    expected_mu = _hash_mu(key.public_raw, digest, oid, context or b"")
    public = mldsa.MLDSA65PublicKey.from_public_bytes(key.public_raw)
    public.verify_mu(signature, expected_mu)  # raises if our μ differs from FIPS 204's
    assert key.verify_hash(signature, digest, hash_algorithm, context)


@pytest.mark.parametrize("hash_algorithm", list(HashAlgorithm))
def test_verify_hash_accepts_independently_made_signature(
    key: SignatureKey, hash_algorithm: HashAlgorithm
) -> None:
    """The other direction: a HashML-DSA signature made outside our code verifies."""
    oid, hash_function = _OIDS[hash_algorithm]
    digest = hash_function(MESSAGE).digest()
    private = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(range(32)))
    signature = private.sign_mu(_hash_mu(key.public_raw, digest, oid, b"app"))
    assert key.verify_hash(signature, digest, hash_algorithm, b"app")
    assert not key.verify_hash(signature, digest, hash_algorithm, None)


def test_hash_signature_is_not_a_pure_signature_over_the_digest(key: SignatureKey) -> None:
    digest = hashlib.sha256(MESSAGE).digest()
    hash_signature = key.sign_hash(digest, HashAlgorithm.SHA256)
    assert not key.verify(hash_signature, digest)
    assert not key.verify(hash_signature, MESSAGE)
    # …and the other way round: a pure signature over the digest is not a HashML-DSA one.
    pure_signature = key.sign(digest)
    assert not key.verify_hash(pure_signature, digest, HashAlgorithm.SHA256)


def test_context_is_bound(key: SignatureKey) -> None:
    digest = hashlib.sha384(MESSAGE).digest()
    signature = key.sign_hash(digest, HashAlgorithm.SHA384, b"tenant-a")
    assert key.verify_hash(signature, digest, HashAlgorithm.SHA384, b"tenant-a")
    assert not key.verify_hash(signature, digest, HashAlgorithm.SHA384, b"tenant-b")
    assert not key.verify_hash(signature, digest, HashAlgorithm.SHA384, None)
    # No context and an empty context are the same thing in FIPS 204.
    unbound = key.sign_hash(digest, HashAlgorithm.SHA384)
    assert key.verify_hash(unbound, digest, HashAlgorithm.SHA384, b"")


def test_digest_and_hash_algorithm_are_bound(key: SignatureKey) -> None:
    digest = hashlib.sha512(MESSAGE).digest()
    signature = key.sign_hash(digest, HashAlgorithm.SHA512)
    other = bytes([digest[0] ^ 1]) + digest[1:]
    assert not key.verify_hash(signature, other, HashAlgorithm.SHA512)
    # Same bytes labelled with another hash of the same size would need another OID;
    # SHA-256 of the first half is a different M' entirely.
    assert not key.verify_hash(signature, digest[:32], HashAlgorithm.SHA256)


@pytest.mark.parametrize("hash_algorithm", list(HashAlgorithm))
def test_wrong_digest_length_is_invalid_input(
    key: SignatureKey, hash_algorithm: HashAlgorithm
) -> None:
    size = hash_algorithm.digest_size
    signature = key.sign_hash(b"\x00" * size, hash_algorithm)
    for length in (0, size - 1, size + 1):
        with pytest.raises(InvalidInput):
            key.sign_hash(b"\x00" * length, hash_algorithm)
        # verify_hash too: a malformed request is an error, not a "valid: false" answer.
        with pytest.raises(InvalidInput):
            key.verify_hash(signature, b"\x00" * length, hash_algorithm)
        with pytest.raises(InvalidInput):
            key.verify_hash(b"short", b"\x00" * length, hash_algorithm)


def test_context_over_255_bytes_is_invalid_input(key: SignatureKey) -> None:
    digest = hashlib.sha256(MESSAGE).digest()
    signature = key.sign_hash(digest, HashAlgorithm.SHA256, b"x" * 255)
    with pytest.raises(InvalidInput):
        key.sign_hash(digest, HashAlgorithm.SHA256, b"x" * 256)
    with pytest.raises(InvalidInput):
        key.verify_hash(signature, digest, HashAlgorithm.SHA256, b"x" * 256)


def test_verify_hash_wrong_signature_length_is_false(key: SignatureKey) -> None:
    digest = hashlib.sha256(MESSAGE).digest()
    signature = key.sign_hash(digest, HashAlgorithm.SHA256)
    for bad in (b"", signature[:-1], signature + b"\x00", b"\x00" * 3309):
        assert key.verify_hash(bad, digest, HashAlgorithm.SHA256) is False
        assert key.verify(bad, MESSAGE) is False


def test_pyca_rejects_what_we_reject() -> None:
    """Sanity check on the test's own helper: a wrong μ must fail in pyca."""
    private = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(32))
    signature = private.sign_mu(b"\x00" * 64)
    with pytest.raises(InvalidSignature):
        private.public_key().verify_mu(signature, b"\x01" * 64)

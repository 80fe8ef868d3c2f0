"""X-Wing and Composite-ML-DSA through every route, on a real nats-server and two workers.

Also: the HTTP bridge with the official qpher SDK's ``algorithm=`` parameter (when the
bridge is part of the stack), and SLH-DSA refused with a clear 400.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
from typing import Any

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from schemas.algorithms import Algorithm
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller
from tests.support.wire import b64, generate, unb64
from worker.crypto.ciphertext_format import Header, Mode
from worker.crypto.composite_mldsa import CompositeSignatureKey

pytestmark = [pytest.mark.integration, pytest.mark.long]

XWING_SPKI_HEADER = bytes.fromhex("308204d4300d060b2b0601040183e62d81c87a038204c100")
COMPOSITE_SPKI_HEADER = bytes.fromhex("308207f2300a06082b0601050507062d038207e200")





# --- X-Wing -------------------------------------------------------------------------------


async def test_xwing_public_key_is_the_drafts_spki(call: NatsCaller) -> None:
    key = await generate(call, "X-Wing")
    assert (key["key_version"], key["algorithm"], key["status"]) == (1, "X-Wing", "active")
    spki = unb64(key["public_key"])
    assert spki.startswith(XWING_SPKI_HEADER) and len(spki) == len(XWING_SPKI_HEADER) + 1216


@pytest.mark.parametrize("mode", ["standard", "deterministic"])
async def test_xwing_encrypt_decrypt(call: NatsCaller, mode: str) -> None:
    await generate(call, "X-Wing")
    plaintext = b"hybrid-protected data" * 30
    body: dict[str, Any] = {"plaintext": b64(plaintext), "key_version": 1,
                            "algorithm": "X-Wing", "mode": mode}
    if mode == "deterministic":
        body["salt"] = b64(b"s" * 32)
    first = await call(Subject.KEM_ENCRYPT, body)
    second = await call(Subject.KEM_ENCRYPT, body)
    assert first.data["algorithm"] == "X-Wing" and first.data["key_version"] == 1
    assert (first.data["ciphertext"] == second.data["ciphertext"]) is (mode == "deterministic")
    opened = await call(Subject.KEM_DECRYPT, {"ciphertext": first.data["ciphertext"],
                                              "key_version": 1, "algorithm": "X-Wing"})
    assert opened.data == {"plaintext": b64(plaintext), "key_version": 1, "algorithm": "X-Wing"}


async def test_xwing_ciphertext_is_not_a_kyber_ciphertext(call: NatsCaller) -> None:
    await generate(call, "X-Wing")
    await generate(call, "Kyber768")
    encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"x"), "key_version": 1,
                                                 "algorithm": "X-Wing"})
    as_kyber = await call(Subject.KEM_DECRYPT, {"ciphertext": encrypted.data["ciphertext"],
                                                "key_version": 1})
    assert as_kyber.code == "ERR_INVALID_001"
    assert as_kyber.body["error"]["message"].startswith("Decryption failed")


async def test_client_with_only_the_public_key_encrypts_with_any_hpke(call: NatsCaller) -> None:
    """docs/ciphertext-format.md: header ‖ HPKE(X-Wing, HKDF-SHA256, AES-256-GCM, info=header)."""
    raw = unb64((await generate(call, "X-Wing"))["public_key"])[len(XWING_SPKI_HEADER):]
    public_key = hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184]),
        x25519.X25519PublicKey.from_public_bytes(raw[1184:]),
    )
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    header = Header(Algorithm.XWING, Mode.STANDARD, 1).to_bytes()
    blob = header + suite.encrypt(b"sealed by a client", public_key, info=header)
    opened = await call(Subject.KEM_DECRYPT, {"ciphertext": b64(blob), "key_version": 1,
                                              "algorithm": "X-Wing"})
    assert unb64(opened.data["plaintext"]) == b"sealed by a client"


async def test_xwing_encapsulate_decapsulate(call: NatsCaller) -> None:
    await generate(call, "X-Wing")
    enc = await call(Subject.KEM_ENCAPSULATE, {"key_version": 1, "algorithm": "X-Wing"})
    assert enc.data["algorithm"] == "X-Wing"
    assert len(unb64(enc.data["kem_ciphertext"])) == 1120
    assert len(unb64(enc.data["shared_secret"])) == 32
    dec = await call(Subject.KEM_DECAPSULATE, {"kem_ciphertext": enc.data["kem_ciphertext"],
                                               "key_version": 1, "algorithm": "X-Wing"})
    assert dec.data == {"shared_secret": enc.data["shared_secret"], "key_version": 1,
                        "algorithm": "X-Wing"}


@pytest.mark.parametrize("size", [1088, 1119, 1121])
async def test_xwing_wrong_length_kem_ciphertext_is_400(call: NatsCaller, size: int) -> None:
    await generate(call, "X-Wing")
    reply = await call(Subject.KEM_DECAPSULATE, {"kem_ciphertext": b64(b"\x01" * size),
                                                 "key_version": 1, "algorithm": "X-Wing"})
    assert reply.code == "ERR_INVALID_001"
    assert "1120 bytes for X-Wing" in reply.body["error"]["message"]


async def test_xwing_low_order_x25519_part_is_not_an_error(call: NatsCaller) -> None:
    """The draft has no all-zero check: a low-order ct_X still yields a (useless) secret."""
    await generate(call, "X-Wing")
    enc = await call(Subject.KEM_ENCAPSULATE, {"key_version": 1, "algorithm": "X-Wing"})
    kem_ciphertext = unb64(enc.data["kem_ciphertext"])[:1088] + bytes(32)
    reply = await call(Subject.KEM_DECAPSULATE, {"kem_ciphertext": b64(kem_ciphertext),
                                                 "key_version": 1, "algorithm": "X-Wing"})
    assert reply.code is None, reply.body
    assert reply.data["shared_secret"] != enc.data["shared_secret"]


@pytest.mark.parametrize("size", [16, 32, 64])
async def test_xwing_wrap_unwrap(call: NatsCaller, size: int) -> None:
    await generate(call, "X-Wing")
    key = bytes(range(size))
    wrapped = await call(Subject.KEM_KEY_WRAP, {"symmetric_key": b64(key), "key_version": 1,
                                                "algorithm": "X-Wing"})
    assert wrapped.data["wrapping_method"] == (
        "HPKE-Base(ML-KEM-768+X25519, HKDF-SHA256, AES-256-GCM)")
    assert wrapped.data["algorithm"] == "X-Wing"
    unwrapped = await call(Subject.KEM_KEY_UNWRAP, {"wrapped_key": wrapped.data["wrapped_key"],
                                                    "key_version": 1, "algorithm": "X-Wing"})
    assert unb64(unwrapped.data["symmetric_key"]) == key


# --- Composite-ML-DSA -------------------------------------------------------------------------


async def test_composite_public_key_is_the_drafts_spki(call: NatsCaller) -> None:
    key = await generate(call, "Composite-ML-DSA")
    spki = unb64(key["public_key"])
    assert spki.startswith(COMPOSITE_SPKI_HEADER)
    assert len(spki) == len(COMPOSITE_SPKI_HEADER) + 2017


async def test_composite_sign_verify_with_and_without_context(call: NatsCaller) -> None:
    public = unb64((await generate(call, "Composite-ML-DSA"))["public_key"])
    outside = CompositeSignatureKey.verifier(public[len(COMPOSITE_SPKI_HEADER):])
    message = b"Invoice #1234: $5,000.00"
    base = {"message": b64(message), "key_version": 1, "algorithm": "Composite-ML-DSA"}
    signed = await call(Subject.SIGNATURE_SIGN, base)
    assert signed.data["algorithm"] == "Composite-ML-DSA"
    signature = unb64(signed.data["signature"])
    assert 3309 + 8 <= len(signature) <= 3309 + 72
    assert outside.verify(signature, message)  # any implementation of the draft
    ok = await call(Subject.SIGNATURE_VERIFY, {**base, "signature": signed.data["signature"]})
    assert ok.data == {"valid": True, "key_version": 1, "algorithm": "Composite-ML-DSA"}
    ctx = b64(b"payments-v1")
    with_ctx = await call(Subject.SIGNATURE_SIGN, {**base, "context": ctx})
    assert outside.verify(unb64(with_ctx.data["signature"]), message, b"payments-v1")
    wrong_ctx = await call(Subject.SIGNATURE_VERIFY,
                           {**base, "signature": with_ctx.data["signature"]})
    assert wrong_ctx.data["valid"] is False
    right_ctx = await call(Subject.SIGNATURE_VERIFY,
                           {**base, "context": ctx, "signature": with_ctx.data["signature"]})
    assert right_ctx.data["valid"] is True


async def test_composite_bad_signatures_are_valid_false(call: NatsCaller) -> None:
    await generate(call, "Composite-ML-DSA")
    await generate(call, "Dilithium3")
    message = b64(b"m")
    base = {"message": message, "key_version": 1, "algorithm": "Composite-ML-DSA"}
    signature = unb64((await call(Subject.SIGNATURE_SIGN, base)).data["signature"])
    mldsa_only = (await call(Subject.SIGNATURE_SIGN,
                             {"message": message, "key_version": 1})).data["signature"]
    candidates = [signature[:-1], signature[:3309], signature + b"\x00" * 80, b"x" * 100,
                  unb64(mldsa_only)]
    for candidate in candidates:
        reply = await call(Subject.SIGNATURE_VERIFY, {**base, "signature": b64(candidate)})
        assert reply.code is None and reply.data["valid"] is False
    # and a composite signature is not a Dilithium3 signature either
    crossed = await call(Subject.SIGNATURE_VERIFY, {"message": message, "key_version": 1,
                                                    "signature": b64(signature)})
    assert crossed.data["valid"] is False


async def test_composite_sign_hash_is_the_signature_of_the_message(call: NatsCaller) -> None:
    await generate(call, "Composite-ML-DSA")
    message = b"a document hashed by the client"
    digest = b64(hashlib.sha512(message).digest())
    base = {"key_version": 1, "algorithm": "Composite-ML-DSA"}
    signed = await call(Subject.SIGNATURE_SIGN_HASH,
                        {**base, "hash": digest, "hash_algorithm": "SHA-512"})
    assert signed.data["signature_type"] == "detached"
    assert signed.data["hash_algorithm"] == "SHA-512"
    by_hash = await call(Subject.SIGNATURE_VERIFY_HASH,
                         {**base, "hash": digest, "hash_algorithm": "SHA-512",
                          "signature": signed.data["signature"]})
    assert by_hash.data == {"valid": True, "key_version": 1, "algorithm": "Composite-ML-DSA",
                            "hash_algorithm": "SHA-512"}
    by_message = await call(Subject.SIGNATURE_VERIFY,
                            {**base, "message": b64(message),
                             "signature": signed.data["signature"]})
    assert by_message.data["valid"] is True
    other = await call(Subject.SIGNATURE_VERIFY_HASH,
                       {**base, "hash": b64(hashlib.sha512(b"x").digest()),
                        "hash_algorithm": "SHA-512", "signature": signed.data["signature"]})
    assert other.data["valid"] is False


@pytest.mark.parametrize(("name", "size"), [("SHA-256", 32), ("SHA-384", 48)])
async def test_composite_sign_hash_needs_sha512(call: NatsCaller, name: str, size: int) -> None:
    await generate(call, "Composite-ML-DSA")
    base = {"key_version": 1, "algorithm": "Composite-ML-DSA", "hash": b64(b"h" * size),
            "hash_algorithm": name}
    for subject, body in ((Subject.SIGNATURE_SIGN_HASH, base),
                          (Subject.SIGNATURE_VERIFY_HASH, {**base, "signature": b64(b"s")})):
        reply = await call(subject, body)
        assert reply.code == "ERR_INVALID_001", reply.body
        assert "hash_algorithm must be SHA-512 for Composite-ML-DSA" in (
            reply.body["error"]["message"])


# --- key lifecycle -----------------------------------------------------------------------------


async def test_each_algorithm_has_its_own_version_sequence(call: NatsCaller) -> None:
    for algorithm in ("Kyber768", "X-Wing", "Dilithium3", "Composite-ML-DSA"):
        assert (await generate(call, algorithm))["key_version"] == 1
    for expected in (2, 3):
        rotated = await call(Subject.KEYS_ROTATE, {"algorithm": "X-Wing"})
        assert rotated.data["key_version"] == expected
        assert rotated.data["old_key_version"] == expected - 1
    composite = await call(Subject.KEYS_ROTATE, {"algorithm": "Composite-ML-DSA"})
    assert (composite.data["key_version"], composite.data["old_key_version"]) == (2, 1)
    again = await call(Subject.KEYS_GENERATE, {"algorithm": "X-Wing"})
    assert again.code == "ERR_KMS_004"
    xwing = await call(Subject.KEYS_LIST, {"algorithm": "X-Wing"})
    assert [(k["key_version"], k["status"]) for k in xwing.data["keys"]] == [
        (1, "retired"), (2, "retired"), (3, "active")]
    everything = await call(Subject.KEYS_LIST, {})
    assert everything.data["total"] == 3 + 2 + 1 + 1
    active = await call(Subject.KEYS_ACTIVE, {"algorithm": "Composite-ML-DSA"})
    assert active.data["key_version"] == 2
    kyber = await call(Subject.KEYS_ACTIVE, {"algorithm": "Kyber768"})
    assert kyber.data["key_version"] == 1
    got = await call(Subject.KEYS_GET, {"algorithm": "X-Wing", "key_version": 2})
    assert got.data["status"] == "retired"
    assert unb64(got.data["public_key"]).startswith(XWING_SPKI_HEADER)


async def test_state_policy_applies_to_the_new_algorithms(call: NatsCaller) -> None:
    await generate(call, "X-Wing")
    await generate(call, "Composite-ML-DSA")
    encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"old"), "key_version": 1,
                                                 "algorithm": "X-Wing"})
    signed = await call(Subject.SIGNATURE_SIGN, {"message": b64(b"m"), "key_version": 1,
                                                 "algorithm": "Composite-ML-DSA"})
    await call(Subject.KEYS_ROTATE, {"algorithm": "X-Wing"})
    await call(Subject.KEYS_ROTATE, {"algorithm": "Composite-ML-DSA"})
    refused = await call(Subject.KEM_ENCAPSULATE, {"key_version": 1, "algorithm": "X-Wing"})
    assert refused.code == "ERR_FORBIDDEN_001"
    opened = await call(Subject.KEM_DECRYPT, {"ciphertext": encrypted.data["ciphertext"],
                                              "key_version": 1, "algorithm": "X-Wing"})
    assert unb64(opened.data["plaintext"]) == b"old"
    verified = await call(Subject.SIGNATURE_VERIFY, {
        "message": b64(b"m"), "key_version": 1, "algorithm": "Composite-ML-DSA",
        "signature": signed.data["signature"]})
    assert verified.data["valid"] is True
    sign_retired = await call(Subject.SIGNATURE_SIGN, {"message": b64(b"m"), "key_version": 1,
                                                       "algorithm": "Composite-ML-DSA"})
    assert sign_retired.code == "ERR_FORBIDDEN_001"


# --- SLH-DSA ----------------------------------------------------------------------------------

# The workers run in this interpreter's environment: SLH-DSA is served exactly when the
# optional pqcrypto wheel imports here (worker/crypto/slh_dsa.py).
PQCRYPTO = importlib.util.find_spec("pqcrypto") is not None
SLH_DSA_SPKI_128F_HEADER = bytes.fromhex("3030300b0609608648016503040315032100")


@pytest.mark.skipif(not PQCRYPTO, reason="SLH-DSA needs the optional pqcrypto wheel")
async def test_slh_dsa_128f_generate_sign_verify(call: NatsCaller) -> None:
    algorithm = "SLH-DSA-SHA2-128f"
    generated = await generate(call, algorithm)
    public = unb64(generated["public_key"])
    assert public.startswith(SLH_DSA_SPKI_128F_HEADER) and len(public) == 18 + 32
    for context in (None, b"ctx"):
        body: dict[str, Any] = {"message": b64(b"m"), "key_version": 1, "algorithm": algorithm}
        if context is not None:
            body["context"] = b64(context)
        signed = await call(Subject.SIGNATURE_SIGN, body)
        assert signed.code is None, signed.body
        signature = unb64(signed.data["signature"])
        assert len(signature) == 17088
        verified = await call(Subject.SIGNATURE_VERIFY, {**body, "signature": b64(signature)})
        assert verified.data["valid"] is True
        wrong = await call(Subject.SIGNATURE_VERIFY,
                           {**body, "message": b64(b"other"), "signature": b64(signature)})
        assert wrong.data["valid"] is False
        short = await call(Subject.SIGNATURE_VERIFY, {**body, "signature": b64(signature[:-1])})
        assert short.data["valid"] is False
    hashed = {"key_version": 1, "algorithm": algorithm, "hash": b64(b"h" * 32),
              "hash_algorithm": "SHA-256"}
    for subject, request in ((Subject.SIGNATURE_SIGN_HASH, hashed),
                             (Subject.SIGNATURE_VERIFY_HASH, {**hashed, "signature": b64(b"s")})):
        reply = await call(subject, request)
        assert reply.code == "ERR_INVALID_001", reply.body
        assert "not supported for SLH-DSA-SHA2-128f" in reply.body["error"]["message"]


@pytest.mark.skipif(PQCRYPTO, reason="pqcrypto is installed, so SLH-DSA is served")
@pytest.mark.parametrize("algorithm", ["SLH-DSA-SHA2-128s", "SLH-DSA-SHA2-128f",
                                       "SLH-DSA-SHA2-192s", "SLH-DSA-SHA2-256s"])
async def test_slh_dsa_is_a_clear_400_not_a_500(call: NatsCaller, algorithm: str) -> None:
    requests = [
        (Subject.KEYS_GENERATE, {"algorithm": algorithm}),
        (Subject.KEYS_ROTATE, {"algorithm": algorithm}),
        (Subject.SIGNATURE_SIGN, {"message": b64(b"m"), "key_version": 1,
                                  "algorithm": algorithm}),
        (Subject.SIGNATURE_VERIFY, {"message": b64(b"m"), "signature": b64(b"s"),
                                    "key_version": 1, "algorithm": algorithm}),
    ]
    for subject, body in requests:
        reply = await call(subject, body)
        assert reply.code == "ERR_INVALID_001", (subject, reply.body)
        message = reply.body["error"]["message"]
        assert f"{algorithm} is not available in this deployment" in message
        assert "no SLH-DSA provider" in message
        assert "pip install 'pqkms[slh-dsa]'" in message


# --- HTTP bridge and the official SDK -----------------------------------------------------


async def test_qpher_sdk_algorithm_parameter_over_http(stack: LocalStack, api_key: str) -> None:
    if stack.bridge is None:
        pytest.skip("the HTTP bridge is not part of this stack")
    from qpher import Qpher

    def use_sdk() -> None:
        sdk = Qpher(api_key=api_key, base_url=stack.http_url, max_retries=0, timeout=30)
        assert sdk.keys.generate("X-Wing").algorithm == "X-Wing"
        assert sdk.keys.generate("Composite-ML-DSA").algorithm == "Composite-ML-DSA"
        sealed = sdk.kem.encrypt(plaintext=b"via sdk", key_version=1, algorithm="X-Wing")
        assert sdk.kem.decrypt(ciphertext=sealed.ciphertext, key_version=1,
                               algorithm="X-Wing").plaintext == b"via sdk"
        enc = sdk.kem.encapsulate(key_version=1, algorithm="X-Wing")
        assert len(enc.kem_ciphertext) == 1120
        assert sdk.kem.decapsulate(kem_ciphertext=enc.kem_ciphertext, key_version=1,
                                   algorithm="X-Wing").shared_secret == enc.shared_secret
        wrapped = sdk.kem.wrap(symmetric_key=b"k" * 32, key_version=1, algorithm="X-Wing")
        assert sdk.kem.unwrap(wrapped_key=wrapped.wrapped_key, key_version=1,
                              algorithm="X-Wing").symmetric_key == b"k" * 32
        signed = sdk.signatures.sign(message=b"m", key_version=1, algorithm="Composite-ML-DSA")
        assert sdk.signatures.verify(message=b"m", signature=signed.signature, key_version=1,
                                     algorithm="Composite-ML-DSA").valid is True
        digest = hashlib.sha512(b"m").digest()
        by_hash = sdk.signatures.sign_hash(hash_value=digest, hash_algorithm="SHA-512",
                                           key_version=1, algorithm="Composite-ML-DSA")
        assert sdk.signatures.verify_hash(hash_value=digest, hash_algorithm="SHA-512",
                                          signature=by_hash.signature, key_version=1,
                                          algorithm="Composite-ML-DSA").valid is True
        assert sdk.keys.rotate("X-Wing").key_version == 2
        assert sdk.keys.get_active("X-Wing").key_version == 2
        assert sdk.keys.list(algorithm="X-Wing").total == 2

    await asyncio.to_thread(use_sdk)

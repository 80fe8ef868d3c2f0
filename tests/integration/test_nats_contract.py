"""Every operation of the contract over a real nats-server and two worker processes."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import pytest

from schemas.subjects import Subject
from tests.support.stack import NatsCaller
from tests.support.wire import b64, generate, unb64

pytestmark = [pytest.mark.integration, pytest.mark.long]

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")





async def test_success_envelope_shape_and_request_id_echo(call: NatsCaller) -> None:
    reply = await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"},
                       headers={"X-Request-ID": "trace-123"})
    assert set(reply.body) == {"data", "request_id", "timestamp"}
    assert reply.body["request_id"] == "trace-123"
    assert reply.headers["X-Request-ID"] == "trace-123"
    assert TIMESTAMP.match(reply.body["timestamp"])
    data = reply.data
    assert set(data) == {"key_version", "algorithm", "status", "public_key", "created_at"}
    assert (data["key_version"], data["algorithm"], data["status"]) == (1, "Kyber768", "active")
    assert TIMESTAMP.match(data["created_at"])


async def test_request_id_generated_when_absent(call: NatsCaller) -> None:
    reply = await call(Subject.KEYS_LIST, {})
    assert UUID.match(reply.body["request_id"])
    assert reply.headers["X-Request-ID"] == reply.body["request_id"]


async def test_error_envelope_carries_code_twice(call: NatsCaller) -> None:
    reply = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"x")})
    assert set(reply.body) == {"error", "request_id", "timestamp"}
    assert reply.body["error"] == {
        "code": "ERR_INVALID_001",
        "error_code": "ERR_INVALID_001",
        "message": "Validation failed: key_version is required",
    }


async def test_public_keys_are_spki_der_readable_by_openssl_bindings(call: NatsCaller) -> None:
    from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    kem_key = load_der_public_key(unb64((await generate(call, "Kyber768"))["public_key"]))
    sig_key = load_der_public_key(unb64((await generate(call, "Dilithium3"))["public_key"]))
    assert isinstance(kem_key, mlkem.MLKEM768PublicKey)
    assert isinstance(sig_key, mldsa.MLDSA65PublicKey)


async def test_encrypt_decrypt_round_trip(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    plaintext = b"sensitive data to protect" * 40
    encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(plaintext), "key_version": 1})
    assert encrypted.data["key_version"] == 1 and encrypted.data["algorithm"] == "Kyber768"
    decrypted = await call(Subject.KEM_DECRYPT,
                           {"ciphertext": encrypted.data["ciphertext"], "key_version": 1})
    assert unb64(decrypted.data["plaintext"]) == plaintext
    assert decrypted.data == {"plaintext": b64(plaintext), "key_version": 1,
                              "algorithm": "Kyber768"}


async def test_standard_mode_is_randomised_deterministic_mode_is_not(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    body = {"plaintext": b64(b"same"), "key_version": 1}
    first = await call(Subject.KEM_ENCRYPT, body)
    second = await call(Subject.KEM_ENCRYPT, body)
    assert first.data["ciphertext"] != second.data["ciphertext"]
    det = {**body, "mode": "deterministic", "salt": b64(b"s" * 32)}
    one = await call(Subject.KEM_ENCRYPT, det)
    two = await call(Subject.KEM_ENCRYPT, det)
    other_salt = await call(Subject.KEM_ENCRYPT, {**det, "salt": b64(b"t" * 32)})
    assert one.data["ciphertext"] == two.data["ciphertext"] != other_salt.data["ciphertext"]
    opened = await call(Subject.KEM_DECRYPT, {"ciphertext": one.data["ciphertext"],
                                              "key_version": 1})
    assert unb64(opened.data["plaintext"]) == b"same"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"mode": "deterministic"}, "salt is required in deterministic mode"),
        ({"mode": "deterministic", "salt": b64(b"s" * 31)},
         "salt must be at least 32 and at most 1024 bytes"),
        ({"mode": "deterministic", "salt": b64(b"s" * 1025)}, "at most 1024 bytes"),
        ({"salt": b64(b"s" * 32)}, "salt is only accepted in deterministic mode"),
        ({"mode": "fast"}, "mode must be one of"),
    ],
)
async def test_mode_and_salt_rules(call: NatsCaller, body: dict[str, Any], message: str) -> None:
    reply = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"x"), "key_version": 1, **body})
    assert reply.code == "ERR_INVALID_001"
    assert message in reply.body["error"]["message"]


async def test_tampered_ciphertext_is_one_opaque_400(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"secret"), "key_version": 1})
    blob = bytearray(unb64(encrypted.data["ciphertext"]))
    messages = set()
    for position in (0, 5, 8, 20, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        reply = await call(Subject.KEM_DECRYPT, {"ciphertext": b64(bytes(tampered)),
                                                 "key_version": 1})
        assert reply.code == "ERR_INVALID_001"
        assert "data" not in reply.body
        messages.add(reply.body["error"]["message"])
    truncated = await call(Subject.KEM_DECRYPT, {"ciphertext": b64(bytes(blob[:40])),
                                                 "key_version": 1})
    messages.add(truncated.body["error"]["message"])
    assert len(messages) == 1  # nothing tells which check failed


async def test_ciphertext_bound_to_its_key_version(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"v1 data"), "key_version": 1})
    await call(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"})
    wrong = await call(Subject.KEM_DECRYPT, {"ciphertext": encrypted.data["ciphertext"],
                                             "key_version": 2})
    assert wrong.code == "ERR_INVALID_001"
    right = await call(Subject.KEM_DECRYPT, {"ciphertext": encrypted.data["ciphertext"],
                                             "key_version": 1})
    assert unb64(right.data["plaintext"]) == b"v1 data"


async def test_encapsulate_decapsulate_agree(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    enc = await call(Subject.KEM_ENCAPSULATE, {"key_version": 1})
    assert set(enc.data) == {"kem_ciphertext", "shared_secret", "key_version", "algorithm"}
    assert len(unb64(enc.data["kem_ciphertext"])) == 1088
    assert len(unb64(enc.data["shared_secret"])) == 32
    dec = await call(Subject.KEM_DECAPSULATE, {"kem_ciphertext": enc.data["kem_ciphertext"],
                                               "key_version": 1})
    assert dec.data["shared_secret"] == enc.data["shared_secret"]
    short = await call(Subject.KEM_DECAPSULATE, {"kem_ciphertext": b64(b"x" * 1087),
                                                 "key_version": 1})
    assert short.code == "ERR_INVALID_001"
    assert "1088 bytes" in short.body["error"]["message"]


@pytest.mark.parametrize("size", [16, 24, 32, 48, 64])
async def test_wrap_unwrap_every_allowed_size(call: NatsCaller, size: int) -> None:
    await generate(call, "Kyber768")
    key = bytes(range(size))
    wrapped = await call(Subject.KEM_KEY_WRAP, {"symmetric_key": b64(key), "key_version": 1})
    assert wrapped.data["wrapping_method"].startswith("HPKE")
    unwrapped = await call(Subject.KEM_KEY_UNWRAP, {"wrapped_key": wrapped.data["wrapped_key"],
                                                    "key_version": 1})
    assert unb64(unwrapped.data["symmetric_key"]) == key


async def test_wrap_rejects_other_sizes_and_modes_do_not_mix(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    bad = await call(Subject.KEM_KEY_WRAP, {"symmetric_key": b64(b"k" * 20), "key_version": 1})
    assert bad.code == "ERR_INVALID_001"
    assert "16, 24, 32, 48 or 64" in bad.body["error"]["message"]
    encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"k" * 32), "key_version": 1})
    as_wrapped = await call(Subject.KEM_KEY_UNWRAP, {"wrapped_key": encrypted.data["ciphertext"],
                                                     "key_version": 1})
    assert as_wrapped.code == "ERR_INVALID_001"


async def test_sign_verify_with_and_without_context(call: NatsCaller) -> None:
    await generate(call, "Dilithium3")
    message = b64(b"Invoice #1234: $5,000.00 due 2026-03-01")
    signed = await call(Subject.SIGNATURE_SIGN, {"message": message, "key_version": 1})
    assert len(unb64(signed.data["signature"])) == 3309
    ok = await call(Subject.SIGNATURE_VERIFY, {"message": message, "key_version": 1,
                                               "signature": signed.data["signature"]})
    assert ok.data == {"valid": True, "key_version": 1, "algorithm": "Dilithium3"}
    other = await call(Subject.SIGNATURE_VERIFY, {"message": b64(b"other"), "key_version": 1,
                                                  "signature": signed.data["signature"]})
    assert other.data["valid"] is False
    short = await call(Subject.SIGNATURE_VERIFY, {"message": message, "key_version": 1,
                                                  "signature": b64(b"x" * 100)})
    assert short.data["valid"] is False
    ctx = b64(b"payments-v1")
    with_ctx = await call(Subject.SIGNATURE_SIGN, {"message": message, "key_version": 1,
                                                   "context": ctx})
    no_ctx = await call(Subject.SIGNATURE_VERIFY, {"message": message, "key_version": 1,
                                                   "signature": with_ctx.data["signature"]})
    assert no_ctx.data["valid"] is False
    yes_ctx = await call(Subject.SIGNATURE_VERIFY, {"message": message, "key_version": 1,
                                                    "context": ctx,
                                                    "signature": with_ctx.data["signature"]})
    assert yes_ctx.data["valid"] is True
    too_long = await call(Subject.SIGNATURE_SIGN, {"message": message, "key_version": 1,
                                                   "context": b64(b"c" * 256)})
    assert too_long.code == "ERR_INVALID_001"


@pytest.mark.parametrize(("name", "hasher"), [("SHA-256", hashlib.sha256),
                                              ("SHA-384", hashlib.sha384),
                                              ("SHA-512", hashlib.sha512)])
async def test_sign_hash_verify_hash(call: NatsCaller, name: str, hasher: Any) -> None:
    await generate(call, "Dilithium3")
    digest = b64(hasher(b"document").digest())
    signed = await call(Subject.SIGNATURE_SIGN_HASH,
                        {"hash": digest, "hash_algorithm": name, "key_version": 1})
    assert signed.data["hash_algorithm"] == name
    assert signed.data["signature_type"] == "detached"
    verified = await call(Subject.SIGNATURE_VERIFY_HASH,
                          {"hash": digest, "hash_algorithm": name, "key_version": 1,
                           "signature": signed.data["signature"]})
    assert verified.data == {"valid": True, "key_version": 1, "algorithm": "Dilithium3",
                             "hash_algorithm": name}
    other = b64(hasher(b"other").digest())
    forged = await call(Subject.SIGNATURE_VERIFY_HASH,
                        {"hash": other, "hash_algorithm": name, "key_version": 1,
                         "signature": signed.data["signature"]})
    assert forged.data["valid"] is False


async def test_sign_hash_rejects_wrong_digest_length(call: NatsCaller) -> None:
    reply = await call(Subject.SIGNATURE_SIGN_HASH,
                       {"hash": b64(b"x" * 31), "hash_algorithm": "SHA-256", "key_version": 1})
    assert reply.code == "ERR_INVALID_001"
    assert "hash must be 32 bytes for SHA-256" in reply.body["error"]["message"]


async def test_lifecycle_generate_rotate_retire_archive(call: NatsCaller) -> None:
    first = await generate(call, "Kyber768")
    again = await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
    assert again.code == "ERR_KMS_004"
    rotated = await call(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"})
    assert rotated.data["key_version"] == 2 and rotated.data["old_key_version"] == 1
    assert rotated.data["status"] == "active"
    active = await call(Subject.KEYS_ACTIVE, {"algorithm": "Kyber768"})
    assert active.data["key_version"] == 2
    old = await call(Subject.KEYS_GET, {"algorithm": "Kyber768", "key_version": 1})
    assert old.data["status"] == "retired" and old.data["public_key"] == first["public_key"]
    retire_active = await call(Subject.KEYS_RETIRE, {"algorithm": "Kyber768", "key_version": 2})
    assert retire_active.code == "ERR_KMS_005"
    retire_again = await call(Subject.KEYS_RETIRE, {"algorithm": "Kyber768", "key_version": 1})
    assert retire_again.code is None and retire_again.data["status"] == "retired"
    archived = await call(Subject.KEYS_ARCHIVE, {"algorithm": "Kyber768", "key_version": 1})
    assert archived.data["status"] == "archived"
    listed = await call(Subject.KEYS_LIST, {"algorithm": "Kyber768"})
    assert listed.data["total"] == 2
    assert [k["status"] for k in listed.data["keys"]] == ["archived", "active"]
    only_active = await call(Subject.KEYS_LIST, {"status": "active"})
    assert [k["key_version"] for k in only_active.data["keys"]] == [2]
    missing = await call(Subject.KEYS_GET, {"algorithm": "Kyber768", "key_version": 9})
    assert missing.code == "ERR_KMS_003"


async def test_state_policy_for_crypto_operations(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    await generate(call, "Dilithium3")
    encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"old"), "key_version": 1})
    signed = await call(Subject.SIGNATURE_SIGN, {"message": b64(b"m"), "key_version": 1})
    await call(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"})
    await call(Subject.KEYS_ROTATE, {"algorithm": "Dilithium3"})
    # retired: recover yes, protect no
    enc_retired = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"x"), "key_version": 1})
    assert enc_retired.code == "ERR_FORBIDDEN_001"
    assert "retired" in enc_retired.body["error"]["message"]
    sign_retired = await call(Subject.SIGNATURE_SIGN, {"message": b64(b"m"), "key_version": 1})
    assert sign_retired.code == "ERR_FORBIDDEN_001"
    dec_retired = await call(Subject.KEM_DECRYPT, {"ciphertext": encrypted.data["ciphertext"],
                                                   "key_version": 1})
    assert unb64(dec_retired.data["plaintext"]) == b"old"
    ver_retired = await call(Subject.SIGNATURE_VERIFY, {"message": b64(b"m"), "key_version": 1,
                                                        "signature": signed.data["signature"]})
    assert ver_retired.data["valid"] is True
    # archived: nothing
    await call(Subject.KEYS_ARCHIVE, {"algorithm": "Kyber768", "key_version": 1})
    dec_archived = await call(Subject.KEM_DECRYPT, {"ciphertext": encrypted.data["ciphertext"],
                                                    "key_version": 1})
    assert dec_archived.code == "ERR_FORBIDDEN_001"
    assert "archived" in dec_archived.body["error"]["message"]


async def test_unknown_versions_use_the_family_not_found_code(call: NatsCaller) -> None:
    kem = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"x"), "key_version": 5})
    sig = await call(Subject.SIGNATURE_SIGN, {"message": b64(b"x"), "key_version": 5})
    kms = await call(Subject.KEYS_RETIRE, {"algorithm": "Kyber768", "key_version": 5})
    active = await call(Subject.KEYS_ACTIVE, {"algorithm": "Dilithium3"})
    assert (kem.code, sig.code, kms.code, active.code) == (
        "ERR_KEM_005", "ERR_NOT_FOUND_001", "ERR_KMS_003", "ERR_KMS_003")


async def test_rotate_without_active_key_is_404(call: NatsCaller) -> None:
    reply = await call(Subject.KEYS_ROTATE, {"algorithm": "Dilithium3"})
    assert reply.code == "ERR_KMS_003"


async def test_tenants_are_isolated(stack: Any, call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"mine"), "key_version": 1})
    other = NatsCaller(call.client, await stack.create_tenant())
    listed = await other(Subject.KEYS_LIST, {})
    assert listed.data == {"keys": [], "total": 0}
    stolen = await other(Subject.KEM_DECRYPT, {"ciphertext": encrypted.data["ciphertext"],
                                               "key_version": 1})
    assert stolen.code == "ERR_KEM_005"


async def test_twenty_concurrent_rotates_on_two_workers(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    replies = await asyncio.gather(
        *(call(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"}, timeout=60) for _ in range(20))
    )
    assert all(reply.code is None for reply in replies), [r.body for r in replies if r.code]
    new_versions = sorted(reply.data["key_version"] for reply in replies)
    assert new_versions == list(range(2, 22))
    old_versions = sorted(reply.data["old_key_version"] for reply in replies)
    assert old_versions == list(range(1, 21))
    listed = await call(Subject.KEYS_LIST, {"algorithm": "Kyber768"})
    statuses = {k["key_version"]: k["status"] for k in listed.data["keys"]}
    assert sorted(statuses) == list(range(1, 22))
    assert [v for v, s in statuses.items() if s == "active"] == [21]

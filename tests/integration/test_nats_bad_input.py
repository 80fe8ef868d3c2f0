"""Malformed requests get the right envelope; nothing crashes a worker."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import nats
import nats.aio.msg
import pytest

from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller
from tests.support.wire import b64

pytestmark = [pytest.mark.integration, pytest.mark.long]

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "wycheproof"



@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "Validation failed: body must be valid JSON"),
        (b"[1, 2]", "Validation failed: body must be a JSON object"),
        (b'"text"', "Validation failed: body must be a JSON object"),
        (b'{"plaintext": 5, "key_version": 1}', "Validation failed: plaintext must be a base64"),
        (b'{"plaintext": "not base64!", "key_version": 1}',
         "Validation failed: plaintext must be valid standard base64"),
        (b'{"plaintext": "YQ", "key_version": 1}',
         "Validation failed: plaintext must be valid standard base64"),
        (b'{"plaintext": "YQ==", "key_version": "1"}',
         "Validation failed: key_version must be an integer"),
        (b'{"plaintext": "YQ==", "key_version": 1.5}',
         "Validation failed: key_version must be an integer"),
        (b'{"plaintext": "YQ==", "key_version": 0}',
         "Validation failed: key_version must be an integer >= 1"),
        (b'{"plaintext": "YQ==", "key_version": 2147483648}',
         "Validation failed: key_version must be an integer <= 2147483647"),
        (b'{"plaintext": "YQ==", "key_version": true}',
         "Validation failed: key_version must be an integer"),
        (b'{"plaintext": "YQ==", "key_version": 1, "algorithm": "RSA"}',
         "Validation failed: algorithm must be one of Kyber768, X-Wing"),
        (b'{"plaintext": "YQ==", "key_version": 1, "algorithm": "Dilithium3"}',
         "Validation failed: algorithm must be one of Kyber768, X-Wing"),
        (b'{"plaintext": "YQ==", "key_version": 1, "extra": 1}',
         "Validation failed: extra is not a recognised field"),
    ],
)
async def test_malformed_bodies(call: NatsCaller, payload: bytes, message: str) -> None:
    reply = await call.raw(Subject.KEM_ENCRYPT, payload)
    assert reply.code == "ERR_INVALID_001"
    assert reply.body["error"]["message"].startswith(message)


async def test_missing_and_unknown_api_keys(call: NatsCaller) -> None:
    for key in (None, "", "qph_unknown", "not-a-qpher-key"):
        anonymous = NatsCaller(call.client, key)
        reply = await anonymous(Subject.KEYS_LIST, {})
        assert reply.code == "ERR_AUTH_001"
        assert reply.body["error"]["message"] == "Invalid or missing API key"


async def test_authentication_comes_before_validation(call: NatsCaller) -> None:
    anonymous = NatsCaller(call.client, "qph_unknown")
    reply = await anonymous.raw(Subject.KEM_ENCRYPT, b'{"plaintext": 1}')
    assert reply.code == "ERR_AUTH_001"


async def test_oversized_plaintext_is_refused_with_the_limit(call: NatsCaller) -> None:
    await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
    reply = await call(Subject.KEM_ENCRYPT,
                       {"plaintext": b64(b"x" * (1024 * 1024 + 1)), "key_version": 1})
    assert reply.code == "ERR_INVALID_001"
    assert "1048576-byte limit" in reply.body["error"]["message"]
    at_limit = await call(Subject.KEM_ENCRYPT,
                          {"plaintext": b64(b"x" * (1024 * 1024)), "key_version": 1})
    assert at_limit.code is None


def _wycheproof_bad_ciphertexts() -> list[tuple[str, bytes]]:
    path = VECTORS / "mlkem_768_semi_expanded_decaps_test.json"
    cases: list[tuple[str, bytes]] = []
    if path.exists():
        suite = json.loads(path.read_text())
        for group in suite["testGroups"]:
            for test in group["tests"]:
                ciphertext = bytes.fromhex(test.get("c", ""))
                if test["result"] == "invalid" and len(ciphertext) != 1088:
                    cases.append((test.get("comment", ""), ciphertext))
    return cases[:10] or [("short", b"x" * 1000), ("long", b"x" * 1089)]


async def test_wrong_length_kem_ciphertexts_from_wycheproof(call: NatsCaller) -> None:
    await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
    for _, ciphertext in _wycheproof_bad_ciphertexts():
        reply = await call(Subject.KEM_DECAPSULATE,
                           {"kem_ciphertext": b64(ciphertext), "key_version": 1})
        assert reply.code == "ERR_INVALID_001"


def _wycheproof_bad_signatures() -> list[bytes]:
    path = VECTORS / "mldsa_65_verify_test.json"
    out: list[bytes] = []
    if path.exists():
        suite = json.loads(path.read_text())
        for group in suite["testGroups"]:
            for test in group["tests"]:
                if test["result"] == "invalid" and "sig" in test:
                    out.append(bytes.fromhex(test["sig"]))
    return out[:15] or [b"x" * 3308]


async def test_invalid_signatures_from_wycheproof_are_valid_false(call: NatsCaller) -> None:
    # Wrong shapes (lengths, hint encodings) reach the worker's verify as they are and
    # come back as valid false, never an error. The vectors' own keys cannot be imported;
    # tests/crypto checks each vector against its key.
    await call(Subject.KEYS_GENERATE, {"algorithm": "Dilithium3"})
    for signature in _wycheproof_bad_signatures():
        reply = await call(Subject.SIGNATURE_VERIFY,
                           {"message": b64(b"m"), "signature": b64(signature), "key_version": 1})
        assert reply.code is None and reply.data["valid"] is False


async def test_a_tampered_signature_of_the_tenants_key_is_valid_false(
    call: NatsCaller,
) -> None:
    await call(Subject.KEYS_GENERATE, {"algorithm": "Dilithium3"})
    signed = await call(Subject.SIGNATURE_SIGN, {"message": b64(b"m"), "key_version": 1})
    signature = base64.b64decode(signed.data["signature"])
    genuine = await call(Subject.SIGNATURE_VERIFY, {"message": b64(b"m"), "key_version": 1,
                                                    "signature": signed.data["signature"]})
    assert genuine.data["valid"] is True
    # One bit flipped in the commitment hash, the response vector and the hint.
    for position in (0, 32, len(signature) // 2, len(signature) - 1):
        tampered = bytearray(signature)
        tampered[position] ^= 0x01
        reply = await call(Subject.SIGNATURE_VERIFY, {"message": b64(b"m"), "key_version": 1,
                                                      "signature": b64(bytes(tampered))})
        assert reply.code is None and reply.data["valid"] is False, position


async def test_workers_survive_a_storm_of_garbage(stack: LocalStack, call: NatsCaller) -> None:
    payloads: list[Any] = [b"", b"\x00\xff\xfe", b"{" * 10000, b"null", b"1e999999",
                           b'{"plaintext": null, "key_version": null}',
                           json.dumps({"key_version": 2**63}).encode()]
    for subject in Subject:
        if subject is Subject.HEALTH_PING:
            continue
        for payload in payloads:
            reply = await call.raw(subject, payload)
            if subject is Subject.KEYS_LIST and payload == b"":
                # An empty body is an empty object: list with no filters is valid.
                assert reply.code is None
                continue
            assert reply.code in {"ERR_INVALID_001", "ERR_AUTH_001"}, (subject, payload,
                                                                        reply.body)
    assert all(worker.poll() is None for worker in stack.workers)


async def test_free_plan_rate_limit_with_retry_hint(stack: LocalStack, call: NatsCaller) -> None:
    free = NatsCaller(call.client, await stack.create_tenant(Plan.FREE))
    started = time.monotonic()
    codes = [(await free(Subject.KEYS_LIST, {})) for _ in range(40)]
    elapsed = time.monotonic() - started
    limited = [reply for reply in codes if reply.code == "ERR_RATE_001"]
    assert limited, "40 requests in a burst of 20 must hit the limit"
    # The free plan: a burst of 20, then 10 a second (one more for a token being refilled).
    accepted = sum(1 for reply in codes if reply.code is None)
    assert accepted <= 20 + 10 * elapsed + 1, (accepted, elapsed)
    hint = limited[0]
    assert int(hint.headers["Retry-After"]) >= 1
    assert hint.body["error"]["retry_after"] == int(hint.headers["Retry-After"])
    assert "Retry after" in hint.body["error"]["message"]


async def test_free_plan_version_cap(stack: LocalStack, call: NatsCaller) -> None:
    free = NatsCaller(call.client, await stack.create_tenant(Plan.FREE))
    await free(Subject.KEYS_GENERATE, {"algorithm": "Dilithium3"})
    await free(Subject.KEYS_ROTATE, {"algorithm": "Dilithium3"})
    await free(Subject.KEYS_ROTATE, {"algorithm": "Dilithium3"})
    over = await free(Subject.KEYS_ROTATE, {"algorithm": "Dilithium3"})
    assert over.code == "ERR_FORBIDDEN_001"
    assert "Plan limit" in over.body["error"]["message"]
    await free(Subject.KEYS_ARCHIVE, {"algorithm": "Dilithium3", "key_version": 1})
    after_archive = await free(Subject.KEYS_ROTATE, {"algorithm": "Dilithium3"})
    assert after_archive.code is None and after_archive.data["key_version"] == 4


async def test_a_reserved_reply_subject_is_never_answered(stack: LocalStack, call: NatsCaller,
                                                         nats_client: nats.NATS) -> None:
    """A caller must not make a worker publish, with the worker's rights, to JetStream's
    API or pqkms's own streams by naming them as a request's reply subject (direct path,
    FastStream path, health ping). An ordinary reply subject is answered."""
    await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
    landed: list[str] = []
    answered = asyncio.Event()

    async def record(message: nats.aio.msg.Msg) -> None:
        landed.append(message.subject)
        if message.subject == "ordinary.reply":
            answered.set()

    reserved = ["pqkms.v1.test-reply.direct", "pqkms.v1.test-reply.faststream",
                "pqkms.v1.test-reply.health", "$PQKMS_TEST.reply", "_PQKMS_WORKER_INBOX.test"]
    for subject in [*reserved, "ordinary.reply"]:
        await nats_client.subscribe(subject, cb=record)
    headers = {"X-API-Key": call.api_key or ""}
    encrypt = json.dumps({"plaintext": "AA==", "key_version": 1}).encode()
    sends = [(Subject.KEM_ENCRYPT, encrypt, reserved[0]), (Subject.KEYS_LIST, b"{}", reserved[1]),
             (Subject.HEALTH_PING, b"", reserved[2]), (Subject.KEM_ENCRYPT, encrypt, reserved[3]),
             (Subject.KEYS_LIST, b"{}", reserved[4]), (Subject.KEM_ENCRYPT, encrypt,
                                                       "ordinary.reply")]
    for subject, payload, reply in sends:
        await nats_client.publish(subject.value, payload, reply=reply, headers=headers)
    await nats_client.flush()
    await asyncio.wait_for(answered.wait(), 10)
    await asyncio.sleep(0.5)  # the reserved ones, had they been answered, by now too
    assert landed == ["ordinary.reply"]
    logs = "".join(path.read_text() for path in stack.worker_logs.values())
    assert '"reply_subject_refused"' in logs  # counted, at most one line a second
    assert (await call(Subject.KEM_ENCRYPT, {"plaintext": "AA==", "key_version": 1})).code is None

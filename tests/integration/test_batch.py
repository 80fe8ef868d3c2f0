"""Batch subjects over a real nats-server, two workers and the HTTP bridge."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller
from tests.support.wire import b64

pytestmark = pytest.mark.integration



async def generate(call: NatsCaller, algorithm: str) -> None:
    reply = await call(Subject.KEYS_GENERATE, {"algorithm": algorithm})
    assert reply.code is None, reply.body


async def batch(call: NatsCaller, subject: Subject, body: dict[str, Any]) -> dict[str, Any]:
    reply = await call(subject, body, timeout=30)
    assert reply.code is None, reply.body
    return reply.data


async def test_batch_results_equal_single_call_results(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    await generate(call, "Dilithium3")
    plaintexts = [f"record {n}".encode() * (n + 1) for n in range(20)]

    # Encrypt in a batch and one by one; each side's ciphertexts decrypt both ways.
    sealed = await batch(call, Subject.KEM_ENCRYPT_BATCH, {
        "key_version": 1, "items": [{"plaintext": b64(p), "reference": str(n)}
                                    for n, p in enumerate(plaintexts)]})
    assert (sealed["total"], sealed["succeeded"], sealed["failed"]) == (20, 20, 0)
    assert [result["reference"] for result in sealed["results"]] == [str(n) for n in range(20)]
    singles = [(await call(Subject.KEM_ENCRYPT, {"plaintext": b64(p), "key_version": 1})).data
               for p in plaintexts]
    assert {k for r in sealed["results"] for k in r["data"]} == set(singles[0])
    for ciphertexts in ([r["data"]["ciphertext"] for r in sealed["results"]],
                        [s["ciphertext"] for s in singles]):
        opened = await batch(call, Subject.KEM_DECRYPT_BATCH, {
            "key_version": 1, "items": [{"ciphertext": c} for c in ciphertexts]})
        assert [base64.b64decode(r["data"]["plaintext"]) for r in opened["results"]] == plaintexts
        for ciphertext, plaintext in zip(ciphertexts, plaintexts, strict=True):
            single = await call(Subject.KEM_DECRYPT, {"ciphertext": ciphertext, "key_version": 1})
            assert base64.b64decode(single.data["plaintext"]) == plaintext

    # Deterministic mode: a batch item gives exactly the single call's bytes.
    salt = b64(b"s" * 32)
    item = {"plaintext": b64(b"same"), "mode": "deterministic", "salt": salt, "key_version": 1}
    alone = await call(Subject.KEM_ENCRYPT, item)
    together = await batch(call, Subject.KEM_ENCRYPT_BATCH, {"items": [item, item]})
    assert [r["data"] for r in together["results"]] == [alone.data, alone.data]

    # Signatures are hedged: compare by verifying each side's with both paths.
    messages = [f"invoice {n}".encode() for n in range(10)]
    signed = await batch(call, Subject.SIGNATURE_SIGN_BATCH, {
        "key_version": 1, "algorithm": "Dilithium3",
        "items": [{"message": b64(m)} for m in messages]})
    single_signed = [(await call(Subject.SIGNATURE_SIGN,
                                 {"message": b64(m), "key_version": 1})).data for m in messages]
    assert signed["results"][0]["data"].keys() == single_signed[0].keys()
    for signatures in ([r["data"]["signature"] for r in signed["results"]],
                       [s["signature"] for s in single_signed]):
        checked = await batch(call, Subject.SIGNATURE_VERIFY_BATCH, {
            "key_version": 1, "items": [{"message": b64(m), "signature": s}
                                        for m, s in zip(messages, signatures, strict=True)]})
        assert all(r["data"]["valid"] is True for r in checked["results"])
        single = await call(Subject.SIGNATURE_VERIFY, {
            "message": b64(messages[0]), "signature": signatures[0], "key_version": 1})
        assert single.data["valid"] is True
    # A wrong signature is valid: false, as in the single call — not an item error.
    wrong = await batch(call, Subject.SIGNATURE_VERIFY_BATCH, {"key_version": 1, "items": [
        {"message": b64(b"other"), "signature": signed["results"][0]["data"]["signature"]}]})
    assert wrong["results"][0]["data"]["valid"] is False and wrong["failed"] == 0


async def test_one_bad_item_does_not_fail_the_others(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    good = {"plaintext": b64(b"fine"), "key_version": 1}
    data = await batch(call, Subject.KEM_ENCRYPT_BATCH, {"items": [
        {**good, "reference": "ok-1"},
        {"plaintext": "not base64!", "key_version": 1, "reference": "bad-b64"},
        {"plaintext": b64(b"x"), "reference": "no-version"},
        {"plaintext": b64(b"x"), "key_version": 99, "reference": "unknown-version"},
        {**good, "key_verison": 1, "reference": "typo"},
        "not an object",
        {**good, "reference": 7},
        {**good, "reference": "ok-2"},
    ]})
    results = data["results"]
    assert (data["total"], data["succeeded"], data["failed"]) == (8, 2, 6)
    assert "data" in results[0] and "data" in results[7] and results[7]["reference"] == "ok-2"
    errors = {r.get("reference"): r["error"] for r in results if "error" in r}
    assert errors["bad-b64"]["message"] == (
        "Validation failed: plaintext must be valid standard base64")
    assert errors["no-version"]["message"] == "Validation failed: key_version is required"
    assert errors["unknown-version"]["code"] == "ERR_KEM_005"
    assert errors["typo"]["message"] == "Validation failed: key_verison is not a recognised field"
    assert results[5] == {"error": {"code": "ERR_INVALID_001", "error_code": "ERR_INVALID_001",
                                    "message": "Validation failed: item must be a JSON object"}}
    assert "reference" not in results[6] and "reference" in results[6]["error"]["message"]
    for error in errors.values():
        assert error["code"] == error["error_code"]


async def test_top_level_defaults_and_item_overrides(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    await call(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"})
    data = await batch(call, Subject.KEM_ENCRYPT_BATCH, {
        "key_version": 2, "algorithm": "Kyber768",
        "items": [{"plaintext": b64(b"a")}, {"plaintext": b64(b"b"), "key_version": 1}]})
    assert data["results"][0]["data"]["key_version"] == 2
    # Version 1 is retired by the rotation: its item alone fails.
    assert data["results"][1]["error"]["code"] == "ERR_FORBIDDEN_001"
    bad_default = await call(Subject.KEM_ENCRYPT_BATCH, {"algorithm": "Dilithium3",
                                                         "items": [{"plaintext": b64(b"a")}]})
    assert bad_default.code == "ERR_INVALID_001"
    assert bad_default.body["error"]["message"].startswith("Validation failed: algorithm")


async def test_empty_too_many_and_too_large_batches_are_refused(call: NatsCaller) -> None:
    await generate(call, "Kyber768")
    empty = await call(Subject.KEM_ENCRYPT_BATCH, {"items": []})
    assert empty.body["error"]["message"] == "Validation failed: items must hold at least one item"
    many = await call(Subject.KEM_ENCRYPT_BATCH,
                      {"key_version": 1, "items": [{"plaintext": "AA=="}] * 1001})
    assert many.code == "ERR_INVALID_001"
    assert "over the limit of 1000 per batch" in many.body["error"]["message"]
    # Each item is under the 1 MiB message limit, the batch is over one message.
    big = b64(b"x" * 800_000)
    large = await call(Subject.KEM_ENCRYPT_BATCH,
                       {"key_version": 1, "items": [{"plaintext": big}, {"plaintext": big}]})
    assert large.code == "ERR_INVALID_001"
    assert "over the 1463637-byte limit" in large.body["error"]["message"]
    # A reply that would not fit: many small encryptions (each ciphertext ≈ 1.1 KB).
    wide = await call(Subject.KEM_ENCRYPT_BATCH,
                      {"key_version": 1, "items": [{"plaintext": "AA=="}] * 1000})
    assert wide.code == "ERR_INVALID_001"
    assert "reply could reach" in wide.body["error"]["message"]


async def test_batch_items_count_toward_the_rate_limit(stack: LocalStack,
                                                       call: NatsCaller) -> None:
    free = NatsCaller(call.client, await stack.create_tenant(Plan.FREE))  # 10/s, burst 20
    await generate(free, "Kyber768")  # one token
    items = [{"plaintext": b64(b"x"), "key_version": 1}]
    first = await free(Subject.KEM_ENCRYPT_BATCH, {"items": items * 15})
    assert first.code is None and first.data["succeeded"] == 15
    # About 4 tokens left: 10 items are refused as a whole, none is processed.
    second = await free(Subject.KEM_ENCRYPT_BATCH, {"items": items * 10})
    assert second.code == "ERR_RATE_001"
    assert int(second.headers["Retry-After"]) >= 1
    over_burst = await free(Subject.KEM_ENCRYPT_BATCH, {"items": items * 21})
    assert over_burst.code == "ERR_INVALID_001"
    assert "burst of 20" in over_burst.body["error"]["message"]


async def test_batches_over_http(stack: LocalStack, call: NatsCaller, api_key: str) -> None:
    if stack.bridge is None:
        pytest.skip("bridge not available")
    await generate(call, "Kyber768")
    headers = {"X-API-Key": api_key}
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=30) as http:
        sealed = await http.post("/api/v1/kem/encrypt/batch", headers=headers, json={
            "key_version": 1, "items": [{"plaintext": b64(b"one"), "reference": "a"},
                                        {"plaintext": "??"}]})
        assert sealed.status_code == 200
        results = sealed.json()["data"]["results"]
        assert results[0]["reference"] == "a" and results[1]["error"]["code"] == "ERR_INVALID_001"
        opened = await http.post("/api/v1/kem/decrypt/batch", headers=headers, json={
            "key_version": 1, "items": [{"ciphertext": results[0]["data"]["ciphertext"]}]})
        assert base64.b64decode(opened.json()["data"]["results"][0]["data"]["plaintext"]) == b"one"
        empty = await http.post("/api/v1/signature/sign/batch", headers=headers,
                                json={"items": []})
        assert empty.status_code == 400
        big = b64(b"x" * 800_000)
        too_large = await http.post("/api/v1/kem/encrypt/batch", headers=headers, json={
            "key_version": 1, "items": [{"plaintext": big}, {"plaintext": big}]})
        assert too_large.status_code == 400
        assert "larger than 1463637 bytes" in too_large.json()["error"]["message"]
        assert (await http.post("/api/v1/signature/verify/batch", json={"items": [{}]})
                ).status_code == 401

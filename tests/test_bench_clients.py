"""The benchmark's request bodies and its checks of batch and job results."""

from __future__ import annotations

import base64

import orjson
import pytest

from bench.clients import BATCH_SUBJECTS, JOB_OPERATIONS, Bodies, item_error
from bench.fixture import OPERATIONS
from bench.run import batch_error
from schemas.jobs import JobOperation

PAYLOAD = bytes(range(256)) * 4
BODIES = Bodies(PAYLOAD, b"ciphertext", b"signature")


def test_every_operation_has_its_batch_subject_and_job_operation() -> None:
    for operation in OPERATIONS:
        job = JobOperation(JOB_OPERATIONS[operation])
        assert job.batch_subject.value == BATCH_SUBJECTS[operation]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_batch_repeats_the_single_item_and_names_the_key_once(operation: str) -> None:
    single = orjson.loads(BODIES[operation])
    batch = orjson.loads(BODIES.batch(operation, 3))

    assert {name: batch[name] for name in ("key_version", "algorithm")} == {
        name: single.pop(name) for name in ("key_version", "algorithm")}
    assert batch["items"] == [single] * 3


def test_items_carry_the_payload_and_the_service_s_ciphertext_and_signature() -> None:
    assert BODIES.items["encrypt"] == {"plaintext": base64.b64encode(PAYLOAD).decode()}
    assert BODIES.items["decrypt"] == {"ciphertext": base64.b64encode(b"ciphertext").decode()}
    assert BODIES.items["verify"]["signature"] == base64.b64encode(b"signature").decode()
    assert Bodies.key("sign") == {"key_version": 1, "algorithm": "Dilithium3"}


def test_an_item_is_wrong_when_it_failed_or_its_signature_did_not_verify() -> None:
    assert item_error("encrypt", {"data": {"ciphertext": "AA=="}}) is None
    assert item_error("verify", {"data": {"valid": True}}) is None
    assert item_error("verify", {"data": {"valid": False}}) == "signature did not verify"
    failed = item_error("decrypt", {"error": {"code": "ERR_KEM_005"}})
    assert failed is not None and "ERR_KEM_005" in failed


def _reply(results: list[dict[str, object]], succeeded: int) -> bytes:
    return orjson.dumps({"data": {"results": results, "total": len(results),
                                  "succeeded": succeeded, "failed": len(results) - succeeded}})


def test_a_batch_counts_only_when_every_item_succeeded() -> None:
    good = {"data": {"valid": True}}
    assert batch_error(_reply([good, good], 2), "verify", 2) is None
    assert batch_error(_reply([good, {"error": {"code": "X"}}], 1), "verify", 2) == (
        "1 of 2 items succeeded")
    assert batch_error(_reply([good, {"data": {"valid": False}}], 2), "verify", 2) == (
        "signature did not verify")
    assert batch_error(_reply([good], 1), "verify", 2) == "1 of 2 items succeeded"
    assert batch_error(b'{"error":{"code":"ERR_AUTH_001"}}', "sign", 2) == (
        '{"error":{"code":"ERR_AUTH_001"}}')

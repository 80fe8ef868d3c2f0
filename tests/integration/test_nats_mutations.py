"""Valid requests, mutated at random, on every subject of the real workers.

Schemathesis covers the HTTP routes from the OpenAPI document; this covers the NATS
subjects from the other side: each request starts as a valid body and gets one to three
mutations (a field's value replaced by any JSON value, a field removed, a known field
added, a base64 value's bytes flipped, a batch's items repeated or emptied). Whatever
comes in, the reply must be a well-formed envelope with a client error or a result, never
an internal error; every job of one chunk that was accepted must complete (a chunk of
bad items gets per-item errors, never stalls its job); and every worker must keep
running. The generator is seeded, so a failure names the request that caused it and
reproduces.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas.errors import ErrorCode
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller, Reply
from tests.support.wire import b64

pytestmark = [pytest.mark.integration, pytest.mark.long]

MUTATED_REQUESTS = 600
SEED = 20261207
MAX_ITEMS = 1001  # one over the batch limit

FIELDS = ("plaintext", "ciphertext", "message", "signature", "context", "hash",
          "hash_algorithm", "salt", "mode", "reference", "job_id", "operation", "chunk_index",
          "total_chunks", "items", "key_version", "algorithm", "status", "rotation_period",
          "kem_ciphertext", "symmetric_key", "wrapped_key")
WORDS = ("Kyber768", "X-Wing", "Dilithium3", "Composite-ML-DSA", "SLH-DSA-SHA2-128f",
         "SHA-256", "SHA-512", "active", "retired", "archived", "standard", "deterministic",
         "kem.encrypt", "signature.verify", "P30D", "30d", "", "\u0000", "é\u2028",
         "YQ==", "YQ", "Y Q==", "YQ==\n", "-_-_", "====", "a" * 5000)
# Replies that mean the worker failed, not the request.
SERVER_FAULTS = {ErrorCode.INTERNAL, ErrorCode.CRYPTO, ErrorCode.SERVICE_UNAVAILABLE,
                 ErrorCode.TIMEOUT, ErrorCode.BAD_GATEWAY}

Body = dict[str, Any]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, biased towards the ones a validator has to think about."""
    kind = rng.randrange(12 if depth < 2 else 10)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, 2, -1, 7, 2**31, 2**63 - 1, -(2**63), 2**64, 10**30])
    if kind == 3:
        return rng.choice([0.0, 1.0, 1.5, -0.0, 1e308, 2.0**53])
    if kind in (4, 5):
        return rng.choice(WORDS)
    if kind in (6, 7):
        size = rng.choice([0, 1, 15, 16, 31, 32, 33, 64, 1088, 3309, 5000])
        return b64(rng.randbytes(size))
    if kind in (8, 9):
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
    if kind == 10:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [rng.choice(FIELDS) for _ in range(rng.randrange(4))]
    return {key: random_value(rng, depth + 1) for key in keys}


def flipped(rng: random.Random, value: str) -> str | None:
    """``value`` with one byte changed, when it is standard base64 of at least one byte."""
    try:
        raw = bytearray(base64.b64decode(value, validate=True))
    except ValueError:
        return None
    if not raw:
        return None
    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return b64(bytes(raw))


def mutate_once(rng: random.Random, body: Body) -> None:
    """One mutation of ``body`` or of one of its items, in place."""
    target = body
    items = body.get("items")
    if isinstance(items, list) and items and rng.random() < 0.5:
        index = rng.randrange(len(items))
        if not isinstance(items[index], dict):
            items[index] = random_value(rng)
            return
        target = items[index]
    keys = list(target)
    roll = rng.random()
    if roll < 0.4 and keys:
        target[rng.choice(keys)] = random_value(rng)
    elif roll < 0.55 and keys:
        del target[rng.choice(keys)]
    elif roll < 0.75:
        target[rng.choice(FIELDS)] = random_value(rng)
    elif roll < 0.9 and keys:
        key = rng.choice(keys)
        value = target[key]
        changed = flipped(rng, value) if isinstance(value, str) else None
        target[key] = changed if changed is not None else random_value(rng)
    elif isinstance(items, list):
        body["items"] = (items * rng.choice([0, 2, 50, 1001]))[:MAX_ITEMS]


def mutated(rng: random.Random, template: Body) -> Body:
    """A copy of ``template`` with one to three mutations."""
    body = copy.deepcopy(template)
    for _ in range(rng.choice([1, 1, 2, 3])):
        mutate_once(rng, body)
    return body


def valid_bodies(ciphertext: str, signature: str) -> dict[Subject, list[Body]]:
    """At least one valid body per subject, for a tenant holding version 1 of each
    algorithm below."""
    message = b64(b"abc")
    digest = b64(hashlib.sha256(b"abc").digest())
    kem: list[Body] = [{"key_version": 1}, {"key_version": 1, "algorithm": "X-Wing"}]
    signing: list[Body] = [{"key_version": 1, "algorithm": name}
               for name in ("Dilithium3", "Composite-ML-DSA", "SLH-DSA-SHA2-128f")]
    dilithium = signing[0]
    return {
        Subject.KEM_ENCRYPT: [{"plaintext": message, **k} for k in kem]
        + [{"plaintext": message, "key_version": 1, "mode": "deterministic",
            "salt": b64(b"s" * 16)}],
        Subject.KEM_DECRYPT: [{"ciphertext": ciphertext, "key_version": 1}],
        Subject.KEM_ENCAPSULATE: kem,
        Subject.KEM_DECAPSULATE: [{"kem_ciphertext": b64(bytes(1088)), "key_version": 1}],
        Subject.KEM_KEY_WRAP: [{"symmetric_key": b64(bytes(32)), **k} for k in kem],
        Subject.KEM_KEY_UNWRAP: [{"wrapped_key": ciphertext, "key_version": 1}],
        Subject.SIGNATURE_SIGN: [{"message": message, **s} for s in signing]
        + [{"message": message, "context": b64(b"ctx"), **dilithium}],
        Subject.SIGNATURE_VERIFY: [{"message": message, "signature": signature, **dilithium}],
        Subject.SIGNATURE_SIGN_HASH: [{"hash": digest, "hash_algorithm": "SHA-256", **s}
                                      for s in signing],
        Subject.SIGNATURE_VERIFY_HASH: [{"hash": digest, "hash_algorithm": "SHA-256",
                                         "signature": signature, **dilithium}],
        Subject.KEYS_GENERATE: [{"algorithm": "Kyber768"}],
        Subject.KEYS_LIST: [{}, {"algorithm": "Kyber768", "status": "active"}],
        Subject.KEYS_ACTIVE: [{"algorithm": "Dilithium3"}],
        Subject.KEYS_GET: [{"algorithm": "Kyber768", "key_version": 1}],
        Subject.KEYS_ROTATE: [{"algorithm": "X-Wing"}],
        Subject.KEYS_RETIRE: [{"algorithm": "X-Wing", "key_version": 1}],
        Subject.KEYS_ARCHIVE: [{"algorithm": "X-Wing", "key_version": 1}],
        Subject.KEYS_ROTATION_POLICY_SET: [{"algorithm": "Kyber768", "rotation_period": "P30D"}],
        Subject.KEYS_ROTATION_POLICY_GET: [{"algorithm": "Kyber768"}],
        Subject.KEM_ENCRYPT_BATCH: [{"items": [{"plaintext": message, "reference": "a"},
                                               {"plaintext": message}], "key_version": 1}],
        Subject.KEM_DECRYPT_BATCH: [{"items": [{"ciphertext": ciphertext}], "key_version": 1}],
        Subject.SIGNATURE_SIGN_BATCH: [{"items": [{"message": message}], **dilithium}],
        Subject.SIGNATURE_VERIFY_BATCH: [{"items": [{"message": message,
                                                     "signature": signature}], **dilithium}],
        Subject.JOBS_SUBMIT: [{"job_id": "job-1", "operation": "kem.encrypt", "chunk_index": 0,
                               "total_chunks": 1, "items": [{"plaintext": message}],
                               "key_version": 1}],
        Subject.JOBS_STATUS: [{"job_id": "job-1"}],
        Subject.JOBS_RESULTS: [{"job_id": "job-1", "chunk_index": 0}],
        # A job of its own: the mutated submits' jobs are checked at the end.
        Subject.JOBS_DELETE: [{"job_id": "job-never-submitted"}],
    }


def envelope_fault(reply: Reply) -> str | None:
    """What is wrong with a reply to a client's request, or None."""
    body = reply.body
    if not isinstance(body.get("request_id"), str) or not isinstance(body.get("timestamp"), str):
        return "no request_id or timestamp"
    if ("data" in body) == ("error" in body):
        return "not exactly one of data and error"
    if "data" in body:
        return None if isinstance(body["data"], dict) else "data is not an object"
    error = body["error"]
    code = error.get("code")
    if code not in set(ErrorCode) or error.get("error_code") != code:
        return f"unknown or inconsistent code {code!r}"
    if not isinstance(error.get("message"), str) or not error["message"]:
        return "no message"
    if ErrorCode(code) in SERVER_FAULTS:
        return f"server fault {code}"
    return None


async def unfinished(call: NatsCaller, job_id: str, timeout: float = 60.0) -> str | None:
    """Why an accepted job of one chunk has not completed within ``timeout``, or None."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await call(Subject.JOBS_STATUS, {"job_id": job_id})
        if reply.code is not None:
            return f"status answered {reply.body}"
        if reply.data["state"] == "completed":
            return None
        if time.monotonic() > deadline:
            return f"still {reply.data} after {timeout:.0f} s"
        await asyncio.sleep(0.2)


@dataclass
class MutationRun:
    """Sends mutated requests as one tenant and collects what went wrong."""

    call: NatsCaller
    faults: list[str] = field(default_factory=list)
    outcomes: set[tuple[Subject, str | None]] = field(default_factory=set)
    submitted: set[str] = field(default_factory=set)  # one-chunk jobs accepted: must complete

    async def send(self, number: int, subject: Subject, body: Body) -> None:
        payload = json.dumps(body).encode()
        if len(payload) > self.call.client.max_payload:
            return  # nats-py refuses to send it; the server's limit is tested elsewhere
        reply = await self.call.raw(subject, payload, timeout=60)
        self.outcomes.add((subject, reply.code))
        fault = envelope_fault(reply)
        if fault:
            self.faults.append(f"#{number} {subject} {payload[:300]!r}: {fault}: {reply.body}")
        accepted_job = subject is Subject.JOBS_SUBMIT and reply.code is None
        if accepted_job and reply.data["total_chunks"] == 1:
            self.submitted.add(reply.data["job_id"])

    async def check_jobs(self) -> None:
        for job_id in sorted(self.submitted):
            if problem := await unfinished(self.call, job_id):
                self.faults.append(f"job {job_id}: {problem}")


async def prepared_templates(call: NatsCaller) -> dict[Subject, list[Body]]:
    """Version 1 of each algorithm for the caller's tenant, a ciphertext, a signature and
    the job ``job-1``; then the valid bodies."""
    for algorithm in ("Kyber768", "X-Wing", "Dilithium3", "Composite-ML-DSA",
                      "SLH-DSA-SHA2-128f"):
        assert (await call(Subject.KEYS_GENERATE, {"algorithm": algorithm})).code is None
    encrypted = await call(Subject.KEM_ENCRYPT, {"plaintext": b64(b"abc"), "key_version": 1})
    signed = await call(Subject.SIGNATURE_SIGN, {"message": b64(b"abc"), "key_version": 1,
                                                 "algorithm": "Dilithium3"})
    templates = valid_bodies(encrypted.data["ciphertext"], signed.data["signature"])
    first_job = await call(Subject.JOBS_SUBMIT, templates[Subject.JOBS_SUBMIT][0])
    assert first_job.code is None, first_job.body
    return templates


@pytest.mark.parametrize("in_flight", [1, 32])
async def test_mutated_requests_get_client_errors_or_results(
    stack: LocalStack, call: NatsCaller, in_flight: int
) -> None:
    """One at a time, every failure reproduces from the seed; 32 at a time, the same
    requests also race each other (a key retired while another request uses it)."""
    templates = await prepared_templates(call)
    run = MutationRun(call, submitted={"job-1"})
    rng = random.Random(SEED)
    requests: list[tuple[int, Subject, Body]] = []
    for number in range(MUTATED_REQUESTS):
        subject = rng.choice(list(templates))
        body = mutated(rng, rng.choice(templates[subject]))
        if subject is Subject.JOBS_SUBMIT and body.get("job_id") == "job-1":
            body["job_id"] = f"job-{number + 2}"  # a new job, unless the mutation chose one
        requests.append((number, subject, body))
    for start in range(0, len(requests), in_flight):
        await asyncio.gather(*(run.send(*request)
                               for request in requests[start:start + in_flight]))
    await run.check_jobs()
    assert not run.faults, "\n".join(run.faults)
    assert all(worker.poll() is None for worker in stack.workers)
    # The mutations reach past validation: some mutated requests still succeed.
    assert sum(1 for _, code in run.outcomes if code is None) >= 10, run.outcomes

"""Retire and archive, once answered, are honoured by every worker at once.

Four workers on each backend (the session stack, topped up to four on SQLite). Every
worker first serves the key versions, so each holds them loaded in its key cache; then
one request retires them (a rotation retires the version it replaces: an active
version cannot be retired directly). From the reply on, no worker encrypts, wraps,
encapsulates or signs with the retired versions, while decrypt, unwrap, decapsulate and
verify still work; after archive nothing works. On PostgreSQL workers read a
version's status on every request; on SQLite they remember it until the database's
generation file changes (worker.store.key_state), which the changing worker rewrites
before it answers: either way this holds without any message between workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller, Reply
from tests.support.wire import b64, generate, unb64

pytestmark = [pytest.mark.integration, pytest.mark.long]

WORKERS = 4
STORM = 24  # concurrent requests per operation after each change
KEM = "Kyber768"
SIGNATURE = "Dilithium3"
MESSAGE = b"one database, one truth"
SECRET_KEY = bytes(range(32))

PROTECT = {  # operations a retired version refuses
    Subject.KEM_ENCRYPT: {"algorithm": KEM, "plaintext": b64(MESSAGE)},
    Subject.KEM_ENCAPSULATE: {"algorithm": KEM},
    Subject.KEM_KEY_WRAP: {"algorithm": KEM, "symmetric_key": b64(SECRET_KEY)},
    Subject.SIGNATURE_SIGN: {"algorithm": SIGNATURE, "message": b64(MESSAGE)},
}
WARMED_BY = (Subject.KEM_ENCRYPT, Subject.SIGNATURE_SIGN)


@pytest.fixture(scope="module")
async def four_workers(stack: LocalStack) -> AsyncIterator[LocalStack]:
    """The session stack with at least four workers for this module."""
    extra = [stack.start_worker() for _ in range(WORKERS - len(stack.workers))]
    try:
        await stack.wait_for_workers(len(stack.workers))
        yield stack
    finally:
        for process in extra:
            stack.stop_worker(process)


@pytest.fixture
async def tenant(four_workers: LocalStack, call: NatsCaller) -> str:
    return await four_workers.tenant_id(call.api_key or "")


def _version(body: dict[str, Any], version: int) -> dict[str, Any]:
    return {**body, "key_version": version}


async def _storm(*requests: Awaitable[Reply]) -> list[Reply]:
    return list(await asyncio.gather(*requests))


async def _warm_every_worker(stack: LocalStack, call: NatsCaller, tenant: str) -> None:
    """Encrypt and sign with version 1 until every worker has done both (its logs say)."""
    for _ in range(20):
        replies = await _storm(*(
            call(subject, _version(PROTECT[subject], 1))
            for subject in WARMED_BY for _ in range(16)))
        assert {reply.code for reply in replies} == {None}
        if all(all(stack.requests_served(tenant, subject.value)) for subject in WARMED_BY):
            return
    pytest.fail("some worker never served version 1: the test proves nothing")


def _served(stack: LocalStack, tenant: str) -> list[int]:
    return [sum(counts) for counts in zip(*(
        stack.requests_served(tenant, subject.value) for subject in PROTECT), strict=True)]


async def test_retire_then_archive_is_honoured_by_every_worker(
    four_workers: LocalStack, call: NatsCaller, tenant: str
) -> None:
    stack = four_workers
    assert len(stack.workers) >= WORKERS
    await generate(call, KEM)
    await generate(call, SIGNATURE)
    await _warm_every_worker(stack, call, tenant)
    sealed = (await call(Subject.KEM_ENCRYPT, _version(PROTECT[Subject.KEM_ENCRYPT], 1))).data
    capsule = (await call(Subject.KEM_ENCAPSULATE, _version(PROTECT[Subject.KEM_ENCAPSULATE],
                                                            1))).data
    wrapped = (await call(Subject.KEM_KEY_WRAP, _version(PROTECT[Subject.KEM_KEY_WRAP], 1))).data
    signed = (await call(Subject.SIGNATURE_SIGN, _version(PROTECT[Subject.SIGNATURE_SIGN],
                                                          1))).data
    recover = {
        Subject.KEM_DECRYPT: {"algorithm": KEM, "ciphertext": sealed["ciphertext"]},
        Subject.KEM_DECAPSULATE: {"algorithm": KEM, "kem_ciphertext": capsule["kem_ciphertext"]},
        Subject.KEM_KEY_UNWRAP: {"algorithm": KEM, "wrapped_key": wrapped["wrapped_key"]},
        Subject.SIGNATURE_VERIFY: {"algorithm": SIGNATURE, "message": b64(MESSAGE),
                                   "signature": signed["signature"]},
    }

    # One request each retires version 1 (and makes version 2 active).
    for algorithm in (KEM, SIGNATURE):
        rotated = await call(Subject.KEYS_ROTATE, {"algorithm": algorithm})
        assert (rotated.data["key_version"], rotated.data["old_key_version"]) == (2, 1)
        retired = await call(Subject.KEYS_RETIRE, {"algorithm": algorithm, "key_version": 1})
        assert retired.data["status"] == "retired"

    # Immediately: no worker protects anything with version 1 any more...
    before = _served(stack, tenant)
    refused = await _storm(*(call(subject, _version(body, 1))
                             for subject, body in PROTECT.items() for _ in range(STORM)))
    assert [reply.code for reply in refused] == ["ERR_FORBIDDEN_001"] * len(refused)
    assert all("retired" in reply.body["error"]["message"] for reply in refused)
    after = _served(stack, tenant)
    assert all(late > early for early, late in zip(before, after, strict=True)), (
        f"not every worker answered the storm: {before} → {after}")
    # ...version 2 does, and version 1 still recovers what it protected.
    fresh = await _storm(*(call(subject, _version(body, 2)) for subject, body in PROTECT.items()))
    assert [reply.code for reply in fresh] == [None] * len(PROTECT)
    recovered = await _storm(*(call(subject, _version(body, 1))
                               for subject, body in recover.items() for _ in range(STORM)))
    assert [reply.code for reply in recovered] == [None] * len(recovered)
    by_subject = dict(zip(recover, recovered[::STORM], strict=True))
    assert unb64(by_subject[Subject.KEM_DECRYPT].data["plaintext"]) == MESSAGE
    assert by_subject[Subject.KEM_DECAPSULATE].data["shared_secret"] == capsule["shared_secret"]
    assert unb64(by_subject[Subject.KEM_KEY_UNWRAP].data["symmetric_key"]) == SECRET_KEY
    assert by_subject[Subject.SIGNATURE_VERIFY].data["valid"] is True

    # Archive: from the reply on, version 1 does nothing on any worker.
    for algorithm in (KEM, SIGNATURE):
        archived = await call(Subject.KEYS_ARCHIVE, {"algorithm": algorithm, "key_version": 1})
        assert archived.data["status"] == "archived"
    closed = await _storm(*(call(subject, _version(body, 1))
                            for requests in (recover, PROTECT)
                            for subject, body in requests.items() for _ in range(STORM)))
    assert [reply.code for reply in closed] == ["ERR_FORBIDDEN_001"] * len(closed)
    assert all("archived" in reply.body["error"]["message"] for reply in closed)


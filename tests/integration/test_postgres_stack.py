"""The worker path on PostgreSQL: four worker processes, one database, one truth.

Runs on the session stack's ``postgres`` instance (four workers on a database made for
the session); every other test using ``stack``/``call`` runs there too. Retire and
archive across workers: ``test_retire_across_workers.py``.
"""

from __future__ import annotations

import asyncio
import base64

import pytest

from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.long]


async def test_four_workers_on_postgres(stack: LocalStack, call: NatsCaller) -> None:
    if stack.backend != "postgresql":
        pytest.skip("PostgreSQL only: the SQLite stack has two workers")
    assert len(stack.workers) == 4
    await call(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
    sealed = await asyncio.gather(*(
        call(Subject.KEM_ENCRYPT, {"plaintext": base64.b64encode(bytes([i])).decode(),
                                   "key_version": 1}) for i in range(40)))
    opened = await asyncio.gather(*(
        call(Subject.KEM_DECRYPT, {"ciphertext": reply.data["ciphertext"], "key_version": 1})
        for reply in sealed))
    assert [base64.b64decode(r.data["plaintext"]) for r in opened] == [
        bytes([i]) for i in range(40)]
    # Twenty rotations at once on four workers: twenty distinct versions, one active.
    rotations = await asyncio.gather(*(
        call(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"}, timeout=60) for _ in range(20)))
    assert sorted(r.data["key_version"] for r in rotations) == list(range(2, 22))
    listed = await call(Subject.KEYS_LIST, {"algorithm": "Kyber768"})
    assert [k["status"] for k in listed.data["keys"]].count("active") == 1
    assert [k["key_version"] for k in listed.data["keys"]] == list(range(1, 22))
    # Every worker served part of it: the database, not a worker's memory, is the truth.
    tenant = await stack.tenant_id(call.api_key or "")
    served = zip(stack.requests_served(tenant, Subject.KEM_ENCRYPT.value),
                 stack.requests_served(tenant, Subject.KEM_DECRYPT.value), strict=True)
    assert all(encrypts + decrypts > 0 for encrypts, decrypts in served)

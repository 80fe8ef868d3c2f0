"""A stored public key that is not its seed's is refused, not served or used.

The seed is sealed under the master key with its tenant, algorithm and version; the
public key column is not. Someone who can write the database but lacks the master key
must not be able to make the service hand out a public key of their own.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import nats
import pytest

from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller
from tests.support.wire import b64

pytestmark = pytest.mark.integration

INTEGRITY = "Stored key material failed its integrity check"


def _swap_in_public_key(database: Path, victim: str, attacker: str) -> None:
    with sqlite3.connect(database) as connection:
        (foreign,) = connection.execute(
            "SELECT public_key FROM pqkms_key_version WHERE tenant_id = ? AND algorithm = ?",
            (attacker, "Kyber768"),
        ).fetchone()
        connection.execute(
            "UPDATE pqkms_key_version SET public_key = ? WHERE tenant_id = ? AND algorithm = ?",
            (foreign, victim, "Kyber768"),
        )


async def test_a_swapped_public_key_is_refused_everywhere(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack")
    await stack.start(workers=1)
    try:
        victim_key = await stack.create_tenant(Plan.PRO)
        attacker_key = await stack.create_tenant(Plan.PRO)
        client = await nats.connect(stack.nats_url)
        victim, attacker = NatsCaller(client, victim_key), NatsCaller(client, attacker_key)
        for caller in (victim, attacker):
            await caller(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
        await victim(Subject.KEYS_GENERATE, {"algorithm": "Dilithium3"})
        victim_id = await stack.tenant_id(victim_key)
        attacker_id = await stack.tenant_id(attacker_key)
        await client.close()
    finally:
        stack.stop()

    _swap_in_public_key(stack.root / "pqkms.db", victim_id, attacker_id)

    stack.nats_port = 0
    await stack.start(workers=1)
    try:
        client = await nats.connect(stack.nats_url)
        victim = NatsCaller(client, victim_key)
        refused = [
            await victim(Subject.KEYS_ACTIVE, {"algorithm": "Kyber768"}),
            await victim(Subject.KEYS_GET, {"algorithm": "Kyber768", "key_version": 1}),
            await victim(Subject.KEYS_LIST, {}),
            await victim(Subject.KEM_ENCRYPT, {"plaintext": b64(b"x"), "key_version": 1}),
        ]
        for reply in refused:
            assert reply.code == "ERR_INTERNAL_001", reply.body
            assert reply.body["error"]["message"] == INTEGRITY
            assert "public_key" not in str(reply.body)
        # The tenant's other keys and the other tenant are unaffected.
        signed = await victim(Subject.SIGNATURE_SIGN, {"message": b64(b"m"), "key_version": 1})
        assert signed.code is None, signed.body
        listed = await NatsCaller(client, attacker_key)(Subject.KEYS_LIST, {})
        assert listed.data["total"] == 1
        await client.close()
    finally:
        stack.stop()
    logs = b"".join(path.read_bytes() for path in stack.worker_logs.values())
    assert b"key_public_key_mismatch" in logs

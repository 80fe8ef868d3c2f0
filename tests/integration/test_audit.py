"""The audit trail end to end: two worker processes, SQLite, a real nats-server.

Every request leaves one record (tenant, operation, outcome; never data) in the
database and in ``PQKMS_AUDIT``; ``pqkms audit verify`` passes on the intact log and
names the chain and seq of an edited or deleted row; a request whose record cannot be
written fails with ``ERR_SERVICE_001`` and no result.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from pqkms.client import PqkmsClient
from schemas.algorithms import Plan
from schemas.audit import AUDIT_STREAM
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller, Reply
from worker.audit.stream import read_stream
from worker.audit.verify import verify_audit_log
from worker.store.audit_log import AuditLog

pytestmark = [pytest.mark.integration, pytest.mark.long]

SECRET = b"audit-test plaintext that must never be stored"
RECORD_FIELDS = {
    "schema_version", "chain_id", "seq", "kind", "worker_id", "recorded_at", "operation",
    "request_id", "tenant_id", "algorithm", "key_version", "outcome", "items", "duration_us",
    "prev_hash", "record_hash",
}


@pytest.fixture(scope="module")
async def audit_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    local = LocalStack(Path(tmp_path_factory.mktemp("audit")))
    try:
        await local.start(workers=2)
        yield local
    finally:
        local.stop()


@pytest.fixture
async def caller(audit_stack: LocalStack) -> AsyncIterator[NatsCaller]:
    api_key = await audit_stack.create_tenant(Plan.ENTERPRISE)
    client = await nats.connect(audit_stack.nats_servers)
    try:
        yield NatsCaller(client, api_key)
    finally:
        await client.close()


@contextmanager
def database(stack: LocalStack) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(stack.root / "pqkms.db", isolation_level=None, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        yield connection
    finally:
        connection.close()


@contextmanager
def audit_log_frozen(stack: LocalStack) -> Iterator[None]:
    """Every insert into the audit table fails while inside."""
    with database(stack) as db:
        db.execute("CREATE TRIGGER audit_frozen BEFORE INSERT ON pqkms_audit_record "
                   "BEGIN SELECT RAISE(ABORT, 'audit log frozen'); END")
    try:
        yield
    finally:
        with database(stack) as db:
            db.execute("DROP TRIGGER audit_frozen")


def record_of(stack: LocalStack, request_id: str) -> dict[str, Any]:
    with database(stack) as db:
        rows = db.execute("SELECT * FROM pqkms_audit_record WHERE request_id = ?",
                          (request_id,)).fetchall()
    assert len(rows) == 1, f"{len(rows)} records for {request_id}"
    return dict(rows[0])


async def verify(stack: LocalStack) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pqkms", "audit", "verify", env=stack.env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, output.decode()


async def encrypt(caller: NatsCaller, request_id: str, key_version: int = 1) -> Reply:
    return await caller(Subject.KEM_ENCRYPT,
                        {"plaintext": base64.b64encode(SECRET).decode(),
                         "key_version": key_version},
                        headers={"X-Request-ID": request_id})


async def generate_kyber(caller: NatsCaller) -> None:
    """A Kyber768 key for the caller. A worker whose trail failed in an earlier test
    (the stream deleted) refuses a change until a record of its gets through: retried."""
    for _ in range(10):
        reply = await caller(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"})
        if reply.code is None:
            return
        assert reply.code == "ERR_SERVICE_001", reply.body
    raise AssertionError("key generation kept failing")


def new_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


async def test_every_request_is_audited_and_verify_detects_tampering(
    audit_stack: LocalStack, caller: NatsCaller
) -> None:
    ids = {name: new_id(name) for name in ("generate", "encrypt", "unknown", "no-auth")}
    generated = await caller(Subject.KEYS_GENERATE, {"algorithm": "Kyber768"},
                             headers={"X-Request-ID": ids["generate"]})
    assert generated.code is None
    with database(audit_stack) as db:
        tenant_id = db.execute("SELECT tenant_id FROM pqkms_api_key WHERE key_hash = ?",
                               (hashlib.sha256(caller.api_key.encode()).hexdigest(),)
                               ).fetchone()[0]
    ok = await encrypt(caller, ids["encrypt"])
    missing = await encrypt(caller, ids["unknown"], key_version=99)
    anonymous = NatsCaller(caller.client, "qph_not-a-key")
    refused = await anonymous(Subject.KEM_ENCRYPT, {}, headers={"X-Request-ID": ids["no-auth"]})
    assert (ok.code, missing.code, refused.code) == (None, "ERR_KEM_005", "ERR_AUTH_001")

    expected = {
        "generate": ("pqkms.v1.kms.keys.generate", tenant_id, "OK", "Kyber768"),
        "encrypt": ("pqkms.v1.kem.encrypt", tenant_id, "OK", "Kyber768"),
        "unknown": ("pqkms.v1.kem.encrypt", tenant_id, "ERR_KEM_005", None),
        "no-auth": ("pqkms.v1.kem.encrypt", None, "ERR_AUTH_001", None),
    }
    for name, (operation, tenant, outcome, algorithm) in expected.items():
        row = record_of(audit_stack, ids[name])
        assert (row["operation"], row["tenant_id"], row["outcome"], row["kind"]) == \
            (operation, tenant, outcome, "request"), name
        if algorithm:
            assert row["algorithm"] == algorithm
    assert record_of(audit_stack, ids["encrypt"])["key_version"] == 1

    # The stream holds the same records, and nothing but the record fields.
    client = await nats.connect(audit_stack.nats_servers)
    try:
        bodies = await read_stream(client)
    finally:
        await client.close()
    assert bodies is not None
    messages = [orjson.loads(body) for body in bodies]
    assert all(set(message) == RECORD_FIELDS for message in messages)
    streamed = {m["request_id"]: m for m in messages if m["request_id"] in ids.values()}
    encrypt_row = record_of(audit_stack, ids["encrypt"])
    assert streamed[ids["encrypt"]]["record_hash"] == encrypt_row["record_hash"]
    secrets = [base64.b64encode(SECRET), SECRET, ok.data["ciphertext"].encode(),
               caller.api_key.encode()]
    everything = b"".join(bodies) + audit_stack.db_path_bytes()
    assert not any(secret in everything for secret in secrets)

    code, output = await verify(audit_stack)
    assert code == 0, output
    assert "audit log intact" in output

    # An edited row: verify fails and names its chain and seq.
    chain, seq = encrypt_row["chain_id"], encrypt_row["seq"]
    with database(audit_stack) as db:
        db.execute("UPDATE pqkms_audit_record SET outcome = 'ERR_KEM_005' "
                   "WHERE chain_id = ? AND seq = ?", (chain, seq))
    code, output = await verify(audit_stack)
    assert code == 1, output
    assert f"chain {chain} seq {seq}: content does not match its record_hash" in output

    # Put it back, then delete it.
    with database(audit_stack) as db:
        db.execute("UPDATE pqkms_audit_record SET outcome = 'OK' "
                   "WHERE chain_id = ? AND seq = ?", (chain, seq))
    assert (await verify(audit_stack))[0] == 0
    with database(audit_stack) as db:
        db.execute("DELETE FROM pqkms_audit_record WHERE chain_id = ? AND seq = ?",
                   (chain, seq))
    code, output = await verify(audit_stack)
    assert code == 1, output
    # (The last record of its open chain, unless the other worker served the requests
    # after it: missing from the chain, or from the chain's tail as the stream shows.)
    assert f"error: chain {chain} seq {seq}: record {seq} " in output

    with database(audit_stack) as db:
        columns = ", ".join(encrypt_row)
        marks = ", ".join("?" for _ in encrypt_row)
        db.execute(f"INSERT INTO pqkms_audit_record ({columns}) VALUES ({marks})",
                   tuple(encrypt_row.values()))
    assert (await verify(audit_stack))[0] == 0


async def test_a_request_whose_record_cannot_be_written_fails(
    audit_stack: LocalStack, caller: NatsCaller
) -> None:
    await generate_kyber(caller)
    with audit_log_frozen(audit_stack):
        for _ in range(4):  # both workers
            refused = await encrypt(caller, new_id("frozen"))
            assert refused.code == "ERR_SERVICE_001"
            assert "data" not in refused.body
    for _ in range(4):
        assert (await encrypt(caller, new_id("thawed"))).code is None

    # The stream deleted under the running workers: the next request fails, the stream
    # is created again and the records the request wrote are published on retry.
    client = await nats.connect(audit_stack.nats_servers)
    try:
        await client.jetstream().delete_stream(AUDIT_STREAM)
        refused = await encrypt(caller, new_id("no-stream"))
        assert refused.code == "ERR_SERVICE_001" and "data" not in refused.body
        for _ in range(20):
            if (await encrypt(caller, new_id("stream-back"))).code is None:
                break
        else:
            raise AssertionError("requests keep failing after the stream was deleted")
        info = await client.jetstream().stream_info(AUDIT_STREAM)
        assert info.state.messages >= 2
    finally:
        await client.close()

    code, output = await verify(audit_stack)
    assert code == 0, output  # records written before the deletion are only notes


async def test_a_change_is_not_made_while_the_trail_fails(
    audit_stack: LocalStack, caller: NatsCaller
) -> None:
    await generate_kyber(caller)
    with audit_log_frozen(audit_stack):
        # Enough requests that both workers (a random pick each) have seen a write fail.
        for _ in range(20):
            assert (await encrypt(caller, new_id("frozen"))).code == "ERR_SERVICE_001"
        rotate = await caller(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"})
        assert rotate.code == "ERR_SERVICE_001"
        assert "was not made" in rotate.body["error"]["message"]
    # Once a record is written again, the rotation goes through (a worker still failing
    # refuses it once more: its own record is what clears the state).
    for _ in range(10):
        rotated = await caller(Subject.KEYS_ROTATE, {"algorithm": "Kyber768"})
        if rotated.code is None:
            break
        assert "was not made" in rotated.body["error"]["message"]
    else:
        raise AssertionError("a rotation kept being refused after the trail recovered")
    # The refused rotations made no version: this one rotates 1 into 2.
    assert (rotated.data["old_key_version"], rotated.data["key_version"]) == (1, 2)


async def test_a_flood_without_api_keys_is_audited_within_a_budget(
    audit_stack: LocalStack, caller: NatsCaller,
) -> None:
    """Requests without a valid API key: each worker audits up to 20 a second (bursts of
    100) and counts the rest, so that nobody can fill the trail; requests of tenants are
    all audited, and the chains stay intact."""
    prefix = f"flood-{uuid.uuid4().hex[:8]}-"
    anonymous = NatsCaller(caller.client, None)
    started = asyncio.get_running_loop().time()
    replies = await asyncio.gather(*(
        anonymous(Subject.KEM_ENCRYPT, {}, headers={"X-Request-ID": f"{prefix}{n}"})
        for n in range(600)))
    elapsed = asyncio.get_running_loop().time() - started
    assert {reply.code for reply in replies} == {"ERR_AUTH_001"}  # all answered as always
    await generate_kyber(caller)
    tenant_ids = [f"{prefix}tenant-{n}" for n in range(20)]
    for request_id in tenant_ids:
        assert (await encrypt(caller, request_id)).code is None
    with database(audit_stack) as db:
        audited = db.execute("SELECT count(*) FROM pqkms_audit_record WHERE request_id LIKE ? "
                             "AND tenant_id IS NULL", (f"{prefix}%",)).fetchone()[0]
    workers = len(audit_stack.workers)
    assert 0 < audited <= workers * (100 + 20 * (elapsed + 1))
    for request_id in tenant_ids:
        record_of(audit_stack, request_id)
    logs = "".join(path.read_text() for path in audit_stack.worker_logs.values())
    assert '"audit_unauthenticated_skipped"' in logs
    code, output = await verify(audit_stack)
    assert code == 0, output


async def test_verify_finds_a_key_version_created_without_its_record(
    audit_stack: LocalStack, caller: NatsCaller,
) -> None:
    # A worker killed between a key change's commit and its audit record's leaves a
    # version no record tells of; the chains themselves stay intact.
    await generate_kyber(caller)
    tenant = await audit_stack.tenant_id(caller.api_key or "")
    with database(audit_stack) as db:
        row = dict(db.execute("SELECT * FROM pqkms_key_version WHERE tenant_id = ?",
                              (tenant,)).fetchone())
        row.update(version=999, status="retired")
        row.pop("id")
        columns = ", ".join(row)
        db.execute(f"INSERT INTO pqkms_key_version ({columns}) VALUES "
                   f"({', '.join('?' for _ in row)})", tuple(row.values()))
    later = datetime.now(UTC) + timedelta(minutes=5)  # past the grace for commits in flight
    log = AuditLog.connect(f"sqlite+aiosqlite:///{audit_stack.root / 'pqkms.db'}")
    try:
        report = await verify_audit_log(log, None, now=later)
    finally:
        await log.close()
    unrecorded = [f.line() for f in report.errors if f.scope == "key"]
    assert len(unrecorded) == 1, unrecorded
    assert unrecorded[0].startswith(f"error: key {tenant}/Kyber768: version 999 (created ")
    assert "has no audit record of its creation" in unrecorded[0]
    with database(audit_stack) as db:
        db.execute("DELETE FROM pqkms_key_version WHERE tenant_id = ? AND version = 999",
                   (tenant,))
    code, output = await verify(audit_stack)
    assert code == 0, output


async def test_job_chunks_are_audited_and_a_clean_stop_closes_every_chain(
    audit_stack: LocalStack,
) -> None:
    api_key = await audit_stack.create_tenant(Plan.ENTERPRISE)
    async with await PqkmsClient.connect(audit_stack.nats_url, api_key) as client:
        await client.generate_key("Kyber768")
        items = [{"plaintext": base64.b64encode(SECRET).decode()} for _ in range(5)]
        job_id = await client.submit_job("kem.encrypt", items, chunk_items=2, key_version=1)
        await client.wait_for_job(job_id, poll_seconds=0.1, timeout=60)
    with database(audit_stack) as db:
        chunks = db.execute("SELECT * FROM pqkms_audit_record WHERE kind = 'job_chunk' "
                            "AND operation = 'pqkms.v1.kem.encrypt.batch'").fetchall()
    assert sorted(row["items"] for row in chunks) == [1, 2, 2]
    assert {row["outcome"] for row in chunks} == {"OK"}

    audit_stack.stop_workers()
    code, output = await verify(audit_stack)
    assert code == 0, output
    assert ", 0 open;" in output
    with database(audit_stack) as db:
        open_chains = db.execute(
            "SELECT count(*) FROM pqkms_audit_chain WHERE closed_at IS NULL").fetchone()[0]
    assert open_chains == 0

"""``pqkms audit archive`` and ``verify-archive`` end to end: a worker process serving
requests on SQLite and a real nats-server, the commands run as an operator would run
them, while the worker goes on writing its chain. The archives that move records run
the command's own code in-process, judged as a minute later (a cut-off must be 60 s
old), instead of waiting a minute."""

from __future__ import annotations

import asyncio
import base64
import gzip
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest

from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller
from worker.audit.archive import archive_from_settings
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.long]

SECRET = b"archive-test plaintext that must never be stored"
LONG_AGO = "2020-01-01T00:00:00Z"


def _settings(stack: LocalStack) -> Settings:
    """The settings ``pqkms audit archive`` would read from the stack's environment."""
    return Settings(nats_url=stack.nats_url, database_url=stack.db_url, data_dir=stack.root)


def _a_minute_later() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=61)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[LocalStack]:
    local = LocalStack(tmp_path / "stack")
    local.root.mkdir()
    try:
        await local.start(workers=1)
        yield local
    finally:
        local.stop()


async def _pqkms(stack: LocalStack, *args: str,
                 **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pqkms", "audit", *args, env={**stack.env(), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


async def _encrypt(caller: NatsCaller, count: int) -> list[str]:
    ids = [f"archive-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    for request_id in ids:
        reply = await caller(Subject.KEM_ENCRYPT,
                             {"plaintext": base64.b64encode(SECRET).decode(), "key_version": 1},
                             headers={"X-Request-ID": request_id})
        assert reply.code is None, reply.body
    return ids


def _stored(stack: LocalStack, request_ids: list[str]) -> int:
    connection = sqlite3.connect(stack.root / "pqkms.db", timeout=30)
    try:
        marks = ", ".join("?" for _ in request_ids)
        return int(connection.execute(
            f"SELECT count(*) FROM pqkms_audit_record WHERE request_id IN ({marks})",
            request_ids).fetchone()[0])
    finally:
        connection.close()


async def test_an_operator_archives_a_past_period_while_the_worker_runs(
    stack: LocalStack, tmp_path: Path,
) -> None:
    api_key = await stack.tenant_with_key()
    client = await nats.connect(stack.nats_servers)
    caller = NatsCaller(client, api_key)
    archives = tmp_path / "archives"
    archives.mkdir()
    first, second = archives / "audit-1.jsonl.gz", archives / "audit-2.jsonl"
    try:
        old = await _encrypt(caller, 5)
        await asyncio.sleep(0.05)
        cut = datetime.now(UTC)
        await asyncio.sleep(0.05)
        recent = await _encrypt(caller, 3)
        # A cut-off must be older than the key-creation check's grace (60 s): key
        # versions younger than that are not judged yet.
        code, out, err = await _pqkms(stack, "archive", "--before", cut.isoformat(),
                                      "--out", str(first))
        assert code == 1 and "less than 60 s ago" in err, out + err
        # The command's own path, judged as a minute later rather than waiting for it.
        outcome = await archive_from_settings(_settings(stack), first, cut.isoformat(),
                                              now=_a_minute_later())
        report = "\n".join(outcome.lines())
        assert report.startswith("archived ") and "of 1 chain(s) (0 whole)" in report, report
        assert (_stored(stack, old), _stored(stack, recent)) == (0, 3)
        with gzip.open(first) as archived:
            content = archived.read()
        assert all(request_id.encode() in content for request_id in old)
        for secret in (SECRET, base64.b64encode(SECRET), api_key.encode()):
            assert secret not in content

        await _encrypt(caller, 2)  # the worker's chain goes on after the archive
        code, out, err = await _pqkms(stack, "verify")
        assert code == 0, out + err
        assert "archived: " in out and "; 1 archive run(s) in the stream" in out, out
        assert "audit log intact" in out, out

        # Refused, with nothing written: a future cut-off, a file that exists.
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        code, out, err = await _pqkms(stack, "archive", "--before", future, "--out",
                                      str(second))
        assert (code, out) == (1, ""), err
        assert "--before" in err and "is in the future" in err
        code, out, err = await _pqkms(stack, "archive", "--before", LONG_AGO,
                                      "--out", str(first))
        assert code == 1 and "is never overwritten" in err, out + err
        # Without the stream there is nothing to attest the archive to.
        code, out, err = await _pqkms(stack, "archive", "--before", LONG_AGO,
                                      "--out", str(second), PQKMS_NATS_URL="nats://127.0.0.1:9")
        assert code == 1 and "the archive needs the PQKMS_AUDIT stream" in err, out + err
        assert not second.exists() and not list(archives.glob("*.partial"))
        # Nothing old enough: exit 0 (a cron job's quiet day), no file.
        code, out, err = await _pqkms(stack, "archive", "--before", LONG_AGO,
                                      "--out", str(second))
        assert code == 0 and out.startswith("nothing archived: no record"), out + err
        assert not second.exists()

        # A clean stop closes the chain; a second archive goes on from the first.
        stack.stop_workers()
        outcome = await archive_from_settings(_settings(stack), second,
                                              datetime.now(UTC).isoformat(),
                                              now=_a_minute_later())
        assert outcome.archived and outcome.whole_chains == 2, outcome.lines()
        code, out, err = await _pqkms(stack, "verify")
        assert code == 0, out + err
        assert "; 2 archive run(s) in the stream" in out and ", 0 open;" in out, out

        code, out, err = await _pqkms(stack, "verify-archive", str(first), str(second))
        assert code == 0, out + err
        assert out.splitlines()[-1].startswith("archive intact: 2 file(s), "), out
        code, out, err = await _pqkms(stack, "verify-archive", str(second), str(first))
        assert code == 1, out + err
        code, out, err = await _pqkms(stack, "verify-archive", str(archives / "missing"))
        assert code == 1 and "no such archive file" in err, out + err
    finally:
        await client.close()

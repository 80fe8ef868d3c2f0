"""Floods of requests without a valid API key: shed, not queued, and logged in a few lines.

A review flooded ``pqkms up`` for 30 s with requests that had random API keys and no reply
subject: the workers queued a million of them, spent the next 15 minutes looking each
key up, real requests of that subject timed out meanwhile, and FastStream wrote a
traceback per message nats-py dropped (600 MB of logs).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import orjson
import pytest

from schemas.subjects import Subject
from tests.support.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.long]


@pytest.fixture(scope="module")
async def lone_worker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    local = LocalStack(Path(tmp_path_factory.mktemp("floods")))
    try:
        await local.start(workers=1)
        yield local
    finally:
        local.stop()


def _log_lines(stack: LocalStack) -> list[dict[str, object]]:
    lines = []
    for path in stack.worker_logs.values():
        for line in path.read_bytes().splitlines():
            try:
                lines.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a line being written, or not JSON (a traceback's)
    return lines


async def _flood(client: nats.NATS, count: int, reply: str | None) -> None:
    for _ in range(count):
        await client.publish(Subject.KEYS_ACTIVE.value, b"{}", reply=reply or "",
                             headers={"X-API-Key": "qph_" + secrets.token_urlsafe(32)})
    await client.flush()


async def _active_key_answers(client: nats.NATS, api_key: str) -> bytes:
    """The answer to a real request, asked again while a flood's backlog sheds it."""
    for _ in range(60):
        try:
            reply = await client.request(Subject.KEYS_ACTIVE.value,
                                         b'{"algorithm": "Kyber768"}',
                                         headers={"X-API-Key": api_key}, timeout=2)
        except nats.errors.TimeoutError:
            continue
        return reply.data
    raise AssertionError("no answer in 120 s")


async def test_requests_without_a_reply_subject_are_dropped_before_any_work(
    lone_worker: LocalStack,
) -> None:
    api_key = await lone_worker.create_tenant()
    client = await nats.connect(lone_worker.nats_url)
    try:
        await _flood(client, 5000, reply=None)
        answer = orjson.loads(await _active_key_answers(client, api_key))
        assert answer["error"]["code"] == "ERR_KMS_003"  # no key yet: looked up, answered
    finally:
        await client.close()
    await asyncio.sleep(1.0)  # the log sink's flush
    lines = _log_lines(lone_worker)
    refused = [line for line in lines if line.get("event") == "request"
               and line.get("outcome") == "ERR_AUTH_001"]
    assert refused == []  # not one of the 5000 was authenticated, answered or audited
    dropped = [line for line in lines if line.get("event") == "request_without_reply_dropped"]
    assert 1 <= len(dropped) <= 10
    assert dropped[0]["subject"] == Subject.KEYS_ACTIVE.value


async def test_a_backlog_past_its_limit_is_shed_and_counted_in_a_few_lines(
    lone_worker: LocalStack,
) -> None:
    api_key = await lone_worker.create_tenant()
    client = await nats.connect(lone_worker.nats_url)
    try:
        replies = client.new_inbox()
        await client.subscribe(replies + ".*")  # answers nobody reads, as in a flood
        await _flood(client, 40_000, reply=replies + ".x")
        answer = orjson.loads(await _active_key_answers(client, api_key))
        assert answer["error"]["code"] == "ERR_KMS_003"
    finally:
        await client.close()
    await asyncio.sleep(1.0)
    text = "".join(path.read_text(errors="replace") for path in lone_worker.worker_logs.values())
    assert "SlowConsumerError" not in text  # no traceback per dropped message
    lines = _log_lines(lone_worker)
    shed = [line for line in lines if line.get("event") == "nats_slow_consumer"]
    assert shed, "the flood stayed under the backlog limit: nothing to check"
    assert len(shed) <= 60  # at most one a second
    assert sum(int(str(line["count"])) for line in shed) > 0

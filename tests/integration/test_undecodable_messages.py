"""Bytes that are not UTF-8 in a request's reply subject or header block, sent by any
client, must not stop a worker from reading its connection (worker/nats_decoding.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import orjson
import pytest

from schemas.subjects import Subject
from tests.support.stack import LocalStack
from worker.handlers.ordered_flush import send_pings_behind_queued_commands

pytestmark = pytest.mark.integration

WORKERS = 2
# Each kind sent to the queue group this often: every worker gets some (a miss:
# 2 in 2^40).
BAD_MESSAGES = 40
PINGS = 60


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    local = LocalStack(Path(tmp_path_factory.mktemp("undecodable")))
    try:
        await local.start(workers=WORKERS)
        yield local
    finally:
        local.stop()


def _send_raw(port: int, frames: list[bytes]) -> None:
    """Speak the NATS protocol by hand: nats-py would refuse to send these bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                     b'"protocol":1}\r\n' + b"".join(frames) + b"PING\r\n")
        received = b""
        while b"PONG" not in received:
            received += sock.recv(4096)


def _bad_reply(subject: str) -> bytes:
    return f"PUB {subject} _INBOX.".encode() + b"\xff\xfe 2\r\n{}\r\n"


def _bad_headers(subject: str, reply: str) -> bytes:
    block = b"NATS/1.0 \xff\xfe\xfd\r\n\r\n"
    payload = b"{}"
    head = f"HPUB {subject} {reply} {len(block)} {len(block) + len(payload)}\r\n".encode()
    return head + block + payload + b"\r\n"


async def test_workers_keep_reading_after_undecodable_messages(stack: LocalStack) -> None:
    client = await nats.connect(stack.nats_servers)
    send_pings_behind_queued_commands(client)  # the flush below waits for the SUB
    try:
        answers = await client.subscribe("_INBOX.undecodable.*")
        await client.flush()  # (the replies come through another connection)
        frames = [_bad_reply(Subject.HEALTH_PING.value)] * BAD_MESSAGES  # FastStream's path
        frames += [_bad_reply(Subject.KEM_ENCRYPT.value)] * BAD_MESSAGES  # the direct path
        frames += [_bad_headers(Subject.KEM_ENCRYPT.value, f"_INBOX.undecodable.{n}")
                   for n in range(BAD_MESSAGES)]
        await asyncio.to_thread(_send_raw, stack.nats_port, frames)
        # A header block that cannot be read counts as none: no API key, a 401.
        for _ in range(BAD_MESSAGES):
            reply = await answers.next_msg(timeout=10)
            assert orjson.loads(reply.data)["error"]["code"] == "ERR_AUTH_001"
        # And every worker still answers.
        seen: set[str] = set()
        for _ in range(PINGS):
            reply = await client.request(Subject.HEALTH_PING.value, b"", timeout=5)
            seen.add(orjson.loads(reply.data)["data"]["worker"])
        assert len(seen) == WORKERS
    finally:
        await client.close()
    assert all(worker.poll() is None for worker in stack.workers)

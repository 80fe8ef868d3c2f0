"""A worker stopped with SIGTERM under load loses no request.

Two workers share the queue group; clients keep many requests in flight (single and
batch encryptions on the direct data plane, key reads on a FastStream subscriber) while
one worker is stopped the way a deploy stops it. Every request sent before, during and
after the stop must be answered, by one worker or the other, within its timeout: the
stopping worker leaves each subject without dropping what NATS has already routed to it
(worker/handlers/graceful_stop.py). Before that, 4 stops in 5 lost 3-28 requests here.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from pqkms.client import PqkmsClient
from schemas.algorithms import Plan
from schemas.subjects import Subject
from tests.support.stack import LocalStack, NatsCaller
from tests.support.wire import b64

pytestmark = pytest.mark.integration

SINGLE_LOOPS = 200
BATCH_LOOPS = 4
KEY_LOOPS = 16  # a FastStream-served subject
BATCH_ITEMS = 50
REQUEST_TIMEOUT = 8.0


@pytest.fixture
async def two_workers(tmp_path: Path) -> AsyncIterator[LocalStack]:
    stack = LocalStack(tmp_path / "stack")
    try:
        await stack.start(workers=2)
        yield stack
    finally:
        stack.stop()


async def _load(caller: NatsCaller, subject: Subject, body: dict[str, object],
                until: asyncio.Event, outcomes: Counter[str]) -> None:
    while not until.is_set():
        try:
            reply = await caller(subject, body, timeout=REQUEST_TIMEOUT)
            outcomes[reply.code or "OK"] += 1
        except nats.errors.Error as exc:
            outcomes[f"{subject.value}: {type(exc).__name__}"] += 1


async def test_a_worker_stopped_under_load_drops_no_request(two_workers: LocalStack) -> None:
    api_key = await two_workers.create_tenant(Plan.ENTERPRISE)
    client = await PqkmsClient.connect(two_workers.nats_url, api_key)
    connection = await nats.connect(two_workers.nats_url)
    caller = NatsCaller(connection, api_key)
    outcomes: Counter[str] = Counter()
    stop_load = asyncio.Event()
    try:
        await client.generate_key("Kyber768")
        single = {"plaintext": b64(b"graceful"), "key_version": 1}
        batch = {"key_version": 1,
                 "items": [{"plaintext": b64(f"item {n}".encode())} for n in range(BATCH_ITEMS)]}
        loops = [_load(caller, Subject.KEM_ENCRYPT, single, stop_load, outcomes)
                 for _ in range(SINGLE_LOOPS)]
        loops += [_load(caller, Subject.KEM_ENCRYPT_BATCH, batch, stop_load, outcomes)
                  for _ in range(BATCH_LOOPS)]
        loops += [_load(caller, Subject.KEYS_ACTIVE, {"algorithm": "Kyber768"}, stop_load,
                        outcomes) for _ in range(KEY_LOOPS)]
        load = asyncio.gather(*loops)
        await asyncio.sleep(1.5)
        assert outcomes["OK"] > 0, outcomes
        stopping = two_workers.workers[0]
        stopping.terminate()
        exit_code = await asyncio.to_thread(stopping.wait, 30)
        served_after_stop = outcomes["OK"]
        await asyncio.sleep(1.5)
        stop_load.set()
        await load
    finally:
        stop_load.set()
        await connection.close()
        await client.close()
    assert exit_code == 0, two_workers.exit_report(stopping)
    assert outcomes["OK"] > served_after_stop, "the other worker kept answering"
    assert set(outcomes) == {"OK"}, outcomes

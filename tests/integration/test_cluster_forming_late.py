"""Workers started before their NATS cluster has a JetStream leader catch up with it.

compose.yaml starts the workers beside a three-node cluster, so their first JetStream
requests can meet a cluster still electing its leader (503). They must not settle for
per-worker rate limits for the rest of their lives: until the shared bucket is reached
they refuse rate-limited plans with 503 (nothing passes unlimited), then share it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import nats
import pytest

from schemas.algorithms import Plan
from schemas.errors import ErrorCode
from schemas.subjects import Subject
from tests.support.cluster import NatsCluster
from tests.support.stack import LocalStack, NatsCaller

# serial: a JetStream cluster electing its leaders beside another test file
# (pytest-xdist) can take longer than these waits allow.
pytestmark = [pytest.mark.integration, pytest.mark.serial]

RATE_PER_SECOND = 5
BURST = 10
SIMULTANEOUS = 80


def _log_lines(stack: LocalStack, event: bytes) -> int:
    return sum(path.read_bytes().count(event) for path in stack.worker_logs.values())


async def test_workers_share_rate_limits_once_the_cluster_forms(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "nats")
    first, *others = cluster.nodes
    stack = LocalStack(tmp_path / "stack", external_nats=[first.url], extra_env={
        "PQKMS_JETSTREAM_REPLICAS": "3",
        "PQKMS_PRO_RATE_PER_SECOND": str(RATE_PER_SECOND),
        "PQKMS_PRO_BURST": str(BURST),
    })
    try:
        cluster.start_node(first)  # alone: no quorum, so no JetStream leader yet
        await stack.start(workers=2)
        api_key = await stack.create_tenant(Plan.PRO)
        assert _log_lines(stack, b"rate_limits_unreachable") == 2
        assert _log_lines(stack, b"rate_limits_not_shared") == 0

        client = await nats.connect(first.url)
        caller = NatsCaller(client, api_key)
        refused = await caller(Subject.KEYS_LIST, {})
        assert refused.code == ErrorCode.SERVICE_UNAVAILABLE.value, refused.body

        for node in others:
            cluster.start_node(node)
        deadline = time.monotonic() + 60
        while _log_lines(stack, b"rate_limits_shared") < 2:
            assert time.monotonic() < deadline, "workers never reached the shared bucket"
            await asyncio.sleep(0.2)

        # Both workers now take from one bucket: a burst gets about BURST through in
        # all, not BURST per worker.
        started = time.monotonic()
        replies = await asyncio.gather(*(
            caller(Subject.KEYS_LIST, {}) for _ in range(SIMULTANEOUS)
        ))
        elapsed = time.monotonic() - started
        outcomes = Counter(reply.code for reply in replies)
        allowed = BURST + RATE_PER_SECOND * elapsed + 2
        assert outcomes[None] <= allowed, (outcomes, elapsed)
        assert outcomes[None] + outcomes[ErrorCode.RATE_LIMITED.value] == SIMULTANEOUS
        await client.close()

        # The key events stream was created once JetStream came up.
        js_client = await nats.connect(first.url)
        info = await js_client.jetstream().stream_info("PQKMS_KEY_EVENTS")
        assert info.config.num_replicas == 3
        await js_client.close()
    finally:
        stack.stop()
        cluster.stop()

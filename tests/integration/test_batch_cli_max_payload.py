"""``pqkms batch`` against a nats-server with its own default ``max_payload`` (1 MiB),
smaller than pqkms's message limit: chunks are cut for the server's limit, as the Python
client cuts them (a resume cuts for the limit recorded in the state file instead:
tests/integration/test_batch_cli.py)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pqkms.client import DEFAULT_MESSAGE_LIMIT, PqkmsClient
from tests.support.stack import LocalStack

pytestmark = pytest.mark.integration

SERVER_MAX_PAYLOAD = 1024 * 1024  # nats-server's default
ITEMS = 400
# 1000-byte plaintexts: 400 results could reach ~1.23 MB, over the server's limit but
# within pqkms's 1 463 637 bytes, so one chunk of 400 would be refused.
PLAINTEXT = b"x" * 1000


@pytest.fixture(scope="module")
async def small_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    local = LocalStack(Path(tmp_path_factory.mktemp("batch-max-payload")),
                       nats_max_payload=SERVER_MAX_PAYLOAD)
    try:
        await local.start(workers=1)
        yield local
    finally:
        local.stop()


def run_batch(stack: LocalStack, api_key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pqkms", "batch", "encrypt", *args, "--key-version", "1",
         "--nats-url", stack.nats_url],
        env={**os.environ, "PQKMS_API_KEY": api_key}, capture_output=True, text=True,
        timeout=120, check=False)


async def test_chunks_are_cut_for_the_servers_max_payload(small_stack: LocalStack,
                                                         tmp_path: Path) -> None:
    api_key = await small_stack.tenant_with_key()
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(
        json.dumps({"plaintext": base64.b64encode(PLAINTEXT).decode(), "reference": str(n)})
        + "\n" for n in range(ITEMS)))
    done = run_batch(small_stack, api_key, "--in", str(source), "--out", str(out),
                     "--job-id", "server-limit", "--keep-job")
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reference"] for r in results] == [str(n) for n in range(ITEMS)]
    assert all("data" in r for r in results)
    async with await PqkmsClient.connect(small_stack.nats_url, api_key) as client:
        assert client.fitting_message_limit == SERVER_MAX_PAYLOAD < DEFAULT_MESSAGE_LIMIT
        status = await client.job_status("server-limit")
    assert status["total_chunks"] == 2 and status["items_done"] == ITEMS


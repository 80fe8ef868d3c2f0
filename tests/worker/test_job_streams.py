"""JobStreams on a real nats-server of its own (no worker)."""

from __future__ import annotations

from pathlib import Path

import nats

from pqkms.nats_embedded import start_nats_server
from worker.bulk_config import BulkSettings
from worker.jobs.streams import JobStreams


async def test_no_results_stream_means_no_results(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "nats")
    client = await nats.connect(server.url)
    try:
        streams = JobStreams(lambda: client, BulkSettings())
        assert not await streams.has_results("tenant-a", "job-1", 0)  # before any stream
        await streams.ensure()
        assert not await streams.has_results("tenant-a", "job-1", 0)
    finally:
        await client.close()
        server.stop()

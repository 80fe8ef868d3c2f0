"""JobStreams on a real nats-server of its own (no worker)."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from pqkms.nats_embedded import start_nats_server
from schemas.jobs import JOB_RESULTS_STREAM, results_subject
from worker.bulk_config import BulkSettings
from worker.jobs.streams import JobStreams


async def test_no_results_stream_means_no_results(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "nats")
    client = await nats.connect(server.url)
    try:
        streams = JobStreams(lambda: client, BulkSettings())
        assert not await streams.has_results("tenant-a", "job-1", 0, None)  # before any stream
        await streams.ensure()
        assert not await streams.has_results("tenant-a", "job-1", 0, None)
    finally:
        await client.close()
        server.stop()


async def test_a_job_entry_is_read_from_the_bucket_and_a_missing_bucket_is_an_error(
        tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "nats")
    client = await nats.connect(server.url)
    try:
        streams = JobStreams(lambda: client, BulkSettings())
        with pytest.raises(NotFoundError):  # no bucket: not "the job was deleted"
            await streams.job_entry("tenant-a", "job-1")
        bucket = await streams.ensure()
        assert await streams.job_entry("tenant-a", "job-1") is None
        await bucket.put("tenant-a.job-1", b'{"run": "r1"}')
        assert await streams.job_entry("tenant-a", "job-1") == {"run": "r1"}
        assert await streams.job_entry("tenant-b", "job-1") is None
        await bucket.delete("tenant-a.job-1")  # a delete marker counts as no entry
        assert await streams.job_entry("tenant-a", "job-1") is None
        await bucket.put("tenant-a.job-1", b'{"run": "r2"}')
        await streams.purge_job_entries("tenant-a", "job-1", chunks_only=False)
        assert await streams.job_entry("tenant-a", "job-1") is None
    finally:
        await client.close()
        server.stop()


async def test_stale_results_are_every_run_s_but_the_live_one(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "nats")
    client = await nats.connect(server.url)
    try:
        streams = JobStreams(lambda: client, BulkSettings())
        bucket = await streams.ensure()
        js = client.jetstream()
        kept = [results_subject("tenant-a", "job", 0, "live"),
                results_subject("tenant-a", "job-2", 0, "old"),  # another job: a prefix
                results_subject("tenant-b", "job", 0, "old")]  # another tenant's
        stale = [results_subject("tenant-a", "job", 0, "old"),
                 results_subject("tenant-a", "job", 1, "older"),
                 results_subject("tenant-a", "job", 2, None)]  # from before runs
        for subject in kept + stale:
            await js.publish(subject, b"{}", stream=JOB_RESULTS_STREAM)
        await bucket.put("tenant-a.job", b'{"run": "live"}')

        await streams.purge_stale_results("tenant-a", "job")
        assert set(await stored_subjects(js)) == set(kept)

        await streams.purge_job_entries("tenant-a", "job", chunks_only=False)
        await streams.purge_stale_results("tenant-a", "job")  # no live run: all go
        assert set(await stored_subjects(js)) == set(kept[1:])
    finally:
        await client.close()
        server.stop()


async def stored_subjects(js: JetStreamContext) -> list[str]:
    info = await js.stream_info(JOB_RESULTS_STREAM, subjects_filter=">")
    return list(info.state.subjects or {})

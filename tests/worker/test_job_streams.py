"""JobStreams on a real nats-server of its own (no worker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from pqkms.nats_embedded import start_nats_server
from schemas.jobs import (
    JOB_CHUNKS_STREAM,
    JOB_RESULTS_STREAM,
    chunk_key,
    chunk_subject,
    results_subject,
)
from worker.bulk_config import BulkSettings
from worker.jobs.streams import JobStreams


@dataclass
class OnServer:
    """JobStreams on a nats-server of the test's own, and the connection it uses."""

    client: nats.NATS
    streams: JobStreams


@pytest.fixture
async def on_server(tmp_path: Path) -> AsyncIterator[OnServer]:
    server = start_nats_server(tmp_path / "nats")
    client = await nats.connect(server.url)
    try:
        yield OnServer(client, JobStreams(lambda: client, BulkSettings()))
    finally:
        await client.close()
        server.stop()


async def test_no_results_stream_means_no_results(on_server: OnServer) -> None:
    streams = on_server.streams
    assert not await streams.has_results("tenant-a", "job-1", 0, None)  # before any stream
    await streams.ensure()
    assert not await streams.has_results("tenant-a", "job-1", 0, None)


async def test_a_job_entry_is_read_from_the_bucket_and_a_missing_bucket_is_an_error(
        on_server: OnServer) -> None:
    streams = on_server.streams
    with pytest.raises(NotFoundError):  # no bucket: not "the job was deleted"
        await streams.job_entry("tenant-a", "job-1")
    bucket = await streams.ensure()
    assert await streams.job_entry("tenant-a", "job-1") is None
    await bucket.put("tenant-a.job-1", b'{"run": "r1"}')
    entry = await streams.job_entry("tenant-a", "job-1")
    assert entry is not None and (entry.fields, entry.run) == ({"run": "r1"}, "r1")
    assert await streams.job_entry("tenant-b", "job-1") is None
    await bucket.delete("tenant-a.job-1")  # a delete marker counts as no entry
    assert await streams.job_entry("tenant-a", "job-1") is None


async def test_an_entry_is_deleted_only_as_it_was_read(on_server: OnServer) -> None:
    streams = on_server.streams
    bucket = await streams.ensure()
    await bucket.put("tenant-a.job", b'{"run": "r1"}')
    read = await streams.job_entry("tenant-a", "job")
    assert read is not None
    # Deleted and submitted again by others meanwhile: the new run is not this one.
    await bucket.delete("tenant-a.job")
    await bucket.create("tenant-a.job", b'{"run": "r2"}')
    assert not await streams.delete_entry("tenant-a", "job", read)
    now = await streams.job_entry("tenant-a", "job")
    assert now is not None and now.run == "r2"
    assert await streams.delete_entry("tenant-a", "job", now)
    assert await streams.job_entry("tenant-a", "job") is None
    await bucket.create("tenant-a.job", b'{"run": "r3"}')  # the id is free again


async def test_stale_runs_are_every_run_but_the_live_one(on_server: OnServer) -> None:
    client, streams = on_server.client, on_server.streams
    bucket = await streams.ensure()
    js = client.jetstream()
    kept = [results_subject("tenant-a", "job", 0, "live"),
            chunk_subject("tenant-a", "job", 1, "live"),
            results_subject("tenant-a", "job-2", 0, "old"),  # another job: a prefix
            results_subject("tenant-b", "job", 0, "old")]  # another tenant's
    stale = [results_subject("tenant-a", "job", 0, "old"),
             chunk_subject("tenant-a", "job", 3, "old"),
             results_subject("tenant-a", "job", 1, "older"),
             results_subject("tenant-a", "job", 2, None)]  # from before runs
    for subject in kept + stale:
        stream = JOB_RESULTS_STREAM if ".results." in subject else JOB_CHUNKS_STREAM
        await js.publish(subject, b"{}", stream=stream)
    await bucket.put("tenant-a.job", b'{"run": "live"}')
    await bucket.put(chunk_key("tenant-a", "job", 0, "live"), b"{}")
    await bucket.put(chunk_key("tenant-a", "job", 0, "old"), b"{}")

    await streams.purge_stale_runs("tenant-a", "job")
    assert await stored_subjects(js) == set(kept)
    assert set(await bucket.keys()) == {"tenant-a.job", chunk_key("tenant-a", "job", 0,
                                                                   "live")}

    live = await streams.job_entry("tenant-a", "job")
    assert live is not None and await streams.delete_entry("tenant-a", "job", live)
    await streams.purge_stale_runs("tenant-a", "job")  # no live run: all go
    assert await stored_subjects(js) == set(kept[2:])


async def stored_subjects(js: JetStreamContext) -> set[str]:
    subjects: set[str] = set()
    for stream in (JOB_RESULTS_STREAM, JOB_CHUNKS_STREAM):
        info = await js.stream_info(stream, subjects_filter=">")
        subjects.update(info.state.subjects or {})
    return subjects

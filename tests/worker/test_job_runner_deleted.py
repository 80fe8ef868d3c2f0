"""A chunk of a deleted job: dropped before it runs, or its results removed when the job
was deleted while it ran (``worker.jobs.runner``, ``jobs.delete``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.jobs import results_subject
from tests.support.job_runner_fakes import ENTERPRISE, Worker, settled
from worker.jobs import runner

RUN = "0123456789abcdef"


@pytest.fixture
async def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Worker]:
    monkeypatch.setattr(runner, "_RETRY_SECONDS", 0.0)
    running = Worker(tmp_path, 1)
    running.runner.start()
    yield running
    await running.runner.stop(grace_seconds=0.5)


async def test_a_chunk_of_a_job_without_an_entry_is_dropped_unrun(worker: Worker) -> None:
    worker.streams.entries = [None]
    chunk = worker.submit(ENTERPRISE, 3, 5, RUN)
    assert await settled(chunk) == ("ack", None)
    assert worker.batches.runs == 0
    assert worker.streams.published == []
    # Results a crashed earlier attempt may have left go too.
    assert worker.streams.purged == [results_subject(ENTERPRISE, "job", 3, RUN)]
    assert worker.outcomes.finished == {"deleted": 1}


async def test_a_chunk_of_another_run_of_the_job_id_is_dropped_unrun(worker: Worker) -> None:
    worker.streams.entries = [{"run": "another-run"}]  # deleted, then submitted again
    chunk = worker.submit(ENTERPRISE, 0, 5, RUN)
    assert await settled(chunk) == ("ack", None)
    assert worker.batches.runs == 0
    assert worker.streams.purged == [results_subject(ENTERPRISE, "job", 0, RUN)]


async def test_a_job_deleted_while_its_chunk_ran_keeps_no_results(worker: Worker) -> None:
    worker.streams.entries = [{"run": RUN}, None]  # there before the run, gone after it
    chunk = worker.submit(ENTERPRISE, 1, 5, RUN)
    assert await settled(chunk) == ("ack", None)
    subject = results_subject(ENTERPRISE, "job", 1, RUN)
    assert worker.batches.runs == 1
    assert worker.streams.published == [subject]
    assert worker.streams.purged == [subject]
    assert worker.outcomes.finished == {"deleted": 1}


async def test_the_check_after_publishing_is_asked_again_while_nats_fails(
        worker: Worker) -> None:
    # The delete purged the chunk: a nak would never bring it back to be checked.
    worker.streams.entries = [{"run": RUN}, TimeoutError(), TimeoutError(), None]
    chunk = worker.submit(ENTERPRISE, 8, 5, RUN)
    assert await settled(chunk) == ("ack", None)
    assert worker.streams.purged == [results_subject(ENTERPRISE, "job", 8, RUN)]
    assert worker.outcomes.finished == {"deleted": 1}


async def test_a_chunk_of_a_live_job_publishes_under_its_run(worker: Worker) -> None:
    worker.streams.entries = [{"run": RUN}]
    chunk = worker.submit(ENTERPRISE, 2, 5, RUN)
    assert await settled(chunk) == ("ack", None)
    assert worker.streams.published == [results_subject(ENTERPRISE, "job", 2, RUN)]
    assert worker.streams.purged == []
    assert worker.outcomes.finished == {"done": 1}


async def test_a_chunk_from_before_runs_runs_for_a_job_from_before_runs_only(
        worker: Worker) -> None:
    worker.streams.entries = [{}]
    kept = worker.submit(ENTERPRISE, 5, 5)
    assert await settled(kept) == ("ack", None)
    legacy = "pqkms.v1.jobs.results.tenant-enterprise.job.5"
    assert worker.streams.published == [legacy]

    # Its job id deleted and submitted again: the new run's items are not its items.
    worker.streams.entries = [{"run": RUN}]
    dropped = worker.submit(ENTERPRISE, 6, 5)
    assert await settled(dropped) == ("ack", None)
    assert worker.streams.published == [legacy]
    assert worker.outcomes.finished == {"done": 1, "deleted": 1}


async def test_a_chunk_from_before_runs_keeps_no_results_once_its_id_has_a_new_run(
        worker: Worker) -> None:
    worker.streams.entries = [{}, {"run": RUN}]
    chunk = worker.submit(ENTERPRISE, 6, 5)
    assert await settled(chunk) == ("ack", None)
    legacy = "pqkms.v1.jobs.results.tenant-enterprise.job.6"
    assert worker.streams.published == [legacy]
    assert worker.streams.purged == [legacy]


async def test_removing_a_deleted_job_s_results_is_retried(worker: Worker) -> None:
    # The delete purged the chunk from the stream: it would not come back to try again.
    worker.streams.entries = [{"run": RUN}, None]
    worker.streams.purge_failures = 2
    chunk = worker.submit(ENTERPRISE, 7, 5, RUN)
    assert await settled(chunk) == ("ack", None)
    subject = results_subject(ENTERPRISE, "job", 7, RUN)
    assert worker.streams.purged == [subject]
    assert worker.outcomes.finished == {"deleted": 1}

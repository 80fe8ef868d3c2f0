"""The JetStream objects of jobs, created on first use and re-checked after a failure.

- ``PQKMS_JOBS``: work-queue stream of chunks (``pqkms.v1.jobs.chunks.<tenant>.<job>.<n>``);
  a chunk is deleted once a worker acks it. ``Nats-Msg-Id`` de-duplicates re-submits.
- ``PQKMS_JOB_RESULTS``: one message per chunk subject (``max_msgs_per_subject=1``), so
  a chunk processed twice still has exactly one set of results; the subject holds the
  job's run (``pqkms.v1.jobs.results.<tenant>.<job>.<run>.<n>``).
- ``pqkms_jobs``: key-value bucket, one entry per job (operation, chunk count, created,
  digest salt, run) and one per chunk (the digest of what it holds, ``chunk_claims``).
- ``pqkms-job-workers``: the durable pull consumer every worker shares.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from schemas.jobs import (
    JOB_CHUNK_PREFIX,
    JOB_CHUNKS_STREAM,
    JOB_RESULTS_PREFIX,
    JOB_RESULTS_STREAM,
    JOBS_BUCKET,
    chunk_key,
    chunk_subject,
    job_chunks_pattern,
    job_key,
    job_results_pattern,
    results_subject,
)
from worker.bulk_config import BulkSettings
from worker.jobs.subject_listing import list_subjects

__all__ = ["CONSUMER", "RUN_FIELD", "JobEntry", "JobStreams", "run_of"]

CONSUMER = "pqkms-job-workers"
RUN_FIELD = "run"
_BUCKET_STREAM = f"KV_{JOBS_BUCKET}"
_DELETED = ("DEL", "PURGE")
# JetStream's error code for a stream that does not exist (a missing message is 10037).
_NO_SUCH_STREAM = 10059
_WRONG_LAST_SEQUENCE = 10071
_NO_RUN = "-"  # no job entry: no run is live (a run id is hex)
_log = structlog.get_logger("pqkms.worker")


class JobStreams:
    """Hands out the JetStream context, the jobs bucket and the consumer config."""

    def __init__(self, connection: Callable[[], Client], settings: BulkSettings) -> None:
        self._connection = connection
        self._settings = settings
        self._lock = asyncio.Lock()
        self._kv: KeyValue | None = None

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context of the worker's connection."""
        return self._connection().jetstream(timeout=10.0)

    def consumer_config(self) -> api.ConsumerConfig:
        """The shared durable pull consumer."""
        return api.ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self._settings.job_ack_wait_seconds,
            max_ack_pending=10_000,
            filter_subject=f"{JOB_CHUNK_PREFIX}.>",
        )

    async def ensure(self) -> KeyValue:
        """Create (or update) the streams and bucket once; returns the bucket."""
        if self._kv is not None:
            return self._kv
        async with self._lock:
            if self._kv is None:
                self._kv = await self._create()
        return self._kv

    def forget(self) -> None:
        """After a JetStream failure: check the objects again on next use."""
        self._kv = None

    async def _create(self) -> KeyValue:
        js = self.js
        retention = self._settings.job_retention_hours * 3600
        window = min(self._settings.job_dedup_window_minutes * 60, retention)
        replicas = self._settings.job_stream_replicas
        await _add_or_update(js, api.StreamConfig(
            name=JOB_CHUNKS_STREAM,
            subjects=[f"{JOB_CHUNK_PREFIX}.>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            max_age=retention,
            duplicate_window=window,
            num_replicas=replicas,
        ))
        await _add_or_update(js, api.StreamConfig(
            name=JOB_RESULTS_STREAM,
            subjects=[f"{JOB_RESULTS_PREFIX}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=retention,
            max_msgs_per_subject=1,
            duplicate_window=window,
            num_replicas=replicas,
            # Results are read by direct get: the stored bytes as they are, where the
            # stream API would wrap them in base64 inside JSON (docs/jobs.md).
            allow_direct=True,
        ))
        try:
            kv = await js.create_key_value(bucket=JOBS_BUCKET, history=1, ttl=retention,
                                           replicas=replicas)
        except BadRequestError:  # exists with other settings: use it as it is
            kv = await js.key_value(JOBS_BUCKET)
        return kv

    async def job_entry(self, tenant: str, job_id: str) -> JobEntry | None:
        """The job's entry as the bucket's leader has it (a replica may lag behind a
        submit or a delete just made); ``None`` when the job has none."""
        try:
            message = await self.js.get_last_msg(_BUCKET_STREAM, _entry_subject(tenant, job_id))
        except NotFoundError as exc:
            if exc.err_code == _NO_SUCH_STREAM:
                raise  # no bucket at all is trouble, not a deleted job: tried again later
            return None
        if (message.headers or {}).get("KV-Operation") in _DELETED or not message.data:
            return None
        return JobEntry(orjson.loads(message.data), message.seq or 0)

    async def delete_entry(self, tenant: str, job_id: str, entry: JobEntry) -> bool:
        """Delete the job's entry if it is still ``entry`` (the same revision); ``False``
        when it changed meanwhile (deleted by another request, or submitted again)."""
        headers = {"KV-Operation": "DEL",
                   "Nats-Expected-Last-Subject-Sequence": str(entry.revision)}
        try:
            await self.js.publish(_entry_subject(tenant, job_id), b"", headers=headers)
        except APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def purge(self, stream: str, subject: str) -> None:
        """Remove every message of ``stream`` on ``subject`` (a pattern may be given)."""
        await self.js.purge_stream(stream, subject=subject)

    async def purge_run(self, tenant: str, job_id: str, run: str | None) -> None:
        """Remove one run of a job: its queued chunks, its results, its chunk entries.
        Patterns of that run only: another run of the id is never touched."""
        await self.purge(JOB_CHUNKS_STREAM, job_chunks_pattern(tenant, job_id, run))
        await self.purge(JOB_RESULTS_STREAM, job_results_pattern(tenant, job_id, run))
        await self.purge(_BUCKET_STREAM, _claims_pattern(tenant, job_id, run))

    async def purge_stale_runs(self, tenant: str, job_id: str) -> None:
        """Remove every run of the job but its live one (all of them when it has none):
        what a chunk running across a delete, a submit racing it, or a delete stopped
        half-way may have left. The subjects are listed before the job's entry is read,
        so a run submitted meanwhile is never taken for stale: its entry was written
        before anything of it."""
        runs: set[str | None] = set()
        for stream, prefix in ((JOB_CHUNKS_STREAM, chunk_subject(tenant, job_id, "", None)),
                               (JOB_RESULTS_STREAM, results_subject(tenant, job_id, "", None)),
                               (_BUCKET_STREAM, f"{_entry_subject(tenant, job_id)}.")):
            listed = await list_subjects(self._connection(), stream, prefix + ">")
            runs.update(_run_of_subject(subject.removeprefix(prefix)) for subject in listed)
        entry = await self.job_entry(tenant, job_id)
        live: str | None = entry.run if entry is not None else _NO_RUN
        for run in runs - {live}:
            await self.purge_run(tenant, job_id, run)

    async def chunks_with_results(self, tenant: str, job_id: str, run: str | None) -> int:
        """How many chunks of the run have results (every page of subjects counted)."""
        listed = await list_subjects(self._connection(), JOB_RESULTS_STREAM,
                                     job_results_pattern(tenant, job_id, run))
        return len(listed)

    async def has_results(self, tenant: str, job_id: str, index: int, run: str | None) -> bool:
        """Whether a chunk's results are already in the results stream.

        Asked of the stream's leader as a per-subject count (stream info filtered to the
        chunk's subject): fetching the message instead would move the whole results,
        up to a megabyte wrapped in base64 and JSON, to learn that they exist."""
        subject = results_subject(tenant, job_id, index, run)
        try:
            info = await self.js.stream_info(JOB_RESULTS_STREAM, subjects_filter=subject)
        except NotFoundError:  # no results stream (deleted since ``ensure``): no results
            return False
        return bool((info.state.subjects or {}).get(subject))

    async def stored_results(self, tenant: str, job_id: str, index: int,
                             run: str | None) -> bytes:
        """A chunk's results as stored (JSON); ``NotFoundError`` while it has none.

        A direct get answers with the message itself; a replica may answer it and lag
        behind the leader, so "not found" (or no direct get on a stream made before it
        was allowed) is asked again of the stream's leader, whose answer decides."""
        subject = results_subject(tenant, job_id, index, run)
        try:
            message = await self.js.get_last_msg(JOB_RESULTS_STREAM, subject, direct=True)
        except (NotFoundError, NoRespondersError):
            message = await self.js.get_last_msg(JOB_RESULTS_STREAM, subject)
        if not message.data:
            raise RuntimeError("a job chunk's stored results are empty")
        return message.data

    async def ensure_consumer(self) -> None:
        """Create the shared durable consumer, or bring its settings up to date."""
        js = self.js
        config = self.consumer_config()
        try:
            await js.add_consumer(JOB_CHUNKS_STREAM, config)
        except BadRequestError as exc:
            _log.warning("job_consumer_kept", reason=exc.description)


def run_of(entry: dict[str, Any]) -> str | None:
    """A job entry's run; ``None`` for an entry made before runs existed."""
    run = entry.get(RUN_FIELD)
    return run if isinstance(run, str) else None


@dataclass(frozen=True, slots=True)
class JobEntry:
    """A job's entry in the bucket and its revision (the bucket stream's sequence)."""

    fields: dict[str, Any]
    revision: int

    @property
    def run(self) -> str | None:
        """The job's run (``None``: made before runs existed)."""
        return run_of(self.fields)


def _entry_subject(tenant: str, job_id: str) -> str:
    return f"$KV.{JOBS_BUCKET}.{job_key(tenant, job_id)}"


def _claims_pattern(tenant: str, job_id: str, run: str | None) -> str:
    """Every chunk entry of one run in the bucket stream."""
    return f"$KV.{JOBS_BUCKET}.{chunk_key(tenant, job_id, '*', run)}"


def _run_of_subject(rest: str) -> str | None:
    """The run in a results subject's ``<run>.<n>`` (``None`` for a bare ``<n>``)."""
    run, _, _ = rest.rpartition(".")
    return run or None


async def _add_or_update(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with another configuration (e.g. a changed retention): update it.
        await js.update_stream(config)

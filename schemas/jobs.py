"""Durable bulk jobs on JetStream: submit chunks, ask for status, fetch each chunk's results.

A job belongs to the tenant that submitted it: every stream subject and key-value key
holds the tenant id, so another tenant's job id simply does not exist for a caller.
docs/jobs.md describes the flow; the names here are the wire contract.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from schemas.batch import BatchItemResult, RawItems
from schemas.subjects import Subject

__all__ = [
    "JOB_CHUNKS_STREAM",
    "JOB_CHUNK_PREFIX",
    "JOB_ID_PATTERN",
    "JOB_RESULTS_PREFIX",
    "JOB_RESULTS_STREAM",
    "JOBS_BUCKET",
    "MAX_JOB_CHUNKS",
    "JobChunkResults",
    "JobDeleteRequest",
    "JobDeleted",
    "JobOperation",
    "JobResultsRequest",
    "JobState",
    "JobStatus",
    "JobStatusRequest",
    "JobSubmitRequest",
    "JobSubmitted",
    "chunk_key",
    "chunk_message_id",
    "chunk_not_done_message",
    "chunk_subject",
    "job_chunks_pattern",
    "job_key",
    "job_results_pattern",
    "result_message_id",
    "results_subject",
]

JOB_CHUNKS_STREAM = "PQKMS_JOBS"
JOB_RESULTS_STREAM = "PQKMS_JOB_RESULTS"
JOBS_BUCKET = "pqkms_jobs"
JOB_CHUNK_PREFIX = "pqkms.v1.jobs.chunks"
JOB_RESULTS_PREFIX = "pqkms.v1.jobs.results"
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_JOB_CHUNKS = 1_000_000

_STRICT = ConfigDict(extra="forbid", frozen=True)
JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN,
                             description="Caller-chosen id, 1-64 of A-Z a-z 0-9 _ -")]
ChunkIndex = Annotated[StrictInt, Field(ge=0, lt=MAX_JOB_CHUNKS)]


class JobOperation(StrEnum):
    """What every item of a job is; the single operation's subject without its prefix."""

    KEM_ENCRYPT = "kem.encrypt"
    KEM_DECRYPT = "kem.decrypt"
    SIGNATURE_SIGN = "signature.sign"
    SIGNATURE_VERIFY = "signature.verify"

    @property
    def subject(self) -> Subject:
        """The single operation's subject."""
        return Subject(f"pqkms.v1.{self.value}")

    @property
    def batch_subject(self) -> Subject:
        """The batch operation's subject."""
        return Subject(f"pqkms.v1.{self.value}.batch")


class JobState(StrEnum):
    """``running`` until every chunk has its results, then ``completed``."""

    RUNNING = "running"
    COMPLETED = "completed"


class JobSubmitRequest(BaseModel):
    """``pqkms.v1.jobs.submit``: one chunk of a job (submit every chunk, in any order)."""

    model_config = _STRICT
    job_id: JobId
    operation: JobOperation
    chunk_index: ChunkIndex
    total_chunks: Annotated[StrictInt, Field(ge=1, le=MAX_JOB_CHUNKS)]
    items: RawItems
    key_version: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)] | None = None
    algorithm: str | None = Field(default=None, description="Default algorithm for items")


class JobSubmitted(BaseModel):
    """Whether the chunk was queued, or already has results (nothing queued again)."""

    job_id: str
    chunk_index: int
    total_chunks: int
    items: int
    queued: bool
    duplicate: bool = Field(description="An identical chunk was already queued or done")
    created_at: str = Field(
        default="", description="When the job was made (as its status says): a chunk "
        "answered with another time than its job's first went to a job made again")


class JobStatusRequest(BaseModel):
    """``pqkms.v1.jobs.status``."""

    model_config = _STRICT
    job_id: JobId


class JobStatus(BaseModel):
    """Progress of a job: chunks with results, items done and failed so far."""

    job_id: str
    operation: JobOperation
    state: JobState
    total_chunks: int
    chunks_done: int
    items_done: int
    items_succeeded: int
    items_failed: int
    created_at: str


class JobResultsRequest(BaseModel):
    """``pqkms.v1.jobs.results``: the results of one finished chunk."""

    model_config = _STRICT
    job_id: JobId
    chunk_index: ChunkIndex


class JobDeleteRequest(BaseModel):
    """``pqkms.v1.jobs.delete``: forget a job, its queued chunks and its results."""

    model_config = _STRICT
    job_id: JobId


class JobDeleted(BaseModel):
    """The job is gone: status and results of its id are 404 from now on."""

    job_id: str
    deleted: bool


class JobChunkResults(BaseModel):
    """One chunk's results, in its item order, as a batch reply."""

    job_id: str
    chunk_index: int
    results: list[BatchItemResult]
    total: int
    succeeded: int
    failed: int


def job_key(tenant_id: str, job_id: str) -> str:
    """The job's entry in the ``pqkms_jobs`` key-value bucket."""
    return f"{tenant_id}.{job_id}"


def _run_part(run: str | None) -> str:
    return "" if run is None else f"{run}."


def chunk_subject(tenant_id: str, job_id: str, chunk_index: int | str,
                  run: str | None) -> str:
    """Where a chunk waits in the work-queue stream (``….<job>.<run>.<n>``; ``run``:
    see ``results_subject``)."""
    return f"{JOB_CHUNK_PREFIX}.{tenant_id}.{job_id}.{_run_part(run)}{chunk_index}"


def job_chunks_pattern(tenant_id: str, job_id: str, run: str | None) -> str:
    """Every queued chunk of one run of a job."""
    return chunk_subject(tenant_id, job_id, "*", run)


def results_subject(tenant_id: str, job_id: str, chunk_index: int | str,
                    run: str | None) -> str:
    """Where a chunk's results are kept (one message per subject).

    ``run``: the job's run (``worker.jobs.service``), a token of its own in the
    subject, so that everything of a run (chunks, results, chunk entries) is found, and
    removed, by a pattern that no other run of the same job id matches. ``None`` for a
    job from before runs existed (``pqkms.v1.jobs.results.<tenant>.<job>.<n>``)."""
    return f"{JOB_RESULTS_PREFIX}.{tenant_id}.{job_id}.{_run_part(run)}{chunk_index}"


def job_results_pattern(tenant_id: str, job_id: str, run: str | None) -> str:
    """Every chunk's results of one run of a job."""
    return results_subject(tenant_id, job_id, "*", run)


def chunk_key(tenant_id: str, job_id: str, chunk_index: int | str, run: str | None) -> str:
    """A chunk's entry in the ``pqkms_jobs`` bucket: the digest of what it holds. Per
    run: a claim a deleted run's late submit left behind is never another run's."""
    return f"{tenant_id}.{job_id}.{_run_part(run)}{chunk_index}"


def chunk_message_id(tenant_id: str, job_id: str, chunk_index: int, run: str | None) -> str:
    """``Nats-Msg-Id`` of a chunk: JetStream drops a second copy (of the same run: a job
    deleted and submitted again is queued again, inside the de-duplication window too)."""
    return f"{tenant_id}:{job_id}:{_run_part(run).replace('.', ':')}{chunk_index}"


def result_message_id(tenant_id: str, job_id: str, chunk_index: int, run: str | None) -> str:
    """``Nats-Msg-Id`` of a chunk's results: a redelivered chunk's results are dropped."""
    return f"{chunk_message_id(tenant_id, job_id, chunk_index, run)}:results"


def chunk_not_done_message(chunk_index: int, job_id: str) -> str:
    """The 404 of a chunk without results yet (the job exists: ask again later)."""
    return f"Chunk {chunk_index} of job {job_id} has no results yet"

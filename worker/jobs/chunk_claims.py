"""What each chunk of a job holds, recorded at its first submit.

A chunk submitted again must hold what it held the first time: a retry or a resumed
run is a duplicate, answered as before, and a job id used again for other items is a
400. Before, such a submit was answered as a duplicate too, and the job's results were
those of the earlier items: a review re-ran a nightly job under the same id and got the
night before's ciphertexts, with a successful exit.

The record is a keyed digest, never the items: HMAC-SHA256 under a random salt of the
job (kept in the job's own entry) over the operation, key version, algorithm and items.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from typing import Any

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from schemas.errors import ErrorCode
from schemas.jobs import JobSubmitRequest, chunk_key
from worker.errors import ServiceError
from worker.jobs.streams import run_of
from worker.services.context import Caller
from worker.services.transient import TRANSIENT_MESSAGE

__all__ = ["SALT_FIELD", "claim_chunk", "create_or_read", "new_salt"]

SALT_FIELD = "chunk_salt"
_READ_BACK_ATTEMPTS = 6


def new_salt() -> str:
    """A job's digest salt, as its entry stores it."""
    return base64.b64encode(os.urandom(16)).decode()


def _digest(salt: str, request: JobSubmitRequest) -> str:
    content = orjson.dumps(
        [request.operation.value, request.key_version, request.algorithm, request.items],
        option=orjson.OPT_SORT_KEYS,
    )
    return hmac.new(base64.b64decode(salt), content, hashlib.sha256).hexdigest()


async def claim_chunk(kv: Any, caller: Caller, request: JobSubmitRequest,
                      job: dict[str, Any]) -> None:
    """Record what the chunk holds, or check it against the record of its first submit
    (400 when it differs). ``job``: the job's entry; one made before chunks were
    recorded has no salt, and its chunks are taken as they come."""
    salt = job.get(SALT_FIELD)
    if not isinstance(salt, str):
        return
    digest = _digest(salt, request)
    key = chunk_key(caller.tenant_id, request.job_id, request.chunk_index, run_of(job))
    first = await create_or_read(kv, key, {"digest": digest})
    if first is not None and not hmac.compare_digest(str(first.get("digest")), digest):
        raise ServiceError(
            ErrorCode.INVALID,
            f"Validation failed: chunk {request.chunk_index} of job {request.job_id} was "
            "submitted before with other items, key version or algorithm; use a new "
            "job_id for a different job",
        )


async def create_or_read(kv: Any, key: str, value: dict[str, Any]) -> dict[str, Any] | None:
    """Create ``key`` with ``value``: ``None`` when this call created it, else the value
    it already had."""
    try:
        await kv.create(key, orjson.dumps(value))
        return None
    except KeyWrongLastSequenceError:
        pass
    except Exception as exc:  # nats-py raises a plain APIError for "key exists"
        if "wrong last sequence" not in str(exc).lower():
            raise
    return await _read_back(kv, key)


async def _read_back(kv: Any, key: str) -> dict[str, Any]:
    """The entry that made ``create`` fail. On a replicated bucket during a leader
    change, our own first attempt can have been applied (its retry then fails) before
    the replica we read from has it: wait briefly for it, then ask for a retry."""
    for attempt in range(_READ_BACK_ATTEMPTS):
        try:
            existing: dict[str, Any] = orjson.loads((await kv.get(key)).value or b"{}")
            return existing
        except KeyNotFoundError:
            await asyncio.sleep(0.05 * (attempt + 1))
    raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE, TRANSIENT_MESSAGE)

"""A job's run, read from the jobs bucket the way the workers keep it."""

from __future__ import annotations

import orjson
from nats.js import JetStreamContext

from schemas.jobs import JOBS_BUCKET, job_key


async def job_run(js: JetStreamContext, tenant_id: str, job_id: str) -> str | None:
    """The run in the job's entry (its results' subjects hold it)."""
    bucket = await js.key_value(JOBS_BUCKET)
    entry = orjson.loads((await bucket.get(job_key(tenant_id, job_id))).value or b"{}")
    run = entry.get("run")
    return run if isinstance(run, str) else None

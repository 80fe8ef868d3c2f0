"""Settings of batches and durable jobs, from ``PQKMS_*`` environment variables.

Kept apart from ``worker.config.Settings`` so the bulk features can be tuned on their
own; nothing is read at import, call :func:`get_bulk_settings`.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.batch import DEFAULT_MAX_BATCH_ITEMS

__all__ = ["BulkSettings", "get_bulk_settings"]


class BulkSettings(BaseSettings):
    """Limits of batch requests and the JetStream set-up of jobs."""

    model_config = SettingsConfigDict(env_prefix="PQKMS_", extra="ignore")

    batch_max_items: int = Field(default=DEFAULT_MAX_BATCH_ITEMS, ge=1,
                                 description="items per batch request or job chunk")
    job_ack_wait_seconds: float = Field(
        default=30.0, gt=0, description="a chunk whose worker went silent is redelivered after"
    )
    job_concurrency: int = Field(default=2, ge=1, description="chunks in flight per worker")
    job_retention_hours: float = Field(
        default=168.0, gt=0, description="how long jobs and their results are kept"
    )
    job_dedup_window_minutes: float = Field(
        default=120.0, gt=0, description="JetStream de-duplication window of chunks"
    )
    job_stream_replicas: int = Field(default=1, ge=1, le=5)


def get_bulk_settings() -> BulkSettings:
    """Bulk settings read from the environment now."""
    return BulkSettings()

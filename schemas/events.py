"""Key lifecycle events: what a worker publishes on ``pqkms.v1.events.keys.<tenant_id>``.

One small JSON object per state change of a key version, published after the change is
committed: ``generated`` (a first active version), ``rotated`` (a new active version,
naming the one it replaces) followed by ``retired`` (that replaced version), and
``archived``. Events never carry key bytes, not even the public key: a subscriber that
needs it asks ``pqkms.v1.kms.keys.get`` with its API key. Delivery is at most once on
core NATS (optionally kept in the ``PQKMS_KEY_EVENTS`` JetStream stream for late
subscribers); the key list stays the source of truth.
"""

from __future__ import annotations

from enum import StrEnum
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field

from schemas.algorithms import Algorithm

__all__ = [
    "KEY_EVENTS_PREFIX",
    "KEY_EVENTS_STREAM",
    "KEY_EVENTS_WILDCARD",
    "KEY_EVENT_SCHEMA_VERSION",
    "SCHEDULER_REQUEST_ID",
    "KeyEvent",
    "KeyEventType",
    "key_events_subject",
]

KEY_EVENTS_PREFIX = "pqkms.v1.events.keys"
KEY_EVENTS_WILDCARD = f"{KEY_EVENTS_PREFIX}.>"
KEY_EVENTS_STREAM = "PQKMS_KEY_EVENTS"
KEY_EVENT_SCHEMA_VERSION = 1
# The request id of events caused by the rotation scheduler rather than a request.
SCHEDULER_REQUEST_ID = "scheduler"

# Characters that would make a tenant id more (or less) than one subject token.
_NOT_IN_A_TOKEN = frozenset(".*> \t\r\n")


class KeyEventType(StrEnum):
    """What happened to the key version."""

    GENERATED = "generated"
    ROTATED = "rotated"
    RETIRED = "retired"
    ARCHIVED = "archived"


def _new_event_id() -> str:
    return str(uuid4())


class KeyEvent(BaseModel):
    """One committed state change of one key version of one tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = KEY_EVENT_SCHEMA_VERSION
    event_id: str = Field(default_factory=_new_event_id, description="UUID4, unique per event")
    type: KeyEventType
    tenant_id: str
    algorithm: Algorithm
    key_version: int = Field(description="the version the event is about (for rotated: new)")
    old_key_version: int | None = Field(
        default=None, description="rotated only: the version that was active and is retired"
    )
    occurred_at: str = Field(description="ISO-8601 UTC with milliseconds and Z")
    request_id: str = Field(description="the request that caused it, or 'scheduler'")


def key_events_subject(tenant_id: str) -> str:
    """``pqkms.v1.events.keys.<tenant_id>``; the tenant id must be one subject token."""
    if not tenant_id or any(char in _NOT_IN_A_TOKEN for char in tenant_id):
        raise ValueError("a tenant id must be one non-empty NATS subject token")
    return f"{KEY_EVENTS_PREFIX}.{tenant_id}"

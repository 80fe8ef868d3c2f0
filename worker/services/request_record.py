"""What one finished request leaves behind for audit and metrics: never any data.

The envelope handler builds one :class:`RequestRecord` per request and hands it to an
:class:`AuditSink` (awaited: when it raises, the request fails) and to
:class:`RequestMetrics` (synchronous, must not raise). Both default to doing nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["NO_AUDIT", "NO_METRICS", "AuditSink", "RequestMetrics", "RequestRecord"]


@dataclass(slots=True)  # not frozen (cheaper to make, one per request); never changed
class RequestRecord:
    """One request: who, what, with which key, and how it ended. No payloads, no keys."""

    operation: str  # the NATS subject, e.g. "pqkms.v1.kem.encrypt"
    request_id: str
    tenant_id: str | None  # None when authentication failed
    algorithm: str | None
    key_version: int | None
    outcome: str  # "OK" or an error code such as "ERR_RATE_001"
    duration_seconds: float
    items: int = 1  # batch items (rate-limit cost); 1 for single requests
    # A batch answered OK may still hold failed items (HTTP 200, ``failed`` > 0): the
    # error code of each, for metrics and the log line. Empty for every other request,
    # and for a batch whose reply did not carry its items' results.
    item_errors: Sequence[str] = ()

    @property
    def items_failed(self) -> int:
        """How many of the batch's items failed (0 for single requests)."""
        return len(self.item_errors)


class AuditSink(Protocol):
    """Durable audit of requests; ``append`` returns once the record is written."""

    async def append(self, record: RequestRecord) -> None:
        """Write ``record`` durably, or raise: the request then fails."""

    def failing(self) -> bool:
        """Whether the last write is known to have failed (and nothing has been written
        since): a request that would change state is then refused before it acts."""


class RequestMetrics(Protocol):
    """Counters and histograms of requests."""

    def observe(self, record: RequestRecord) -> None:
        """Count ``record``; never raises."""


class _NoAudit:
    async def append(self, record: RequestRecord) -> None:
        return None

    def failing(self) -> bool:
        return False


class _NoMetrics:
    def observe(self, record: RequestRecord) -> None:
        return None


NO_AUDIT: AuditSink = _NoAudit()
NO_METRICS: RequestMetrics = _NoMetrics()

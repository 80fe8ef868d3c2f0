"""How many requests that carry no valid API key a worker audits one by one.

A request refused before it names a tenant (no API key, an unknown one, a body that is
not JSON) is audited like any other, with ``tenant_id`` null: a trail of failed attempts
is worth keeping. But nothing limits such requests, and every record stays in the
database and in ``PQKMS_AUDIT`` for good, so a flood of them, from anyone who can reach
the bridge, would fill the disk and then stop every request (no audit, no answer). Each
worker audits up to ``rate`` of them per second (bursts of ``burst``); the rest are
counted in one warning per second, ``audit_unauthenticated_skipped``, instead of one
record each (docs/audit.md). They are answered as always, and logged as any request.
"""

from __future__ import annotations

import time

import structlog

__all__ = ["UnauthenticatedAuditBudget"]

_log = structlog.get_logger("pqkms.audit")
_REPORT_EVERY_SECONDS = 1.0


class UnauthenticatedAuditBudget:
    """A token bucket: may the next unauthenticated request be audited?"""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._refilled = time.monotonic()
        self.skipped = 0  # since the start
        self._unreported = 0
        self._reported = self._refilled

    def take(self) -> bool:
        """True: audit this one; False: it is only counted."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.skipped += 1
        self._unreported += 1
        if now - self._reported >= _REPORT_EVERY_SECONDS:
            _log.warning("audit_unauthenticated_skipped", requests=self._unreported,
                         total=self.skipped)
            self._unreported = 0
            self._reported = now
        return False

"""A warning for events that can come by the million: at most one line a second.

A flood of requests nobody can answer (no reply subject, a reserved one) or of messages
nats-py drops as a slow consumer once wrote a line, or a traceback, per message: a
review's 30-second flood left 600 MB of worker logs. Each such event is counted, and
one line a second says how many came since the last one (``count``).
"""

from __future__ import annotations

import time
from typing import Any

import structlog

__all__ = ["ThrottledWarning"]


class ThrottledWarning:
    """Logs ``event`` at once, then at most every ``interval`` seconds, with ``count``."""

    def __init__(self, logger_name: str, event: str, interval: float = 1.0) -> None:
        self._log = structlog.get_logger(logger_name)
        self._event = event
        self._interval = interval
        self._count = 0
        self._next_line = 0.0

    def note(self, **fields: Any) -> None:
        """Count one occurrence; log if the last line is ``interval`` old."""
        self._count += 1
        now = time.monotonic()
        if now < self._next_line:
            return
        self._log.warning(self._event, count=self._count, **fields)
        self._count = 0
        self._next_line = now + self._interval

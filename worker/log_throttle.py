"""Events that can come by the million: at most one line a second, with a ``count``.

A flood of requests nobody can answer (no reply subject, a reserved one) or of messages
nats-py drops as a slow consumer once wrote a line, or a traceback, per message: a
review's 30-second flood left 600 MB of worker logs. Each such event is counted, and
one line a second says how many came since the last one (``count``).

The same goes for exceptions: a broken database fails every request, and each
``_log.exception`` wrote its own traceback. :class:`ExceptionThrottle` lets through one
line a second per event name that carries an exception.
"""

from __future__ import annotations

import threading
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["ExceptionThrottle", "ThrottledWarning", "ThrottleWindow"]


class ThrottleWindow:
    """Counts occurrences and says when one may be written: the first at once, then at
    most one every ``interval`` seconds, standing for all counted since the last."""

    __slots__ = ("_count", "_interval", "_next_line")

    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._count = 0
        self._next_line = 0.0

    def note(self, now: float) -> int | None:
        """Count one occurrence at ``now`` (``time.monotonic()``); the ``count`` to
        write with it, or ``None`` when it is only counted."""
        self._count += 1
        if now < self._next_line:
            return None
        count, self._count = self._count, 0
        self._next_line = now + self._interval
        return count


class ThrottledWarning:
    """Logs ``event`` at once, then at most every ``interval`` seconds, with ``count``."""

    def __init__(self, logger_name: str, event: str, interval: float = 1.0) -> None:
        self._log = structlog.get_logger(logger_name)
        self._event = event
        self._window = ThrottleWindow(interval)

    def note(self, **fields: Any) -> None:
        """Count one occurrence; log if the last line is ``interval`` old."""
        count = self._window.note(time.monotonic())
        if count is not None:
            self._log.warning(self._event, count=count, **fields)


class ExceptionThrottle:
    """A structlog processor: an event carrying an exception (``exc_info``, as
    ``log.exception`` sets) is written at most once every ``interval`` seconds per event
    name, with ``count``: how many of that event this line stands for (itself and those
    dropped since the previous one). Events without an exception pass untouched.

    Put it before the processor that renders the exception, so a dropped event costs
    no traceback walk. Thread-safe: batch items fail in the crypto threads too.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._windows: dict[str, ThrottleWindow] = {}  # bounded: event names are code
        self._lock = threading.Lock()

    def __call__(self, _logger: object, _method: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Pass the event on with its ``count``, or raise ``structlog.DropEvent``."""
        if not event_dict.get("exc_info"):
            return event_dict
        event = str(event_dict.get("event"))
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(event)
            if window is None:
                window = self._windows[event] = ThrottleWindow(self._interval)
            count = window.note(now)
        if count is None:
            raise structlog.DropEvent
        event_dict["count"] = count
        return event_dict

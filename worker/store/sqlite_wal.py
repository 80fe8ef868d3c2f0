"""Switching a SQLite connection to WAL while other connections open the same file.

``PRAGMA journal_mode=WAL`` needs the database's exclusive lock to turn a rollback
journal into a WAL, and SQLite does not always wait for it through the busy handler:
when several connections open a new database at once (workers starting together, or
concurrent schema upgrades), one of them can get ``SQLITE_BUSY`` ("database is locked")
at once, busy timeout or not. The switch is therefore retried here, with short pauses,
until it succeeds or the busy timeout is spent. Once the file is in WAL mode (it stays
so), the statement returns at once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

__all__ = ["is_busy", "switch_to_wal"]

_FIRST_PAUSE_SECONDS = 0.001
_LONGEST_PAUSE_SECONDS = 0.05


def is_busy(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's "database is locked" (busy) or "table is locked"."""
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(error)
    return "database is locked" in message or "database table is locked" in message


def switch_to_wal(execute: Callable[[str], object], timeout_seconds: float,
                  pause: Callable[[float], None] = time.sleep) -> None:
    """Run ``PRAGMA journal_mode=WAL`` through ``execute``, retried while the database
    is locked, for at most ``timeout_seconds``; ``pause`` waits between attempts."""
    deadline = time.monotonic() + timeout_seconds
    delay = _FIRST_PAUSE_SECONDS
    while True:
        try:
            execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        pause(delay)
        delay = min(delay * 2, _LONGEST_PAUSE_SECONDS)

"""A file whose modification time the worker's event loop renews every second.

A worker that is alive but stuck (a stopped process, a loop blocked in a call that
never returns) answers nothing: its share of requests waits until its callers time out,
and a supervisor that only watches for exits never restarts it. ``pqkms up`` sets
``PQKMS_HEARTBEAT_FILE`` and restarts a worker whose file stops changing
(``pqkms.stack``). The file is touched from the event loop itself, so it shows the
loop running, not only the process existing.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog

__all__ = ["HEARTBEAT_INTERVAL_SECONDS", "beat"]

HEARTBEAT_INTERVAL_SECONDS = 1.0
_log = structlog.get_logger("pqkms.worker")


async def beat(path: Path, interval: float = HEARTBEAT_INTERVAL_SECONDS) -> None:
    """Renew ``path``'s time every ``interval`` seconds until cancelled."""
    reported = False
    while True:
        try:
            _touch(path)
            reported = False
        except OSError as exc:
            if not reported:  # once per failing spell, not once a second
                _log.warning("heartbeat_failed", path=str(path), reason=type(exc).__name__)
                reported = True
        await asyncio.sleep(interval)


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600)

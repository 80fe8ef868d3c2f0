"""The worker's heartbeat file: created private, renewed while the event loop runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from worker.heartbeat import beat


async def test_the_file_is_created_private_and_renewed_while_the_loop_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "heartbeats" / "worker-1"
    beating = asyncio.create_task(beat(path, interval=0.02))
    try:
        await asyncio.sleep(0.05)
        assert path.stat().st_mode & 0o777 == 0o600
        os.utime(path, (0, 0))  # as if renewed long ago
        await asyncio.sleep(0.1)
        assert path.stat().st_mtime > 0
    finally:
        beating.cancel()


async def test_a_file_that_cannot_be_written_does_not_stop_the_loop(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    beating = asyncio.create_task(beat(blocker / "worker-1", interval=0.01))
    try:
        await asyncio.sleep(0.05)
        assert not beating.done()
    finally:
        beating.cancel()

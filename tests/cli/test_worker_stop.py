"""A worker that cannot reach NATS yet still stops on SIGTERM (its connect retries
forever, so nothing else would end it)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from pqkms.nats_embedded import find_free_port
from tests.cli.processes import run_pqkms, start_pqkms


def test_sigterm_stops_a_worker_still_connecting(tmp_path: Path) -> None:
    initialised = run_pqkms("db", "init", "--data-dir", str(tmp_path))
    assert initialised.returncode == 0, initialised.stderr
    nowhere = f"nats://127.0.0.1:{find_free_port()}"  # nothing listens there
    worker = start_pqkms("worker", "--nats-url", nowhere, "--data-dir", str(tmp_path))
    try:
        time.sleep(3)  # past opening the store: connecting, and retrying
        started = time.monotonic()
        assert worker.stop(signal.SIGTERM, timeout=20) == 0
        assert time.monotonic() - started < 10
    finally:
        worker.kill()
    assert "worker_stopped_before_connecting" in worker.stderr

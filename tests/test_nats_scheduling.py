"""The embedded nats-server's scheduling policy (pqkms.nats_embedded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pqkms.nats_embedded import start_nats_server
from tests.cli.processes import thread_policies

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"),
                                reason="Linux scheduling policies")


def test_every_thread_of_the_embedded_server_runs_under_sched_batch(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "nats")
    try:
        # Set before exec: the Go runtime's threads, started later, inherit it.
        assert len(list(Path(f"/proc/{server.process.pid}/task").iterdir())) > 1
        assert thread_policies(server.process.pid) == {os.SCHED_BATCH}
    finally:
        server.stop()


def test_the_default_policy_when_asked(tmp_path: Path) -> None:
    server = start_nats_server(tmp_path / "nats", batch_scheduling=False)
    try:
        assert thread_policies(server.process.pid) == {os.SCHED_OTHER}
    finally:
        server.stop()

"""A worker that exits while the tests wait for it is reported with the end of its log."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.stack import LocalStack

pytestmark = pytest.mark.integration


async def test_a_worker_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    local = LocalStack(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # The CI failure this guards: the metrics port already in use.
        local.extra_env["PQKMS_METRICS_PORT"] = str(taken.getsockname()[1])
        try:
            await local.start(workers=0)
            local.start_worker()
            with pytest.raises(RuntimeError) as raised:
                await local.wait_for_workers(1)
        finally:
            local.stop()
    message = str(raised.value)
    assert message.startswith("worker exited with 1; the end of its log:")
    assert "Address already in use" in message

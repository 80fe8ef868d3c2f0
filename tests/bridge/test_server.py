"""api_bridge.main: the server ``python -m api_bridge`` and ``pqkms`` run."""

from __future__ import annotations

import asyncio
import gc

from api_bridge.main import create_server
from pqkms.nats_embedded import find_free_port
from worker.config import Settings


async def test_once_started_the_server_keeps_what_start_up_loaded_out_of_collections() -> None:
    # (NATS is not reachable: the bridge connects in the background and serves meanwhile.)
    settings = Settings(nats_url="nats://127.0.0.1:1", http_host="127.0.0.1",
                        http_port=find_free_port())
    gc.unfreeze()
    server = create_server(settings)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(1500):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        assert server.started
        # uvicorn still calls the startup the bridge's server extends.
        assert gc.get_freeze_count() > 0
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
        gc.unfreeze()

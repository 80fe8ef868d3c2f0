"""A real bridge on a real port: uvicorn in a background thread with its own loop."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import uvicorn

from api_bridge.app import create_app
from api_bridge.http_protocol import bridge_http_protocol
from pqkms.nats_embedded import find_free_port
from worker.config import Settings

__all__ = ["LiveBridge"]


@dataclass
class LiveBridge:
    """The bridge app served over HTTP for a test; ``url`` is its base URL."""

    settings: Settings
    loop: str = "asyncio"  # or "uvloop", as ``python -m api_bridge`` serves
    server: uvicorn.Server | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def for_nats(cls, nats_url: str, loop: str = "asyncio", **overrides: object) -> LiveBridge:
        """Settings for a bridge on a free port talking to ``nats_url``, on ``loop``."""
        values: dict[str, object] = {
            "nats_url": nats_url,
            "http_host": "127.0.0.1",
            "http_port": find_free_port(),
            "request_timeout_seconds": 1.0,
            **overrides,
        }
        return cls(Settings(**values), loop)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    def start(self) -> LiveBridge:
        """Serve, and return once uvicorn listens (NATS may still be connecting)."""
        config = uvicorn.Config(
            create_app(self.settings), host=self.settings.http_host,
            port=self.settings.http_port, loop=self.loop, log_level="warning",
            access_log=False, lifespan="on", http=bridge_http_protocol(self.settings),
            limit_concurrency=self.settings.http_max_connections, proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="bridge", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("bridge did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut down gracefully."""
        if self.server is not None and self._thread is not None:
            self.server.should_exit = True
            self._thread.join(15)

"""A stand-in for ``python -m api_bridge``: ``/healthz`` answers 200; records its life.

Usage: standin_bridge.py EVENTS_FILE
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(events: Path) -> None:
    host = os.environ["PQKMS_HTTP_HOST"]
    port = int(os.environ["PQKMS_HTTP_PORT"])
    server = ThreadingHTTPServer((host, port), Health)

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_term)
    with events.open("a") as handle:
        handle.write(f"start bridge {os.getpid()}\n")
    server.serve_forever()
    server.server_close()
    with events.open("a") as handle:
        handle.write(f"stop bridge {os.getpid()}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

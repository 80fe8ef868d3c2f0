"""A stand-in for ``python -m worker``: answers the health ping and records its life.

Usage: standin_worker.py EVENTS_FILE [--fail MESSAGE]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import nats
from nats.aio.msg import Msg

from worker.heartbeat import beat


def record(events: Path, line: str) -> None:
    with events.open("a") as handle:
        handle.write(line + "\n")


def setup_facts() -> str:
    """Whether the master key and the database existed when this worker started."""
    key_file = Path(os.environ["PQKMS_MASTER_KEY_FILE"])
    database = Path(os.environ["PQKMS_DATA_DIR"]) / "pqkms.db"
    return f"key={key_file.exists()} db={database.exists()}"


async def main(events: Path, facts: str) -> None:
    client = await nats.connect(os.environ["PQKMS_NATS_URL"],
                                user=os.environ.get("PQKMS_NATS_USER"),
                                password=os.environ.get("PQKMS_NATS_PASSWORD"))

    async def on_ping(msg: Msg) -> None:
        await msg.respond(json.dumps({"data": {"status": "ok", "worker": os.getpid()}}).encode())

    await client.subscribe("pqkms.v1.health.ping", queue="pqkms-workers", cb=on_ping)
    heartbeat = os.environ.get("PQKMS_HEARTBEAT_FILE")
    # Renewed as the real worker's loop renews it (worker.heartbeat).
    beating = asyncio.get_running_loop().create_task(beat(Path(heartbeat))) if heartbeat else None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    record(events, f"start worker {os.getpid()} {facts}")
    await stop.wait()
    # A worker drains through NATS when stopped, so NATS must still be up now.
    try:
        await client.flush(timeout=2)
        state = "nats-up"
    except Exception:
        state = "nats-down"
    record(events, f"stop worker {os.getpid()} {state}")
    if beating is not None:
        beating.cancel()
    await client.close()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "--fail":
        print(f"fatal: {sys.argv[3]}", file=sys.stderr)
        sys.exit(3)
    asyncio.run(main(Path(sys.argv[1]), setup_facts()))

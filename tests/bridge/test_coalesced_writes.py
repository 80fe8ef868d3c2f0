"""The bridge's HTTP transport sends a response's writes as one."""

from __future__ import annotations

import asyncio
from typing import cast

import httpx

from api_bridge.coalesced_writes import CoalescingTransport

from .fake_worker import FakeWorker


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.extra = {"peername": ("127.0.0.1", 1)}

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> object:
        return self.extra.get(name)


def _coalescing() -> tuple[CoalescingTransport, _RecordingTransport]:
    real = _RecordingTransport()
    return CoalescingTransport(cast(asyncio.Transport, real),
                               asyncio.get_running_loop()), real


async def test_the_writes_of_one_step_leave_as_one() -> None:
    transport, real = _coalescing()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(memoryview(b"body"))
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]


async def test_close_sends_what_is_gathered_first() -> None:
    transport, real = _coalescing()
    transport.write(b"last words")
    transport.close()
    assert real.writes == [b"last words"] and real.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert real.writes == [b"last words"]


async def test_nothing_is_written_to_a_closing_transport() -> None:
    transport, real = _coalescing()
    transport.write(b"too late")
    real.closed = True
    await asyncio.sleep(0)
    assert real.writes == []


async def test_everything_else_is_the_real_transport() -> None:
    transport, _ = _coalescing()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_responses_over_keep_alive_are_whole(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    # The live bridge runs the coalescing protocol: many responses on one connection.
    for n in range(20):
        response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1 + n})
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(response.content))

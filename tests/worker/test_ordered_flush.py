"""A worker's flush follows the SUBs and UNSUBs sent before it (worker/handlers/ordered_flush.py).

nats-py writes a flush's PING ahead of the commands still queued for its flusher, so
"subscribed and flushed" did not mean nats-server had the SUB, nor did a finished drain
mean it had the UNSUB; and a PONG arriving after its flush timed out ended nats-py's
reading task. First on the wire (deterministic), then against a real nats-server: a
queue member that joins and leaves under load (without the fix 36-48 requests of a
run were lost, in every run).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from pqkms.nats_embedded import EmbeddedNats
from worker.handlers.graceful_stop import leave
from worker.handlers.ordered_flush import send_pings_behind_queued_commands

_subjects = itertools.count()


class _RecordingServer:
    """Just enough of nats-server for a connection: it answers PINGs (all but the
    connect's after ``pong_delay`` seconds), records the verb of every command in the
    order they arrive, and sends one message to each new subscription."""

    def __init__(self, pong_delay: float = 0.0) -> None:
        self.verbs: list[str] = []
        self._pong_delay = pong_delay
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"recorder","version":"2.10.0","proto":1,'
                     b'"headers":true,"max_payload":1048576}\r\n')
        while line := await reader.readline():
            words = line.split()
            verb = words[0].decode()
            self.verbs.append(verb)
            if verb == "PING":
                if self.verbs.count("PING") > 1:
                    await asyncio.sleep(self._pong_delay)
                writer.write(b"PONG\r\n")
            elif verb == "SUB":
                writer.write(b"MSG %s %s 5\r\nhello\r\n" % (words[1], words[-1]))
            await writer.drain()
        writer.close()


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[_RecordingServer, NatsClient]]:
    server = _RecordingServer()
    connection = await nats.connect(await server.start(), allow_reconnect=False)
    yield server, connection
    await connection.close()
    await server.stop()


async def _discard(message: Msg) -> None:
    pass


def _verbs_after_connect(server: _RecordingServer) -> list[str]:
    return server.verbs[2:]  # CONNECT and the connect's own PING


async def test_a_flush_follows_the_subscriptions_sent_before_it(
    recorded: tuple[_RecordingServer, NatsClient],
) -> None:
    server, connection = recorded
    assert send_pings_behind_queued_commands(connection)
    await connection.subscribe("pqkms.test.a", queue="workers")
    await connection.subscribe("pqkms.test.b", queue="workers")
    await connection.flush()
    assert _verbs_after_connect(server) == ["SUB", "SUB", "PING"]


async def test_a_drain_pings_after_its_unsubscribe(
    recorded: tuple[_RecordingServer, NatsClient],
) -> None:
    server, connection = recorded
    send_pings_behind_queued_commands(connection)
    subscription = await connection.subscribe("pqkms.test.a", queue="workers", cb=_discard)
    await subscription.drain()
    assert _verbs_after_connect(server) == ["SUB", "UNSUB", "PING"]


async def test_a_pong_after_its_flush_timed_out_leaves_the_connection_reading() -> None:
    """nats-py hands a late PONG to the flush future it has cancelled; the error ended
    its reading task, and the connection, still "connected", read nothing more."""
    server = _RecordingServer(pong_delay=0.3)
    connection = await nats.connect(await server.start(), allow_reconnect=False)
    try:
        send_pings_behind_queued_commands(connection)
        with pytest.raises(nats.errors.FlushTimeoutError):
            await connection.flush(timeout=0.05)
        await asyncio.sleep(0.5)  # the late PONG has come
        subscription = await connection.subscribe("pqkms.test.after")
        message = await subscription.next_msg(timeout=5)
    finally:
        await connection.close()
        await server.stop()
    assert message.data == b"hello"


@pytest.fixture
async def client(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.close()


async def _answer(message: Msg) -> None:
    await message.respond(b"answer")


async def test_leaving_and_rejoining_under_load_loses_no_request(
    nats_server: EmbeddedNats, client: NatsClient
) -> None:
    """A member that joins and leaves the queue group again and again while requests
    flow: every request is answered by it or by the member that stays (with nats-py's
    own flush, about one request in a thousand was routed to a subscription already
    gone and never answered)."""
    subject = f"pqkms.test.churn.{next(_subjects)}"
    steady = await nats.connect(nats_server.url)
    churning = await nats.connect(nats_server.url)
    for member in (steady, churning):
        send_pings_behind_queued_commands(member)
    await steady.subscribe(subject, queue="workers", cb=_answer)
    await steady.flush()  # subscribed on the server: no request meets "no responders"
    done = asyncio.Event()
    timed_out = answered = 0

    async def send_requests() -> None:
        nonlocal timed_out, answered
        while not done.is_set():
            try:
                await client.request(subject, b"r", timeout=3)
                answered += 1
            except nats.errors.TimeoutError:
                timed_out += 1

    async def join_and_leave() -> None:
        for _ in range(100):
            members = [await churning.subscribe(subject, queue="workers", cb=_answer)
                       for _ in range(3)]
            await churning.flush()
            await asyncio.sleep(0.003)
            await leave(members, timeout=5)
        done.set()

    try:
        await asyncio.gather(join_and_leave(), *(send_requests() for _ in range(50)))
    finally:
        await churning.close()
        await steady.close()
    assert answered > 1000
    assert timed_out == 0

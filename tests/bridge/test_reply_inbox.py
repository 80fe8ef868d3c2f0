"""Request/reply on the bridge's one inbox, against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from api_bridge.reply_inbox import ConnectionLost, ReplyInbox
from pqkms.nats_embedded import EmbeddedNats


@pytest.fixture
async def connection(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def _echo(client: NatsClient, subject: str, delay: float = 0.0) -> None:
    async def answer(msg: Msg) -> None:
        await asyncio.sleep(delay)
        await msg.respond(b"echo:" + msg.data)

    await client.subscribe(subject, cb=answer)
    await client.flush()


async def test_each_request_gets_its_own_reply(connection: NatsClient) -> None:
    await _echo(connection, "inbox.echo")
    inbox = ReplyInbox()
    await inbox.open(connection)
    replies = await asyncio.gather(*(
        inbox.request(connection, "inbox.echo", str(n).encode(), {"X-Test": "1"}, 5)
        for n in range(50)
    ))
    assert [reply.data for reply in replies] == [f"echo:{n}".encode() for n in range(50)]
    assert inbox._waiting == {}


async def test_no_responders_fails_at_once(connection: NatsClient) -> None:
    inbox = ReplyInbox()
    await inbox.open(connection)
    with pytest.raises(nats.errors.NoRespondersError):
        await asyncio.wait_for(inbox.request(connection, "inbox.nobody", b"x", {}, 5), 2)


async def test_no_reply_in_time_is_a_timeout_and_a_late_reply_is_dropped(
    connection: NatsClient,
) -> None:
    await _echo(connection, "inbox.slow", delay=0.3)
    inbox = ReplyInbox()
    await inbox.open(connection)
    with pytest.raises(nats.errors.TimeoutError):
        await inbox.request(connection, "inbox.slow", b"x", {}, 0.05)
    assert inbox._waiting == {}
    await asyncio.sleep(0.4)  # the late reply arrives and finds nobody waiting
    await _echo(connection, "inbox.fast")
    assert (await inbox.request(connection, "inbox.fast", b"y", {}, 5)).data == b"echo:y"


async def test_a_lost_connection_fails_every_waiting_request(connection: NatsClient) -> None:
    await _echo(connection, "inbox.stuck", delay=5)
    inbox = ReplyInbox()
    await inbox.open(connection)
    waiting = [asyncio.ensure_future(inbox.request(connection, "inbox.stuck", b"x", {}, 10))
               for _ in range(3)]
    await asyncio.sleep(0.1)
    inbox.fail_waiting()
    for request in waiting:
        with pytest.raises(ConnectionLost):
            await request
    assert inbox._waiting == {}


async def test_a_request_before_the_inbox_is_open_is_refused(connection: NatsClient) -> None:
    with pytest.raises(ConnectionLost):
        await ReplyInbox().request(connection, "inbox.echo", b"x", {}, 1)


async def test_a_cancelled_request_leaves_nothing_behind(connection: NatsClient) -> None:
    await _echo(connection, "inbox.cancel", delay=5)
    inbox = ReplyInbox()
    await inbox.open(connection)
    request = asyncio.ensure_future(inbox.request(connection, "inbox.cancel", b"x", {}, 10))
    await asyncio.sleep(0.05)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert inbox._waiting == {}

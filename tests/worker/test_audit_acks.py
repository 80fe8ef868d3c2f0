"""The audit's ack inbox on a real nats-server: what JetStream answers, read right."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js import api
from nats.js.errors import APIError, NoStreamResponseError

from pqkms.nats_embedded import EmbeddedNats
from worker.audit.acks import AckInbox, ack_error

_TIMEOUT = 5.0


@pytest.fixture
async def client(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.close()


@contextlib.asynccontextmanager
async def _silent_subject(client: Client) -> AsyncIterator[str]:
    """A subject whose plain subscriber never answers: a message sent there waits."""
    subject = f"acks.silent.{uuid.uuid4().hex}"
    listener = await client.subscribe(subject)
    try:
        yield subject
    finally:
        await listener.unsubscribe()


async def _stream(client: Client) -> tuple[str, str]:
    """A new stream of its own: (name, subject prefix)."""
    name = f"ACKS_{uuid.uuid4().hex[:12].upper()}"
    prefix = f"acks.{name.lower()}"
    await client.jetstream().add_stream(api.StreamConfig(
        name=name, subjects=[f"{prefix}.>"], storage=api.StorageType.MEMORY,
        duplicate_window=60.0,
    ))
    return name, prefix


async def test_a_stored_message_resolves_to_no_error(client: Client) -> None:
    stream, prefix = await _stream(client)
    inbox = AckInbox(client, stream)
    await inbox.start()
    first = await inbox.publish(f"{prefix}.a", b"one", {"Nats-Msg-Id": "m-1"}, _TIMEOUT)
    second = await inbox.publish(f"{prefix}.a", b"two", {"Nats-Msg-Id": "m-2"}, _TIMEOUT)
    assert await first is None
    assert await second is None
    info = await client.jetstream().stream_info(stream)
    assert info.state.messages == 2
    stored = await client.jetstream().get_msg(stream, 2)
    assert stored.data == b"two"
    await inbox.close()


async def test_a_copy_sent_again_is_acked_and_stored_once(client: Client) -> None:
    # A flush whose ack was lost sends the same records under the same message id.
    stream, prefix = await _stream(client)
    inbox = AckInbox(client, stream)
    await inbox.start()
    for _ in range(2):
        copy = await inbox.publish(f"{prefix}.a", b"r", {"Nats-Msg-Id": "same"}, _TIMEOUT)
        assert await copy is None
    assert (await client.jetstream().stream_info(stream)).state.messages == 1
    await inbox.close()


async def test_no_stream_for_the_subject_is_an_error(client: Client) -> None:
    stream, _ = await _stream(client)
    inbox = AckInbox(client, stream)
    await inbox.start()
    error = await (await inbox.publish(f"acks.nowhere.{uuid.uuid4().hex}", b"r", {}, _TIMEOUT))
    assert isinstance(error, NoStreamResponseError)
    await inbox.close()


async def test_a_message_stored_by_another_stream_is_refused(client: Client) -> None:
    # The expected-stream header: a subject captured by another stream is not an ack.
    ours, _ = await _stream(client)
    _, other_prefix = await _stream(client)
    inbox = AckInbox(client, ours)
    await inbox.start()
    error = await (await inbox.publish(f"{other_prefix}.a", b"r", {}, _TIMEOUT))
    assert isinstance(error, APIError)
    assert error.code == 400
    await inbox.close()


async def test_closing_answers_what_still_waits(client: Client) -> None:
    stream, _ = await _stream(client)
    inbox = AckInbox(client, stream)
    await inbox.start()
    async with _silent_subject(client) as silent:
        waiting = await inbox.publish(silent, b"r", {}, _TIMEOUT)
        await client.flush()
        assert not waiting.done()
        assert inbox.pending == 1
        await inbox.close()
        assert isinstance(await waiting, ConnectionError)
        with pytest.raises(RuntimeError):
            await inbox.publish(silent, b"r", {}, _TIMEOUT)


async def test_a_message_without_an_answer_resolves_to_a_timeout(client: Client) -> None:
    stream, _ = await _stream(client)
    inbox = AckInbox(client, stream)
    await inbox.start()
    async with _silent_subject(client) as silent:
        waiting = await inbox.publish(silent, b"r", {}, 0.05)
        error = await asyncio.wait_for(waiting, 5.0)
    assert isinstance(error, TimeoutError)
    assert inbox.pending == 0
    await inbox.close()


async def test_a_wait_given_up_by_its_caller_ends_with_its_answer(client: Client) -> None:
    stream, prefix = await _stream(client)
    inbox = AckInbox(client, stream)
    await inbox.start()
    given_up = await inbox.publish(f"{prefix}.a", b"one", {"Nats-Msg-Id": "m-1"}, _TIMEOUT)
    given_up.cancel()
    kept = await inbox.publish(f"{prefix}.a", b"two", {"Nats-Msg-Id": "m-2"}, _TIMEOUT)
    assert await kept is None  # (answered after the first: its answer came and went)
    assert inbox.pending == 0
    await inbox.close()


async def test_a_message_that_could_not_be_sent_leaves_nothing_waiting(
    nats_server: EmbeddedNats,
) -> None:
    connection = await nats.connect(nats_server.url)
    stream, prefix = await _stream(connection)
    inbox = AckInbox(connection, stream)
    await inbox.start()
    await connection.close()
    with pytest.raises(ConnectionClosedError):
        await inbox.publish(f"{prefix}.a", b"r", {}, _TIMEOUT)
    assert inbox.pending == 0


def _reply(data: bytes, headers: dict[str, str] | None = None) -> Msg:
    return Msg(_client=None, subject="_INBOX.x.1", data=data, headers=headers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "headers", "code"),
    [
        (b'{"error":{"code":503,"err_code":10077,"description":"resource limits"}}', None,
         503),
        (b"not json", None, None),
        (b"[1, 2]", None, None),
        (b'{"stream":"OTHER","seq":1}', None, None),
        (b'{"stream":"AUDIT"}', None, None),
        (b"", {"Status": "408", "Description": "Request Timeout"}, 408),
    ],
    ids=["api-error", "not-json", "not-an-object", "other-stream", "no-seq", "status"],
)
def test_anything_but_an_ack_of_the_stream_is_an_error(
    data: bytes, headers: dict[str, str] | None, code: int | None
) -> None:
    error = ack_error("AUDIT", _reply(data, headers))
    assert isinstance(error, APIError)
    assert error.code == code


def test_an_ack_of_the_stream_is_no_error() -> None:
    assert ack_error("AUDIT", _reply(b'{"stream":"AUDIT","seq":7}')) is None
    assert ack_error("AUDIT", _reply(b'{"stream":"AUDIT","seq":7,"duplicate":true}')) is None
    no_responders = ack_error("AUDIT", _reply(b"", {"Status": "503"}))
    assert isinstance(no_responders, NoStreamResponseError)

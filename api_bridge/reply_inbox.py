"""Request/reply on one wildcard inbox, without a task per request.

nats-py's ``request`` is a coroutine that waits with ``asyncio.wait_for``; racing it
against a lost connection took a task and an ``asyncio.wait`` per request — ≈ 13 % of
the bridge's CPU per request on the 2-core machine (docs/performance.md). Here a request
is a future in a table: the reply's callback resolves it, a timer fails it with
``nats.errors.TimeoutError``, a no-responders status with ``NoRespondersError``, and a
lost connection fails every waiting request at once with :class:`ConnectionLost`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping

import nats.errors
from nats.aio.client import NO_RESPONDERS_STATUS
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from schemas.nats_message import counted_size

__all__ = ["ConnectionLost", "ReplyInbox"]

_STATUS_HEADER = "Status"
# Replies waiting in the subscription: far above what the bridge has in flight.
_PENDING_MESSAGES = 1_000_000
_PENDING_BYTES = 1024 * 1024 * 1024


class ConnectionLost(Exception):
    """The connection dropped while the request waited for its reply."""


class ReplyInbox:
    """The replies to one connection's requests: ``<inbox>.<n>`` → the request waiting."""

    def __init__(self) -> None:
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._numbers = itertools.count()

    async def open(self, client: NatsClient) -> None:
        """Subscribe to this connection's inbox (nats-py renews it across reconnects)."""
        self._prefix = f"{client.new_inbox()}."
        await client.subscribe(f"{self._prefix}*", cb=self._on_reply,
                               pending_msgs_limit=_PENDING_MESSAGES,
                               pending_bytes_limit=_PENDING_BYTES)

    async def request(self, client: NatsClient, subject: str, payload: bytes,
                      headers: Mapping[str, str], wait_seconds: float) -> Msg:
        """Publish with a reply subject of this inbox and wait up to ``wait_seconds``.
        A message over the server's ``max_payload`` with its headers raises
        ``nats.errors.MaxPayloadError`` here: sent, it would cost the connection."""
        if not self._prefix:
            raise ConnectionLost
        if counted_size(payload, headers) > client.max_payload:
            raise nats.errors.MaxPayloadError
        loop = asyncio.get_running_loop()
        token = str(next(self._numbers))
        reply: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = reply
        timer = loop.call_later(wait_seconds, _fail, reply, nats.errors.TimeoutError)
        try:
            await client.publish(subject, payload, reply=self._prefix + token,
                                 headers=dict(headers))
            return await reply
        finally:
            timer.cancel()
            del self._waiting[token]

    def fail_waiting(self) -> None:
        """The connection is gone: every waiting request fails now."""
        for reply in self._waiting.values():
            _fail(reply, ConnectionLost)

    async def _on_reply(self, msg: Msg) -> None:
        reply = self._waiting.get(msg.subject[len(self._prefix):])
        if reply is None or reply.done():
            return  # late (timed out, cancelled) or not ours
        if msg.headers and msg.headers.get(_STATUS_HEADER) == NO_RESPONDERS_STATUS:
            reply.set_exception(nats.errors.NoRespondersError())
        else:
            reply.set_result(msg)


def _fail(reply: asyncio.Future[Msg], error: type[Exception]) -> None:
    if not reply.done():
        reply.set_exception(error())

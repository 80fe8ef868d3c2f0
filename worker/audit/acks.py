"""The JetStream acks of the audit's messages, read on one reply subscription.

A JetStream publish is a core NATS publish with a reply subject: the stream answers
there with its ack, or with an error. nats-py's ``publish_async`` pays, per message, a
semaphore wait, a random token from the kernel, a done callback and a ``PubAck``
dataclass built field by field from the standard library's JSON parser. The trail needs
to know only whether the stream stored the message, so its replies come to one wildcard
subscription per connection, a counter names each message, and orjson reads the answer.
Each message's wait ends by a timer of its own, which resolves its future with a
``TimeoutError``: the trail awaits the future alone, with no ``asyncio.wait`` around it.
This is on the path of every lone request's audit record (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError, NoStreamResponseError

__all__ = ["AckInbox", "ack_error"]

_STATUS = "Status"
_NO_RESPONDERS = "503"
_EXPECTED_STREAM = "Nats-Expected-Stream"


def ack_error(stream: str, msg: Msg) -> BaseException | None:
    """``None`` when ``msg`` is ``stream``'s ack of a stored message, else the error."""
    status = msg.headers.get(_STATUS) if msg.headers else None
    if status == _NO_RESPONDERS:
        return NoStreamResponseError()  # no stream (or no JetStream) for the subject
    if status is not None:
        return APIError(code=int(status) if status.isdigit() else None,
                        description=(msg.headers or {}).get("Description"))
    try:
        answer = orjson.loads(msg.data)
    except orjson.JSONDecodeError:
        return APIError(description="the JetStream ack is not JSON")
    if not isinstance(answer, dict):
        return APIError(description="the JetStream ack is not a JSON object")
    error = answer.get("error")
    if error is not None:
        fields = error if isinstance(error, dict) else {}
        return APIError(code=fields.get("code"), err_code=fields.get("err_code"),
                        description=fields.get("description"))
    if answer.get("stream") != stream or not isinstance(answer.get("seq"), int):
        return APIError(description=f"the JetStream ack is not {stream}'s")
    return None


class AckInbox:
    """Publishes to one stream on ``client`` and resolves a future per message with its
    ack: ``None`` once stored, or the error, a ``TimeoutError`` when none came in time
    (the future never raises)."""

    def __init__(self, client: Client, stream: str) -> None:
        self.client = client
        self._stream = stream
        self._prefix = client.new_inbox()
        self._next_token = 0
        self._waiting: dict[str, _Waiting] = {}
        self._subscription: Subscription | None = None

    @property
    def pending(self) -> int:
        """Messages sent and not yet answered."""
        return len(self._waiting)

    async def start(self) -> None:
        """Subscribe to the replies (before the first publish)."""
        self._subscription = await self.client.subscribe(f"{self._prefix}.*",
                                                         cb=self._on_reply)

    async def publish(self, subject: str, body: bytes, headers: Mapping[str, str],
                      timeout: float) -> asyncio.Future[BaseException | None]:
        """Send one message; the future resolves with its ack, or with a
        ``TimeoutError`` after ``timeout`` seconds. Cancel it to stop waiting."""
        if self._subscription is None:
            raise RuntimeError("AckInbox.start was not called")
        self._next_token += 1
        token = str(self._next_token)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BaseException | None] = loop.create_future()
        waiting = _Waiting(future, loop.call_later(timeout, self._expire, token, timeout))
        self._waiting[token] = waiting
        try:
            await self.client.publish(subject, body, reply=f"{self._prefix}.{token}",
                                      headers={**headers, _EXPECTED_STREAM: self._stream})
        except BaseException:
            del self._waiting[token]  # not sent: nothing will answer it
            waiting.timer.cancel()
            future.cancel()
            raise
        return future

    async def close(self) -> None:
        """Stop listening; messages still waiting get a ``ConnectionError``."""
        subscription, self._subscription = self._subscription, None
        waiting, self._waiting = self._waiting, {}
        for message in waiting.values():
            message.resolve(ConnectionError("the audit's ack inbox closed"))
        if subscription is not None and self.client.is_connected:
            # (The connection may go meanwhile: then there is nothing left to undo.)
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix) + 1:], None)
        if waiting is not None:
            waiting.resolve(ack_error(self._stream, msg))

    def _expire(self, token: str, timeout: float) -> None:
        waiting = self._waiting.pop(token, None)
        if waiting is not None:
            waiting.resolve(TimeoutError(f"no JetStream ack within {timeout:g} s"))


@dataclass(slots=True)
class _Waiting:
    """A message sent and not yet answered: its future and the timer that ends the wait
    (a message is popped from the inbox before it is resolved, so each is resolved once)."""

    future: asyncio.Future[BaseException | None]
    timer: asyncio.TimerHandle

    def resolve(self, outcome: BaseException | None) -> None:
        self.timer.cancel()
        if not self.future.done():  # (cancelled by the caller: nothing to tell)
            self.future.set_result(outcome)

"""What one HTTP connection may hold: the size of a request head, the time its head and
its body may take, and how many connections are served at once.

uvicorn's httptools protocol checks none of these. It feeds httptools whatever
arrives, however large a head grows (a head of tens of MiB holds the event loop, and so
every other client, for seconds); it arms no timer before a connection's first response
(its keep-alive timeout runs only between a response and the next request's first byte)
nor while a head or a body trickles in; its ``limit_concurrency`` answers in plain text.
Here, per request:

- the bytes of the head (request line and headers) are counted as they arrive; past
  ``max_head_bytes`` the request is answered 431 and the connection closed, and
  httptools never sees the rest;
- the head must be complete within ``head_timeout`` of its first byte (of the
  connection's opening, for the first request), else the connection is closed without
  an answer (there is no request to answer yet);
- the body must be complete within ``body_timeout`` of the head, else 408 (unless the
  app has answered already) and the connection is closed.

And per connection: beyond ``config.limit_concurrency`` connections, a new connection's
request is answered 503, then it is closed; the connections already served go on.
uvicorn's own check (any request on any connection gets 503 while the count is over) is
off.

Cost on the normal path: while a head is incomplete, an addition and two comparisons per
read; none once it is complete; two ``loop.time()`` per request. One timer per
connection, re-armed only when it fires, never per request.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import structlog
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn._types import ASGI3Application
from uvicorn.server import ServerState

from api_bridge.answer import Answer
from api_bridge.closing_answer import closing_answer_bytes
from api_bridge.coalesced_writes import CoalescedWritesProtocol
from api_bridge.errors import error_answer
from schemas.envelope import new_request_id
from schemas.errors import ErrorCode
from worker.config import Settings

__all__ = [
    "AT_CAPACITY_MESSAGE",
    "ConnectionLimits",
    "LimitedConnectionsProtocol",
    "body_timeout_message",
    "head_too_large_message",
]

AT_CAPACITY_MESSAGE = "The bridge is serving as many connections as it may; try again shortly"

# No deadline: between the end of a request and the first byte of the next one, where
# uvicorn's keep-alive timeout closes an idle connection.
_IDLE = math.inf

log = structlog.get_logger("api_bridge")


def head_too_large_message(limit: int) -> str:
    """The 431 message."""
    return f"Validation failed: the request line and headers are larger than {limit} bytes"


def body_timeout_message(seconds: float) -> str:
    """The 408 message."""
    return f"Validation failed: the request body did not arrive within {seconds:g} seconds"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The limits of one request on a connection (the connection cap is uvicorn's
    ``limit_concurrency``)."""

    max_head_bytes: int
    head_timeout: float
    body_timeout: float

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        """The limits ``settings`` set (``PQKMS_HTTP_MAX_HEAD_BYTES`` and the timeouts)."""
        return cls(max_head_bytes=settings.http_max_head_bytes,
                   head_timeout=settings.http_head_timeout_seconds,
                   body_timeout=settings.http_body_timeout_seconds)


async def _answer_at_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """The app of a connection beyond the cap: 503 to its request, then close."""
    answer = error_answer(ErrorCode.SERVICE_UNAVAILABLE, new_request_id(),
                          AT_CAPACITY_MESSAGE, headers={"Connection": "close"})
    await answer.send_to(send)


class LimitedConnectionsProtocol(CoalescedWritesProtocol):
    """The coalescing httptools protocol with the limits above.

    ``connection_limits`` is set on a subclass per server
    (``api_bridge.http_protocol.bridge_http_protocol``): uvicorn builds the protocol of
    each connection from the class alone.
    """

    connection_limits: ClassVar[ConnectionLimits]

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.connection_limits
        self._max_head_bytes = limits.max_head_bytes
        self._head_timeout = limits.head_timeout
        self._body_timeout = limits.body_timeout
        self._max_connections = self.limit_concurrency
        self.limit_concurrency = None  # counted once per connection instead, see above
        self._reading_head = True  # from the connection's opening to its first head's end
        self._head_bytes = 0
        self._deadline = _IDLE  # loop time by which the head or the body must be complete
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection against the cap; start the first head's clock."""
        super().connection_made(transport)
        if self._max_connections is not None and len(self.connections) > self._max_connections:
            log.warning("http_connections_at_limit", limit=self._max_connections)
            self.app = cast(ASGI3Application, _answer_at_capacity)
        self._deadline = self.loop.time() + self._head_timeout
        self._watchdog = self.loop.call_at(self._deadline, self._on_watchdog)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timer, then let uvicorn clean up."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count a head's bytes before httptools parses them; nothing more once the head
        is complete."""
        if self._reading_head:
            if self._deadline == _IDLE:  # the first bytes after a complete request
                self._start_head_clock()
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                self._receive_past_head_limit(data)
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        """httptools: the head is complete; the body's clock starts."""
        self._reading_head = False
        self._deadline = self.loop.time() + self._body_timeout
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """httptools: the body is complete; what comes next is the next request's head."""
        self._reading_head = True
        self._head_bytes = 0
        self._deadline = _IDLE
        super().on_message_complete()

    def _start_head_clock(self) -> None:
        self._deadline = self.loop.time() + self._head_timeout
        if self._watchdog is None:
            self._watchdog = self.loop.call_at(self._deadline, self._on_watchdog)

    def _receive_past_head_limit(self, data: bytes) -> None:
        """The head has passed its limit somewhere in ``data``: parse up to the limit, in
        case the head ends there (a head and the start of a large body in one read), and
        answer 431 if it does not."""
        within = len(data) - (self._head_bytes - self._max_head_bytes)
        if within > 0:
            super().data_received(data[:within])
        if self.transport.is_closing():
            return  # unparsable, answered already
        if self._reading_head and self._head_bytes > self._max_head_bytes:
            self._head_too_large()
        else:  # the head ended within the limit: the rest is its body, maybe more requests
            self.data_received(data[within:])

    def _head_too_large(self) -> None:
        log.warning("http_head_too_large", limit=self._max_head_bytes)
        answering = self.cycle is not None and not self.cycle.response_complete
        self._close_with(error_answer(ErrorCode.INVALID, new_request_id(),
                                      head_too_large_message(self._max_head_bytes),
                                      status=431),
                         earlier_answer_due=answering or bool(self.pipeline))

    def _on_watchdog(self) -> None:
        """The timer: close the connection if its head or body is late, else re-arm."""
        self._watchdog = None
        if self._deadline == _IDLE or self.transport.is_closing():
            return  # the next head's first byte re-arms it
        now = self.loop.time()
        if now < self._deadline:
            self._watchdog = self.loop.call_at(self._deadline, self._on_watchdog)
        elif self._reading_head:
            self.transport.close()
        elif self.flow.read_paused:
            # The bridge stopped reading (a pipelined request waits for the one before
            # it to be answered): the delay is not the client's.
            self._deadline = now + self._body_timeout
            self._watchdog = self.loop.call_at(self._deadline, self._on_watchdog)
        else:
            self._body_timed_out()

    def _body_timed_out(self) -> None:
        log.warning("http_body_timeout", seconds=self._body_timeout)
        if self.cycle is not None and not self.cycle.response_started:
            # (A request waiting in self.pipeline is not read from: _on_watchdog waits.)
            self._close_with(error_answer(ErrorCode.INVALID, new_request_id(),
                                          body_timeout_message(self._body_timeout),
                                          status=408),
                             earlier_answer_due=bool(self.pipeline))
        else:
            self.transport.close()  # the app has answered: only the close is left

    def _close_with(self, answer: Answer, *, earlier_answer_due: bool) -> None:
        """Send ``answer``, then close; only close while an earlier request's answer is
        still due (a pipelining client would take this one for it)."""
        if not earlier_answer_due:
            self.transport.write(closing_answer_bytes(answer,
                                                      self.server_state.default_headers))
        self.transport.close()

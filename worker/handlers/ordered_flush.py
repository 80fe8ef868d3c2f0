"""A flush that waits for the commands sent before it: nats-py's PING put back in line.

nats-py (2.16) queues SUB, UNSUB and PUB for its flusher task, but a flush writes its
PING straight to the socket, ahead of whatever is still queued. So ``subscribe()`` then
``flush()`` can return before nats-server has the SUB (a client's first request to a
worker that says it is ready gets "no responders"), and a subscription's ``drain()``
(UNSUB, then a flush) can end before nats-server has the UNSUB: requests nats-server
routes in between arrive after the subscription is gone and are dropped unanswered.
Seen in nats-server's protocol trace (the SUB received after the PONG) and measured
(nats-server 2.15.1): a client's first request to a responder that had just subscribed
and flushed got "no responders" in 1-9 tries of 60-200, none of 600 with the PING in
line; a queue member joining and draining about 150 times a second under 100 requests
in flight lost 107, 189 and 254 requests of about 200,000 in 8 s runs, none of 1.3
million in five runs with it (tests/worker/test_ordered_flush.py).

A second fault on the same path: nats-py resolves a PONG's future without looking, and
a flush that timed out has cancelled it, so a late PONG ends nats-py's reading task (an
InvalidStateError); the connection then looks connected and reads nothing (replies,
JetStream acks). The PINGs sent here hand their PONG on to the flush only if it still
waits.

Old nats clients sent the PING through the same queue (nats.py2 did after its "flusher
fixes"); this puts it back there for the connections the worker owns. It reaches into
nats-py's private attributes, so it checks for them and leaves a connection as it is
(with a warning) when a nats-py release no longer has them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from nats.aio.client import PING_PROTO
from nats.aio.client import Client as NatsClient

__all__ = ["send_pings_behind_queued_commands"]

_log = structlog.get_logger("pqkms.worker")
_NEEDED = ("_pongs", "_send_command", "_flush_pending", "_send_ping")


def send_pings_behind_queued_commands(connection: NatsClient) -> bool:
    """Make ``connection``'s PINGs (``flush()``, ``drain()``, the keep-alive) follow
    the commands queued before them, and survive a PONG that comes after its flush gave
    up. Returns whether the connection was changed."""
    if not all(hasattr(connection, name) for name in _NEEDED):
        _log.warning("nats_flush_not_ordered", reason="nats-py internals changed")
        return False
    client: Any = connection  # nats-py's private API, untyped
    send_ping_directly = client._send_ping

    async def send_ping(future: asyncio.Future[bool] | None = None) -> None:
        if not connection.is_connected:
            # Reconnecting: queued commands wait for the new socket, and a PING queued
            # with them would answer a later flush. nats-py's way, as before.
            await send_ping_directly(future)
            return
        client._pongs.append(_pong_for(future))
        await client._send_command(PING_PROTO)
        await client._flush_pending()

    client._send_ping = send_ping
    return True


def _pong_for(waiter: asyncio.Future[bool] | None) -> asyncio.Future[bool]:
    """The future nats-py's reader resolves on the PONG, passed on to ``waiter`` unless
    that was given up. nats-py resolves it without looking: a flush that timed out has
    cancelled its future, and the late PONG then ends nats-py's reading task with an
    InvalidStateError, leaving a connection that looks connected and reads nothing."""
    pong: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    if waiter is not None:
        def pass_on(done: asyncio.Future[bool]) -> None:
            if waiter.done():
                return
            if done.cancelled():  # the connection gave up on the PING
                waiter.cancel()
            else:
                waiter.set_result(True)
        pong.add_done_callback(pass_on)
    return pong

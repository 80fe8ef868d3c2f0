"""The bridge's one shared NATS connection, and request/reply with clean failures.

The connection is made in the background and never given up: the bridge starts
even when NATS is down and answers 503 until it is reachable; nats-py reconnects
by itself afterwards (unlimited attempts). A request never waits on a connection
that is down: it fails at once with 503, and a request in flight when the
connection drops fails at that moment instead of running into the timeout
(``api_bridge.reply_inbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nats.errors
import orjson
import structlog
from nats.aio.client import Client as NatsClient

from api_bridge.errors import BridgeError
from api_bridge.reply_inbox import ConnectionLost, ReplyInbox
from schemas.errors import ErrorCode
from schemas.reply_budget import ReplyBudget
from schemas.subjects import HEADER_REQUEST_ID, Subject
from worker.config import Settings
from worker.nats_security import nats_security, redacted_url, refusal_reason

__all__ = ["NatsGateway", "Reply"]

log = structlog.get_logger("api_bridge.nats")

_RECONNECT_WAIT_SECONDS = 0.5
_CONNECT_TIMEOUT_SECONDS = 2
_FIRST_CONNECT_RETRY_MAX_SECONDS = 2.0
_MIN_PENDING_BYTES = 8 * 1024 * 1024

BUS_DOWN = "The message bus is unavailable; try again shortly"
BUS_LOST = "The connection to the message bus was lost; try again shortly"
NO_WORKER = "No worker is available; try again shortly"

_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
    nats.errors.FlushTimeoutError,
    ConnectionError,
)


@dataclass(frozen=True, slots=True)
class Reply:
    """A worker's reply: the envelope bytes and the NATS headers."""

    body: bytes
    headers: Mapping[str, str]

    def header(self, name: str) -> str | None:
        """A reply header by name, case-insensitively."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


def _no_reply_within(seconds: float) -> str:
    return f"No reply from a worker within {seconds:g} seconds"


class NatsGateway:
    """Owns the NATS connection; turns bus failures into :class:`BridgeError`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._servers = [url.strip() for url in settings.nats_url.split(",") if url.strip()]
        # Conflicting credentials / unreadable TLS files fail here, at start.
        self._security = nats_security(settings).nats_py_options()
        self._client: NatsClient | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._inbox = ReplyInbox()
        self._budget = ReplyBudget(settings.bridge_replies_in_flight_bytes,
                                   settings.nats_max_payload())
        self._connected_once = asyncio.Event()
        self._reported_down = False
        self._closing = False

    @property
    def is_connected(self) -> bool:
        """True while the connection to NATS is up."""
        return self._client is not None and self._client.is_connected

    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect_until_up(), name="nats-connect")

    async def wait_connected(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the first connection; True when connected."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_once.wait(), seconds)
        return self.is_connected

    async def close(self) -> None:
        """Stop connecting and close the connection."""
        self._closing = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connecting
            self._connecting = None
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)

    async def request(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str],
        wait_seconds: float | None = None,
    ) -> Reply:
        """Send one request and wait for the reply.

        Raises :class:`BridgeError`: 503 ``ERR_SERVICE_001`` when NATS is down or no
        worker listens, 504 ``ERR_TIMEOUT_001`` when no reply comes in time, 400
        ``ERR_INVALID_001`` when the payload exceeds the server's max_payload.
        """
        client, lost = self._client, self._lost
        if client is None or lost is None or not client.is_connected:
            raise BridgeError(ErrorCode.SERVICE_UNAVAILABLE, BUS_DOWN)
        wait = self._settings.request_timeout_seconds if wait_seconds is None else wait_seconds
        charge = self._budget.charge_for(subject, len(payload))
        try:
            await self._budget.take(charge, wait)
        except TimeoutError:
            raise BridgeError(ErrorCode.TIMEOUT, _no_reply_within(wait)) from None
        try:
            message = await self._inbox.request(client, subject, payload, headers, wait)
        except ConnectionLost:
            raise BridgeError(ErrorCode.SERVICE_UNAVAILABLE, BUS_LOST) from None
        except nats.errors.NoRespondersError:
            raise BridgeError(ErrorCode.SERVICE_UNAVAILABLE, NO_WORKER) from None
        except nats.errors.TimeoutError:
            raise BridgeError(ErrorCode.TIMEOUT, _no_reply_within(wait)) from None
        except nats.errors.MaxPayloadError:
            raise BridgeError(
                ErrorCode.INVALID,
                "Validation failed: request is larger than the message bus accepts",
            ) from None
        except _UNAVAILABLE_ERRORS:
            raise BridgeError(ErrorCode.SERVICE_UNAVAILABLE, BUS_DOWN) from None
        finally:
            self._budget.give_back(charge)
        return Reply(body=message.data, headers=message.headers or {})

    async def ping_workers(
        self, request_id: str, wait_seconds: float = 1.0
    ) -> dict[str, Any] | None:
        """What a worker answers on the health subject within ``wait_seconds`` (its
        ``data``: ``status`` and, from current workers, ``database`` and ``audit``), or
        ``None`` when none answers an envelope in time."""
        try:
            reply = await self.request(
                Subject.HEALTH_PING, b"{}", {HEADER_REQUEST_ID: request_id}, wait_seconds
            )
            envelope = orjson.loads(reply.body)
        except (BridgeError, orjson.JSONDecodeError):
            return None
        data = envelope.get("data") if isinstance(envelope, dict) else None
        return data if isinstance(data, dict) else None

    async def _connect_until_up(self) -> None:
        """Connect, retrying with a capped back-off until NATS accepts us."""
        delay = _RECONNECT_WAIT_SECONDS
        url = ", ".join(redacted_url(server) for server in self._servers)
        while True:
            client = NatsClient()
            try:
                await self._connect(client)
                await self._inbox.open(client)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await client.close()
                raise
            except Exception as exc:
                log.warning("nats_connect_failed", url=url, error_type=type(exc).__name__,
                            retry_in_seconds=delay)
                with contextlib.suppress(Exception):
                    await client.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _FIRST_CONNECT_RETRY_MAX_SECONDS)
                continue
            self._lost = asyncio.get_running_loop().create_future()
            self._client = client
            self._connected_once.set()
            self._reported_down = False
            log.info("nats_connected", url=url)
            self._connection_changed(True)
            return

    async def _connect(self, client: NatsClient) -> None:
        settings = self._settings
        await client.connect(
            servers=self._servers,
            name="pqkms-bridge",
            allow_reconnect=True,
            # Unlimited: nats-py then also retries the *first* connection inside
            # connect(), so the background task simply waits there until NATS is up.
            max_reconnect_attempts=-1,
            reconnect_time_wait=_RECONNECT_WAIT_SECONDS,  # type: ignore[arg-type]
            connect_timeout=_CONNECT_TIMEOUT_SECONDS,
            pending_size=max(_MIN_PENDING_BYTES, 2 * settings.nats_max_payload()),
            **self._security,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            error_cb=self._on_error,
            closed_cb=self._on_closed,
        )

    def _mark_lost(self) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._inbox.fail_waiting()

    def _connection_changed(self, connected: bool) -> None:
        """The connection came up (``True``) or went down; for a subclass to export."""

    async def _on_disconnected(self) -> None:
        self._mark_lost()
        self._connection_changed(False)
        if not self._closing:
            log.warning("nats_disconnected")

    async def _on_reconnected(self) -> None:
        self._mark_lost()
        self._lost = asyncio.get_running_loop().create_future()
        self._reported_down = False
        self._connection_changed(True)
        log.info("nats_reconnected")

    async def _on_closed(self) -> None:
        self._mark_lost()
        self._connection_changed(False)

    async def _on_error(self, exc: Exception) -> None:
        # Called on every failed (re)connect attempt: warn once per outage.
        if not self.is_connected and not self._reported_down:
            self._reported_down = True
            log.warning("nats_unreachable", error_type=type(exc).__name__,
                        retry_every_seconds=_RECONNECT_WAIT_SECONDS,
                        refused=refusal_reason(exc))
        else:
            log.debug("nats_error", error_type=type(exc).__name__)

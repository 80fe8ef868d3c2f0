"""Publishing key lifecycle events (``schemas.events``) after the store has committed.

:class:`KeyEventPublisher` is what the key lifecycle service needs; the NATS
implementation publishes on the worker's own connection (core NATS, so it works with
or without JetStream). When the ``PQKMS_KEY_EVENTS`` stream exists, JetStream captures
every event too, de-duplicated by ``Nats-Msg-Id`` (the event id), so a subscriber that
was away can replay what it missed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog
from nats.aio.client import Client
from nats.js import api
from nats.js.errors import BadRequestError

from schemas.events import KEY_EVENTS_STREAM, KEY_EVENTS_WILDCARD, KeyEvent, key_events_subject
from worker.jetstream_setup import SetupStep

__all__ = [
    "NO_KEY_EVENTS",
    "KeyEventPublisher",
    "NatsKeyEventPublisher",
    "NoKeyEvents",
    "ensure_key_events_stream",
    "key_events_stream_step",
    "key_events_stream_config",
]

_log = structlog.get_logger("pqkms.worker")
# JetStream's de-duplication window for Nats-Msg-Id (its default): ample for an event
# published once, and bounded by the stream's max age when that is shorter.
_DUPLICATE_WINDOW_SECONDS = 120.0


class KeyEventPublisher(Protocol):
    """Somewhere key events go. ``publish`` may raise; the caller decides what that means."""

    async def publish(self, event: KeyEvent) -> None:
        """Send one event."""


class NoKeyEvents:
    """Publishes nothing (services built without a broker, unit tests)."""

    async def publish(self, event: KeyEvent) -> None:
        """Drop the event."""


NO_KEY_EVENTS = NoKeyEvents()


class NatsKeyEventPublisher:
    """Core NATS publish on ``pqkms.v1.events.keys.<tenant_id>``.

    The connection is given as a getter because the worker's services are built before
    its broker connects (see ``worker.app.build_broker``).
    """

    def __init__(self, connection: Callable[[], Client] | None = None) -> None:
        self._connection = connection

    def use_connection(self, connection: Callable[[], Client]) -> None:
        """Publish on this connection from now on."""
        self._connection = connection

    async def publish(self, event: KeyEvent) -> None:
        """Publish one event; raises when there is no connection or NATS refuses it."""
        if self._connection is None:
            raise RuntimeError("no NATS connection to publish key events on")
        await self._connection().publish(
            key_events_subject(event.tenant_id),
            event.model_dump_json().encode("utf-8"),
            # JetStream drops a second copy with the same id (a retried publish).
            headers={"Nats-Msg-Id": event.event_id},
        )


def key_events_stream_config(max_age_seconds: float, replicas: int = 1) -> api.StreamConfig:
    """``PQKMS_KEY_EVENTS``: every tenant's events, kept ``max_age_seconds`` (limits)."""
    return api.StreamConfig(
        name=KEY_EVENTS_STREAM,
        subjects=[KEY_EVENTS_WILDCARD],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.OLD,
        max_age=max_age_seconds,
        duplicate_window=min(_DUPLICATE_WINDOW_SECONDS, max_age_seconds),
        num_replicas=replicas,
    )


async def ensure_key_events_stream(connection: Client, max_age_seconds: float,
                                   replicas: int = 1) -> bool:
    """Create or update the events stream (``replicas`` copies on a NATS cluster);
    ``False`` (and a warning) when JetStream is unavailable or ``max_age_seconds`` is 0.
    Events are published either way."""
    if max_age_seconds <= 0:
        return False
    try:
        await _create_or_update(connection, max_age_seconds, replicas)
    except Exception as exc:  # no JetStream: live subscribers still get every event
        _log.warning("key_events_stream_unavailable", reason=type(exc).__name__)
        return False
    return True


def key_events_stream_step(connection: Callable[[], Client], max_age_seconds: float,
                           replicas: int = 1) -> SetupStep:
    """The events stream as a worker's JetStream set-up step (retried until it exists);
    ``connection`` is a getter, as the step is built before the worker connects."""
    unavailable_at_start = False

    async def attempt() -> bool:
        if max_age_seconds > 0:
            await _create_or_update(connection(), max_age_seconds, replicas)
            if unavailable_at_start:
                _log.info("key_events_stream_ready")
        return True

    def unavailable(retrying: bool) -> None:
        nonlocal unavailable_at_start
        unavailable_at_start = True
        _log.warning("key_events_stream_unavailable", retrying=retrying,
                     effect="events reach live subscribers only until the stream exists")

    return SetupStep("key_events_stream", attempt, unavailable)


async def _create_or_update(connection: Client, max_age_seconds: float, replicas: int) -> None:
    config = key_events_stream_config(max_age_seconds, replicas)
    js = connection.jetstream(timeout=10.0)
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with another configuration (e.g. a changed max age): update it.
        await js.update_stream(config)

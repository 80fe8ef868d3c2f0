"""The ``PQKMS_AUDIT`` JetStream stream: created on first use, one message per flush.

The records of one group commit go out together: consecutive records of a chain as JSON
Lines in one message (at most :data:`MAX_RECORDS_PER_MESSAGE` records or
:data:`MAX_MESSAGE_BYTES`), all of a flush's messages in flight at once, every ack
awaited. Measured on the loaded 2-core test machine (``docs/audit.md``): one message
per record cost ≈ 90-140 µs of event-loop time per record even with ``publish_async``;
one message per flush costs ≈ 5-30 µs per record in flushes of 32-128 records. The acks
come to an inbox of our own (:mod:`worker.audit.acks`), not through ``publish_async``.

``Nats-Msg-Id`` = ``<chain_id>:<first>-<last>``; a failed message is re-sent with the
same records, so JetStream's duplicate window drops a copy whose ack was lost. The
stream refuses deleting and purging messages (``deny_delete``, ``deny_purge``); only
deleting the whole stream, or its limits, remove records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from schemas.audit import (
    AUDIT_STREAM,
    AUDIT_SUBJECT_PREFIX,
    HEADER_AUDIT_RECORDS,
    audit_message_id,
    audit_subject,
)
from worker.audit.acks import AckInbox
from worker.audit.entry import AuditEntry

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_RECORDS_PER_MESSAGE",
    "AuditStream",
    "StreamSettings",
    "read_stream",
]

# Well under NATS's default 1 MiB max_payload whatever the server's configuration.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_RECORDS_PER_MESSAGE = 500

_log = structlog.get_logger("pqkms.worker")
_DAY_SECONDS = 86_400


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How the stream is created."""

    replicas: int = 1
    max_age_days: float = 0.0  # 0: records are kept until the operator removes them
    ack_timeout_seconds: float = 5.0


def stream_config(settings: StreamSettings) -> api.StreamConfig:
    """The ``PQKMS_AUDIT`` stream configuration."""
    return api.StreamConfig(
        name=AUDIT_STREAM,
        description="pqkms audit records (one per operation, hash-chained per worker run)",
        subjects=[f"{AUDIT_SUBJECT_PREFIX}.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=settings.replicas,
        max_age=settings.max_age_days * _DAY_SECONDS if settings.max_age_days else None,
        duplicate_window=120.0,
        deny_delete=True,
        deny_purge=True,
    )


class AuditStream:
    """Publishes audit entries on the worker's NATS connection."""

    def __init__(self, settings: StreamSettings | None = None,
                 connection: Callable[[], Client | None] | None = None, *,
                 manage_stream: bool = True) -> None:
        """``manage_stream=False``: publish to the stream as it is, never create or
        reconfigure it (an operator's command, whose settings may not be the workers')."""
        self._connection = connection
        self._settings = settings or StreamSettings()
        self._manage_stream = manage_stream
        self._js: JetStreamContext | None = None
        self._acks: AckInbox | None = None  # on the connection last used

    def use_connection(self, connection: Callable[[], Client | None]) -> None:
        """Publish on this connection (the broker's, read at each use) from now on."""
        self._connection = connection
        self._js = None

    async def _ready(self) -> AckInbox:
        client = None if self._connection is None else self._connection()
        if client is None or not client.is_connected:
            raise ConnectionError("not connected to NATS")
        if self._acks is None or self._acks.client is not client:
            if self._acks is not None:
                await self._acks.close()
            self._acks = None
            acks = AckInbox(client, AUDIT_STREAM)
            await acks.start()
            self._acks, self._js = acks, None
        if self._js is None:
            js = client.jetstream(timeout=self._settings.ack_timeout_seconds)
            if self._manage_stream:
                await _add_or_update(js, stream_config(self._settings))
            self._js = js
        return self._acks

    def forget(self) -> None:
        """After a failure: check (and if need be re-create) the stream on next use."""
        self._js = None

    async def publish(self, entries: Sequence[AuditEntry]) -> list[BaseException | None]:
        """Publish every entry; per entry ``None`` once JetStream acked it, else the error."""
        if not entries:
            return []
        results: list[BaseException | None] = [None] * len(entries)
        pending: list[tuple[asyncio.Future[BaseException | None], int, int]] = []
        try:
            acks = await self._ready()
            timeout = self._settings.ack_timeout_seconds
            for start, end, body in _messages(entries):
                first, last = entries[start], entries[end - 1]
                headers = {"Nats-Msg-Id": audit_message_id(first.chain_id, first.seq, last.seq),
                           HEADER_AUDIT_RECORDS: str(end - start)}
                future = await acks.publish(audit_subject(first.chain_id), body, headers,
                                            timeout)
                pending.append((future, start, end))
        except Exception as exc:
            # Records not handed to NATS get this error; those already sent are awaited.
            sent = pending[-1][2] if pending else 0
            results[sent:] = [exc] * (len(entries) - sent)
        # Every future resolves, by its ack or by its timer (worker.audit.acks): awaited
        # alone, without asyncio.wait's waiter, timer and callbacks around it, a lone
        # record's flush costs ≈ 40 µs less (docs/performance.md).
        for future, start, end in pending:
            error = await future
            results[start:end] = [error] * (end - start)
        if any(result is not None for result in results):
            self.forget()
        return results


def _messages(entries: Sequence[AuditEntry]) -> list[tuple[int, int, bytes]]:
    """``(start, end, body)`` per message: consecutive records of one chain, JSON Lines.

    A message ends at a size or count limit or where the seqs stop being consecutive, so
    the same records (a failed flush retried) make the same messages again.
    """
    groups: list[tuple[int, int, bytes]] = []
    lines: list[bytes] = []
    start = size = 0
    for index, entry in enumerate(entries):
        line = entry.to_message()
        if lines:
            previous = entries[index - 1]
            if (entry.chain_id != previous.chain_id or entry.seq != previous.seq + 1
                    or len(lines) >= MAX_RECORDS_PER_MESSAGE
                    or size + len(line) + 1 > MAX_MESSAGE_BYTES):
                groups.append((start, index, b"\n".join(lines)))
                start, lines, size = index, [], 0
        lines.append(line)
        size += len(line) + 1
    groups.append((start, len(entries), b"\n".join(lines)))
    return groups


async def _add_or_update(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # It exists with another configuration (replicas, max age changed): update it.
        try:
            await js.update_stream(config)
        except BadRequestError as exc:
            # e.g. a stream created with other subjects by hand: use it as it is.
            _log.warning("audit_stream_kept", reason=exc.description)


async def read_stream(client: Client, *, idle_seconds: float = 5.0) -> list[bytes] | None:
    """Every record (one JSON object each) in ``PQKMS_AUDIT`` at the time of the call,
    oldest message first; ``None`` when the stream does not exist."""
    js = client.jetstream(timeout=idle_seconds)
    try:
        info = await js.stream_info(AUDIT_STREAM)
    except NotFoundError:
        return None
    last = info.state.last_seq
    if info.state.messages == 0:
        return []
    subscription = await js.subscribe(
        f"{AUDIT_SUBJECT_PREFIX}.>", stream=AUDIT_STREAM, ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    records: list[bytes] = []
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=idle_seconds)
            except TimeoutError:
                break  # the last messages expired (max age) while we read
            sequence = message.metadata.sequence.stream
            if sequence > last:
                break
            records.extend(line for line in message.data.split(b"\n") if line.strip())
            if sequence == last:
                break
    finally:
        await subscription.unsubscribe()
    return records

"""The worker's audit sink: one hash chain per process run, written by group commit.

``append`` queues a record and waits. One flusher task takes everything queued (up to
``max_batch``), gives the records their sequence numbers and hashes, inserts them in one
database transaction, then publishes them to ``PQKMS_AUDIT`` and wakes the waiters:
each request waits for one commit and one ack round trip shared with every request that
arrived meanwhile. A request whose record is not both committed and acked fails.

While requests whose records are due soon are still running (``upcoming``: signatures
in the crypto pool), the flusher lingers up to ``linger_seconds`` for their records
before it writes, so that one commit and one JetStream message serve several of them
instead of two or three (docs/performance.md). With nothing upcoming it writes at once.

Keeping the chain consistent when something fails:

- the database refuses or loses the transaction: the sequence numbers are reused by the
  next flush, after reading back the chain's last stored record (a connection lost during
  ``COMMIT`` may have committed: then that batch is adopted as written and published);
- JetStream does not ack records that are committed: they are kept, and the next flush
  publishes them again (same content, same ``Nats-Msg-Id``) before writing anything new,
  failing its own requests until that works. A sequence number is never given two
  contents: a record is only re-sent exactly as it was committed.
- the stored chain does not end where the sink believes (edited meanwhile): the sink
  starts a new chain and logs ``audit_chain_restarted``.

After a failure the flusher does not wait for the next request to try again: it settles
on its own after a short back-off, so that committed records reach the stream and the
trail stops ``failing`` (changes are refused meanwhile) even on an idle worker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from nats.aio.client import Client

from schemas.audit import AuditKind
from worker.audit.entry import GENESIS_HASH, AuditEntry
from worker.audit.flush_metrics import NO_AUDIT_METRICS, AuditFlushMetrics
from worker.audit.stream import AuditStream
from worker.services.request_record import AuditSink, RequestRecord

if TYPE_CHECKING:  # (worker.store.audit_log imports this package: no cycle at run time)
    from worker.store.audit_log import AuditLog

__all__ = ["AuditTrail", "AuditUnavailable"]

_log = structlog.get_logger("pqkms.worker")
# Lingering ends early once this many records wait.
_LINGER_BATCH = 32
# After a failed flush the flusher tries again on its own, this long after the failure
# and doubling up to the maximum, until a flush succeeds.
_RECOVER_FIRST_SECONDS = 0.5
_RECOVER_MAX_SECONDS = 8.0


def _nothing_upcoming() -> int:
    return 0


class AuditUnavailable(RuntimeError):
    """An audit record could not be written (database or JetStream); the request fails."""


@dataclass(slots=True)
class _Waiting:
    kind: AuditKind
    record: RequestRecord | None
    at: datetime
    future: asyncio.Future[None] | None


class _KindSink:
    """An :class:`AuditSink` that records its requests under another kind."""

    def __init__(self, trail: AuditTrail, kind: AuditKind) -> None:
        self._trail = trail
        self._kind = kind

    async def append(self, record: RequestRecord) -> None:
        await self._trail.append(record, kind=self._kind)

    def failing(self) -> bool:
        return self._trail.failing()


class AuditTrail:
    """Group-committing :class:`AuditSink` of one worker process (one chain per run)."""

    def __init__(self, log: AuditLog, stream: AuditStream, worker_id: str, *,
                 max_batch: int = 1000, linger_seconds: float = 0.0,
                 upcoming: Callable[[], int] | None = None,
                 metrics: AuditFlushMetrics = NO_AUDIT_METRICS,
                 recover_seconds: float = _RECOVER_FIRST_SECONDS) -> None:
        self._log = log
        self._metrics = metrics
        self._stream = stream
        self._worker_id = worker_id
        self._max_batch = max_batch
        self._linger = linger_seconds
        self._recover_first = recover_seconds
        self._upcoming = upcoming or _nothing_upcoming
        self._waiting: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._more = asyncio.Event()  # a record arrived (or the linger is over)
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        # The chain: the next sequence number and the hash the next record links to.
        self._chain_id = str(uuid.uuid4())
        self._next_seq = 1
        self._last_hash = GENESIS_HASH
        self._unsure: list[AuditEntry] = []  # last batch whose commit raised
        self._unpublished: list[AuditEntry] = []  # committed, not acked by JetStream
        self._flushing_since: float | None = None  # monotonic, while a flush runs

    @property
    def chain_id(self) -> str:
        """The current chain (a new one after the stored chain was found changed)."""
        return self._chain_id

    def use_connection(self, connection: Callable[[], Client | None]) -> None:
        """Publish to JetStream on this NATS connection (the broker's)."""
        self._stream.use_connection(connection)

    def sink(self, kind: AuditKind) -> AuditSink:
        """A sink for another caller, e.g. the job runner's chunks (``job_chunk``)."""
        return _KindSink(self, kind)

    def start(self) -> None:
        """Start the flusher; it writes the chain's open record right away."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._run(), name="pqkms-audit")
            self._wake.set()

    async def append(self, record: RequestRecord, *, kind: AuditKind = AuditKind.REQUEST) -> None:
        """Queue ``record`` and return once it is committed and acked; raise otherwise."""
        if self._closing or self._flusher is None or self._flusher.done():
            raise AuditUnavailable("the audit trail is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(kind, record, datetime.now(UTC), future))
        self._wake.set()
        self._more.set()
        await future

    def failing(self) -> bool:
        """The last flush failed and none has succeeded since: records wait to be
        published again, or a commit's outcome is unknown, or the trail has stopped."""
        stopped = self._closing or self._flusher is None or self._flusher.done()
        return stopped or self._backlog()

    def stalled_for(self) -> float:
        """Seconds the running flush has taken so far (0.0 when none runs): a commit
        waiting on a database lock, or an ack that does not come, holds every request
        of the worker meanwhile."""
        since = self._flushing_since
        return 0.0 if since is None else time.monotonic() - since

    async def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then the close record; later appends raise."""
        self._closing = True
        flusher, self._flusher = self._flusher, None
        if flusher is None:
            return
        self._wake.set()
        self._more.set()
        try:
            await asyncio.wait_for(flusher, timeout)
            if self._next_seq > 1:  # an open chain: close it
                await asyncio.wait_for(
                    self._flush([_Waiting(AuditKind.CLOSE, None, datetime.now(UTC), None)]),
                    timeout,
                )
            if self._unpublished:
                _log.warning("audit_records_unpublished", chain_id=self._chain_id,
                             records=len(self._unpublished))
        except TimeoutError:  # (wait_for cancelled what it waited for)
            flusher.cancel()
            _log.warning("audit_close_incomplete", chain_id=self._chain_id)
        finally:
            _fail_all(self._waiting, "the audit trail stopped")
            self._waiting.clear()
            await self._log.close()  # returns its connection before the engine goes

    # -- the flusher ---------------------------------------------------------------------

    async def _run(self) -> None:
        recover_after = self._recover_first
        while True:
            if self._backlog() and not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), recover_after)
                except TimeoutError:
                    await self._recover()
                    recover_after = min(recover_after * 2, _RECOVER_MAX_SECONDS)
                    continue
            else:
                recover_after = self._recover_first
                await self._wake.wait()
            self._wake.clear()
            while self._waiting or self._next_seq == 1:
                await self._gather_upcoming()
                batch = self._waiting[: self._max_batch]
                del self._waiting[: len(batch)]
                self._flushing_since = time.monotonic()
                try:
                    await self._flush(batch)
                except Exception:
                    # A bug must not stop the flusher: later requests would wait forever.
                    _log.exception("audit_flush_crashed", chain_id=self._chain_id)
                    _fail_all(batch, "the audit trail failed")
                finally:
                    self._flushing_since = None
                if not batch:
                    break  # only the open record was due: no busy loop if it failed
            if self._closing and not self._waiting:
                return

    def _backlog(self) -> bool:
        """A failed flush left records to publish again or a commit to resolve."""
        return bool(self._unpublished) or bool(self._unsure)

    async def _recover(self) -> None:
        """Settle without a request waiting (no new record is written)."""
        try:
            await self._settle()
        except Exception as exc:
            _log.info("audit_recovery_failed", chain_id=self._chain_id,
                      reason=type(exc).__name__)
        else:
            _log.info("audit_recovered", chain_id=self._chain_id)

    async def _gather_upcoming(self) -> None:
        """Linger (at most ``linger_seconds``) while upcoming records are still running
        and fewer than ``_LINGER_BATCH`` wait."""
        if (self._linger <= 0 or self._closing or len(self._waiting) >= _LINGER_BATCH
                or self._upcoming() <= 0):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger
        timer = loop.call_at(deadline, self._more.set)
        try:
            while (not self._closing and len(self._waiting) < _LINGER_BATCH
                   and self._upcoming() > 0 and loop.time() < deadline):
                self._more.clear()
                await self._more.wait()
        finally:
            timer.cancel()

    async def _flush(self, batch: list[_Waiting]) -> None:
        entries: list[AuditEntry] = []
        started = committed = 0.0
        try:
            await self._settle()
            entries = self._seal(batch)
            started = time.perf_counter()
            await self._log.append(entries)
            committed = time.perf_counter()
        except asyncio.CancelledError:
            self._unsure = entries or self._unsure
            _fail_all(batch, "the audit trail stopped")
            raise
        except Exception as exc:
            # entries is empty when settling failed: that left _unsure as it was.
            self._unsure = entries or self._unsure
            _log.warning("audit_write_failed", chain_id=self._chain_id,
                         reason=type(exc).__name__)
            # Settling fails on the stream when earlier records still cannot be published.
            stalled = not entries and not self._unsure and self._unpublished
            self._report(lambda: self._metrics.audit_flush_failed(
                "stream" if stalled else "database"))
            _fail_all(batch, "the audit record could not be stored", exc)
            return
        self._advance(entries)
        results = await self._stream.publish(entries)
        self._unpublished = [entry for entry, error in zip(entries, results, strict=True)
                             if error is not None]
        if self._unpublished:
            _log.warning("audit_publish_failed", chain_id=self._chain_id,
                         records=len(self._unpublished),
                         reason=type(next(e for e in results if e)).__name__)
            self._report(lambda: self._metrics.audit_flush_failed("stream"))
        else:
            acked = time.perf_counter()
            self._report(lambda: self._metrics.audit_flushed(
                len(entries), committed - started, acked - committed))
        # Entries and waiters line up from the end: an open record may come first.
        offset = len(entries) - len(batch)
        for index, waiting in enumerate(batch):
            error = results[offset + index]
            if error is None:
                if waiting.future is not None and not waiting.future.done():
                    waiting.future.set_result(None)
            else:
                _fail(waiting, "the audit record could not be published", error)

    def _report(self, report: Callable[[], None]) -> None:
        # A metric must never fail the requests of a flush that was written.
        try:
            report()
        except Exception:
            _log.warning("audit_metrics_failed", chain_id=self._chain_id, exc_info=True)

    async def _settle(self) -> None:
        """Before writing anything new: learn what an unsure commit did, and publish the
        records that are committed but not yet acked."""
        if self._unsure:
            attempted = self._unsure
            stored = await self._log.last_record(self._chain_id)  # may raise: still unsure
            self._unsure = []
            expected = None if self._next_seq == 1 else (self._next_seq - 1, self._last_hash)
            if stored == (attempted[-1].seq, attempted[-1].record_hash):
                self._advance(attempted)  # it did commit
                self._unpublished.extend(attempted)
            elif stored != expected:
                self._restart_chain(stored)
        if self._unpublished:
            results = await self._stream.publish(self._unpublished)
            self._unpublished = [entry for entry, error
                                 in zip(self._unpublished, results, strict=True) if error]
            for error in results:
                if error is not None:
                    raise error

    def _seal(self, batch: list[_Waiting]) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        seq, prev_hash = self._next_seq, self._last_hash
        due = list(batch)
        if seq == 1:
            due.insert(0, _Waiting(AuditKind.OPEN, None, datetime.now(UTC), None))
        for waiting in due:
            entry = AuditEntry.seal(
                chain_id=self._chain_id, seq=seq, kind=waiting.kind,
                worker_id=self._worker_id, recorded_at=waiting.at, prev_hash=prev_hash,
                record=waiting.record,
            )
            entries.append(entry)
            seq, prev_hash = seq + 1, entry.record_hash
        return entries

    def _advance(self, entries: list[AuditEntry]) -> None:
        if entries:
            self._next_seq = entries[-1].seq + 1
            self._last_hash = entries[-1].record_hash

    def _restart_chain(self, stored: tuple[int, str] | None) -> None:
        old = self._chain_id
        self._chain_id = str(uuid.uuid4())
        self._next_seq, self._last_hash = 1, GENESIS_HASH
        self._unpublished = []
        _log.warning("audit_chain_restarted", old_chain_id=old, chain_id=self._chain_id,
                     stored_seq=None if stored is None else stored[0])


def _fail(waiting: _Waiting, message: str, cause: BaseException | None = None) -> None:
    # A fresh exception per waiter: one shared object would collect every raiser's traceback.
    if waiting.future is not None and not waiting.future.done():
        error = AuditUnavailable(message)
        error.__cause__ = cause
        waiting.future.set_exception(error)


def _fail_all(batch: list[_Waiting], message: str, cause: BaseException | None = None) -> None:
    for waiting in batch:
        _fail(waiting, message, cause)

"""Prometheus metrics of one worker process, served on its own port; optional OpenTelemetry.

The envelope handler reports every finished request as a :class:`RequestRecord`;
:class:`WorkerMetrics` turns it into counters and histograms. ``observe`` runs once per
request on the hot path, so every labelled child is resolved once (per operation, per
outcome) and kept in dicts: a call is two dict look-ups and three increments, no
string formatting. Labels are the operation subject, the outcome code (for a failed
batch item, its error code) and, for batch sizes, the source — all bounded sets. There
is no tenant label: it would leak who uses the service to whoever scrapes it, and grow
without bound.

Each process has its own :class:`~prometheus_client.CollectorRegistry` (no global
state, so tests can build as many as they like) and serves it on
``PQKMS_METRICS_HOST:PQKMS_METRICS_PORT`` from a daemon thread (:func:`serve_metrics`).

With ``PQKMS_OTEL=1`` and the OpenTelemetry SDK installed, :class:`RequestSpans` also
records one span per request; without it nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

from schemas.operations import JOB_OPERATIONS, OPERATIONS
from worker.audit.flush_metrics import FlushStage
from worker.services.request_record import NO_METRICS, RequestMetrics, RequestRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = [
    "AUDIT_FLUSH_BUCKETS",
    "BATCH_ITEMS_BUCKETS",
    "DURATION_BUCKETS",
    "NO_JOB_METRICS",
    "JobChunkMetrics",
    "MetricsServer",
    "RequestSpans",
    "WorkerMetrics",
    "otel_tracer",
    "request_observer",
    "serve_metrics",
]

_log = structlog.get_logger("pqkms.worker")

# 50 µs (a cached verify) to 10 s (the bridge's default request timeout).
DURATION_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# One item up to the largest batch a bulk configuration allows.
BATCH_ITEMS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# Records per audit group commit: one lone request up to the flusher's maximum.
AUDIT_FLUSH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
_OK = "OK"


class JobChunkMetrics(Protocol):
    """What the job runner reports about the chunks it processes."""

    def chunk_finished(self, outcome: str) -> None:
        """One chunk left the runner: ``done``, ``duplicate``, ``dropped``, ``failed``,
        ``deferred`` (handed back unprocessed while another chunk of its tenant waits for
        rate-limit tokens in this worker) or ``deleted`` (its job was deleted)."""

    def chunk_items(self, operation: str, items: int, failed: int) -> None:
        """A chunk of ``items`` items of the batch subject ``operation`` ran."""


class _NoJobMetrics:
    def chunk_finished(self, outcome: str) -> None:
        return None

    def chunk_items(self, operation: str, items: int, failed: int) -> None:
        return None


NO_JOB_METRICS: JobChunkMetrics = _NoJobMetrics()


@dataclass(slots=True)
class _OperationSeries:
    """The children of one operation, resolved once."""

    operation: str
    requests: Counter
    outcomes: dict[str, Counter]
    duration: Histogram
    batch_items: Histogram | None  # only for operations that take several items

    def outcome(self, code: str) -> Counter:
        child = self.outcomes.get(code)
        if child is None:
            child = self.outcomes[code] = self.requests.labels(self.operation, code)
        return child


class WorkerMetrics:
    """The worker's counters and histograms in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._requests = Counter(
            "pqkms_requests", "Requests answered, by operation subject and outcome "
            "(OK or the error code)", ["operation", "outcome"], registry=self.registry)
        self._duration = Histogram(
            "pqkms_request_duration_seconds", "Time from receiving a request to its reply "
            "envelope, by operation subject", ["operation"], buckets=DURATION_BUCKETS,
            registry=self.registry)
        self._batch_items = Histogram(
            "pqkms_batch_items", "Items per successful batch request (source=request) or "
            "per job chunk (source=job), by batch subject", ["operation", "source"],
            buckets=BATCH_ITEMS_BUCKETS, registry=self.registry)
        self._job_chunks = Counter(
            "pqkms_job_chunks", "Job chunks taken off the stream, by outcome", ["outcome"],
            registry=self.registry)
        self._job_items = Counter(
            "pqkms_job_items", "Job items processed, by batch subject and result "
            "(succeeded or failed)", ["operation", "result"], registry=self.registry)
        self._batch_item_errors = Counter(
            "pqkms_batch_item_errors", "Failed items of batch requests answered OK (HTTP "
            "200, the item's error in its result), by batch subject and error code",
            ["operation", "code"], registry=self.registry)
        self._item_error_children: dict[tuple[str, str], Counter] = {}
        self._tasks = Gauge(
            "pqkms_worker_tasks", "asyncio tasks alive in the worker: requests in progress "
            "plus a constant few background tasks", registry=self.registry)
        self._audit_records = Histogram(
            "pqkms_audit_flush_records", "Audit records per group commit (one database "
            "transaction and one JetStream ack shared by the requests waiting)",
            buckets=AUDIT_FLUSH_BUCKETS, registry=self.registry)
        self._audit_commit = Histogram(
            "pqkms_audit_commit_seconds", "Database transaction of one audit group commit",
            buckets=DURATION_BUCKETS, registry=self.registry)
        self._audit_publish = Histogram(
            "pqkms_audit_publish_seconds", "JetStream publish of one audit group commit, "
            "until acked", buckets=DURATION_BUCKETS, registry=self.registry)
        self._audit_failures = Counter(
            "pqkms_audit_flush_failures", "Audit group commits that failed (their requests "
            "were answered ERR_SERVICE_001), by stage", ["stage"], registry=self.registry)
        for stage in ("database", "stream"):
            self._audit_failures.labels(stage)
        self._nats_connected = Gauge(
            "pqkms_nats_connected", "1 while the worker's NATS connection is up, 0 while "
            "it is down (or not made yet)", registry=self.registry)
        ProcessCollector(registry=self.registry)
        self._series: dict[str, _OperationSeries] = {}
        batch_subjects = [op.subject.value for op in OPERATIONS if op.cost is not None]
        for operation in OPERATIONS + JOB_OPERATIONS:
            # Every operation shows up from the first scrape, at zero.
            self._add_series(operation.subject.value, operation.cost is not None).outcome(_OK)
        for subject in batch_subjects:
            self._batch_items.labels(subject, "job")
        for outcome in ("done", "duplicate", "dropped", "failed", "deferred", "deleted"):
            self._job_chunks.labels(outcome)

    def _add_series(self, operation: str, batched: bool) -> _OperationSeries:
        series = _OperationSeries(
            operation=operation,
            requests=self._requests,
            outcomes={},
            duration=self._duration.labels(operation),
            batch_items=self._batch_items.labels(operation, "request") if batched else None,
        )
        self._series[operation] = series
        return series

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request; never raises."""
        try:
            series = self._series.get(record.operation)
            if series is None:
                series = self._add_series(record.operation, batched=False)
            series.outcome(record.outcome).inc()
            series.duration.observe(record.duration_seconds)
            if series.batch_items is not None and record.outcome == _OK:
                series.batch_items.observe(record.items)
            if record.item_errors:
                self._count_item_errors(record.operation, record.item_errors)
        except Exception:  # a metric must never fail a request
            _log.warning("metrics_observe_failed", subject=record.operation)

    def _count_item_errors(self, operation: str, codes: Iterable[str]) -> None:
        # Summed per code first: a batch's failures mostly share one code.
        counts: dict[str, int] = {}
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
        for code, count in counts.items():
            child = self._item_error_children.get((operation, code))
            if child is None:
                child = self._item_error_children[operation, code] = (
                    self._batch_item_errors.labels(operation, code))
            child.inc(count)

    def chunk_finished(self, outcome: str) -> None:
        """Count one job chunk by how it ended."""
        self._job_chunks.labels(outcome).inc()

    def chunk_items(self, operation: str, items: int, failed: int) -> None:
        """Record the size of one job chunk and its items' results."""
        self._batch_items.labels(operation, "job").observe(items)
        self._job_items.labels(operation, "succeeded").inc(items - failed)
        self._job_items.labels(operation, "failed").inc(failed)

    def audit_flushed(self, records: int, commit_seconds: float,
                      publish_seconds: float) -> None:
        """Record one audit group commit (``worker.audit.flush_metrics``)."""
        self._audit_records.observe(records)
        self._audit_commit.observe(commit_seconds)
        self._audit_publish.observe(publish_seconds)

    def audit_flush_failed(self, stage: FlushStage) -> None:
        """Count one failed audit group commit."""
        self._audit_failures.labels(stage).inc()

    def watch_event_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Report the tasks of ``loop`` (counted at scrape time, from the server thread)."""

        def alive() -> float:
            try:
                return float(len(asyncio.all_tasks(loop)))
            except RuntimeError:  # the set kept changing under us; next scrape
                return float("nan")

        self._tasks.set_function(alive)

    def watch_nats_connection(self, is_connected: Callable[[], bool]) -> None:
        """Export ``is_connected()`` as ``pqkms_nats_connected`` (read at scrape time, from
        the server thread: no callback can leave it stale)."""
        self._nats_connected.set_function(lambda: 1.0 if is_connected() else 0.0)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """The ``/metrics`` HTTP server of one worker, on a daemon thread."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port (blocks up to half a second)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=2.0)


def serve_metrics(metrics: WorkerMetrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` at ``http://host:port/metrics``; raises ``OSError`` if the port is
    taken (a worker asked for metrics should not run without them)."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(server, thread)


class RequestSpans:
    """One OpenTelemetry span per finished request, then ``inner`` as before.

    The span is recorded after the fact, from the record's duration: the worker has no
    nested spans to parent, and it keeps the envelope handler free of tracing code.
    Attributes are ids and outcomes only, never request data.
    """

    def __init__(self, inner: RequestMetrics, tracer: Tracer) -> None:
        from opentelemetry.trace import SpanKind, StatusCode

        self._inner = inner
        self._tracer = tracer
        self._kind = SpanKind.SERVER
        self._error = StatusCode.ERROR

    def observe(self, record: RequestRecord) -> None:
        """Pass ``record`` on and record its span; never raises."""
        self._inner.observe(record)
        try:
            end = time.time_ns()
            span = self._tracer.start_span(
                record.operation, kind=self._kind,
                start_time=end - int(record.duration_seconds * 1e9),
                attributes=dict(_span_attributes(record)))
            if record.outcome != _OK:
                span.set_status(self._error, record.outcome)
            span.end(end_time=end)
        except Exception:
            _log.warning("otel_span_failed", subject=record.operation)


def _span_attributes(record: RequestRecord) -> Iterable[tuple[str, str | int]]:
    yield "messaging.system", "nats"
    yield "messaging.destination.name", record.operation
    yield "pqkms.request_id", record.request_id
    yield "pqkms.outcome", record.outcome
    yield "pqkms.items", record.items
    if record.tenant_id is not None:
        yield "pqkms.tenant_id", record.tenant_id
    if record.algorithm is not None:
        yield "pqkms.algorithm", record.algorithm


def otel_tracer(service_name: str) -> Tracer | None:
    """A tracer for ``PQKMS_OTEL=1``; ``None`` (and a warning) without the SDK.

    A tracer provider configured by someone else (``opentelemetry-instrument``) is used
    as it is; otherwise one is set up that exports over OTLP/HTTP, configured by the
    standard ``OTEL_EXPORTER_OTLP_*`` variables.
    """
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        _log.warning("otel_unavailable", reason="install pqkms[otel] for PQKMS_OTEL=1")
        return None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            _log.warning("otel_no_exporter", reason="opentelemetry-exporter-otlp-proto-http "
                         "is not installed; spans are not exported")
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    tracer: Tracer = provider.get_tracer(service_name)
    return tracer


def request_observer(metrics: WorkerMetrics | None, otel: bool) -> RequestMetrics:
    """What the envelope handler reports to: the metrics, spans as well when ``otel``,
    or nothing at all (metrics and tracing off cost nothing per request)."""
    observer: RequestMetrics = metrics if metrics is not None else NO_METRICS
    tracer = otel_tracer("pqkms-worker") if otel else None
    return observer if tracer is None else RequestSpans(observer, tracer)

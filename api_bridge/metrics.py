"""Prometheus metrics of the bridge, at ``GET /metrics`` on its own HTTP port.

Requests are counted by route *template* (``/api/v1/kms/keys/{version}``, never the
path a caller typed, so the label set stays bounded; ``unmatched`` for paths no route
serves) and HTTP status. NATS requests that fail before a worker answers are counted
by kind; ``pqkms_nats_connected`` says whether the bridge's NATS connection is up. Every
app has its own registry: tests build many apps in one process.

With ``PQKMS_OTEL=1`` and the OpenTelemetry SDK installed, each HTTP request is also
one span; otherwise nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_bridge.errors import BridgeError
from api_bridge.nats_gateway import BUS_LOST, NO_WORKER, NatsGateway, Reply
from api_bridge.request_context import context_of
from schemas.errors import ErrorCode
from worker.config import Settings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.trace import Tracer

__all__ = [
    "DURATION_BUCKETS",
    "UNMATCHED_ROUTE",
    "BridgeMetrics",
    "MeteredNatsGateway",
    "MetricsMiddleware",
    "add_metrics_route",
    "bridge_tracer",
    "nats_failure_kind",
    "record_span",
]

UNMATCHED_ROUTE = "unmatched"
# 250 µs (a 404 answered by the bridge alone) to 10 s (the default request timeout).
DURATION_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)


class BridgeMetrics:
    """The bridge's counters and histograms in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._requests = Counter(
            "pqkms_bridge_requests", "HTTP requests answered, by route template and status",
            ["route", "status"], registry=self.registry)
        self._duration = Histogram(
            "pqkms_bridge_request_duration_seconds", "Time to answer an HTTP request, by "
            "route template", ["route"], buckets=DURATION_BUCKETS, registry=self.registry)
        self._nats_failures = Counter(
            "pqkms_bridge_nats_failures", "NATS requests without a worker's reply, by kind "
            "(timeout, no_responders, disconnected, connection_lost, too_large)", ["kind"],
            registry=self.registry)
        for kind in ("timeout", "no_responders", "disconnected", "connection_lost",
                     "too_large"):
            self._nats_failures.labels(kind)
        self._nats_connected = Gauge(
            "pqkms_nats_connected", "1 while the bridge's NATS connection is up, 0 while it "
            "is down (or not made yet)", registry=self.registry)
        ProcessCollector(registry=self.registry)
        # Children resolved once per route and status: no string work per request.
        self._counted: dict[tuple[str, int], Counter] = {}
        self._timed: dict[str, Histogram] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        counter = self._counted.get((route, status))
        if counter is None:
            counter = self._counted[route, status] = self._requests.labels(route, str(status))
        counter.inc()
        histogram = self._timed.get(route)
        if histogram is None:
            histogram = self._timed[route] = self._duration.labels(route)
        histogram.observe(seconds)

    def nats_failure(self, kind: str) -> None:
        """Count one NATS request that got no reply from a worker."""
        self._nats_failures.labels(kind).inc()

    def nats_connection(self, connected: bool) -> None:
        """The NATS connection came up or went down."""
        self._nats_connected.set(1 if connected else 0)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def nats_failure_kind(error: BridgeError) -> str:
    """What went wrong with a NATS request, from the error the gateway raised."""
    if error.code is ErrorCode.TIMEOUT:
        return "timeout"
    if error.code is ErrorCode.INVALID:
        return "too_large"
    if error.message == NO_WORKER:
        return "no_responders"
    if error.message == BUS_LOST:
        return "connection_lost"
    return "disconnected"


class MeteredNatsGateway(NatsGateway):
    """The NATS gateway, counting the requests that fail before a worker answers."""

    def __init__(self, settings: Settings, metrics: BridgeMetrics) -> None:
        super().__init__(settings)
        self._metrics = metrics

    async def request(
        self,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str],
        wait_seconds: float | None = None,
    ) -> Reply:
        """As :meth:`NatsGateway.request`; a :class:`BridgeError` is counted, then raised."""
        try:
            return await super().request(subject, payload, headers, wait_seconds)
        except BridgeError as exc:
            self._metrics.nats_failure(nats_failure_kind(exc))
            raise

    def _connection_changed(self, connected: bool) -> None:
        """Export the connection's state (from the connect, disconnect, reconnect and
        close callbacks)."""
        self._metrics.nats_connection(connected)


class MetricsMiddleware:
    """Plain ASGI: times each HTTP request and counts it by route template and status."""

    def __init__(self, app: ASGIApp, metrics: BridgeMetrics, tracer: Tracer | None = None,
                 ) -> None:
        self.app = app
        self._metrics = metrics
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        start_ns = time.time_ns() if self._tracer is not None else 0
        status = 500  # unless a response starts: an exception is answered with a 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router has put the matched route into the scope by now.
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            self._metrics.observe(route, status, time.perf_counter() - started)
            if self._tracer is not None:
                record_span(self._tracer, scope, route, status, start_ns,
                            context_of(Request(scope)).request_id)


def record_span(tracer: Tracer, scope: Scope, route: str, status: int, start_ns: int,
                request_id: str) -> None:
    """One request as a finished server span (``PQKMS_OTEL=1``)."""
    from opentelemetry.trace import SpanKind, StatusCode

    method = str(scope.get("method", ""))
    attributes: dict[str, str | int] = {
        "http.request.method": method, "http.route": route,
        "http.response.status_code": status, "pqkms.request_id": request_id,
    }
    span = tracer.start_span(f"{method} {route}", kind=SpanKind.SERVER,
                             start_time=start_ns, attributes=attributes)
    if status >= 500:
        span.set_status(StatusCode.ERROR)
    span.end()


def add_metrics_route(app: FastAPI, metrics: BridgeMetrics) -> None:
    """Register ``GET /metrics`` (no API key; not in the OpenAPI document)."""

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)


def bridge_tracer(settings: Settings) -> Tracer | None:
    """The tracer of ``PQKMS_OTEL=1`` (``None`` when off or without the SDK)."""
    if not settings.otel:
        return None
    from worker.metrics import otel_tracer

    return otel_tracer("pqkms-bridge")

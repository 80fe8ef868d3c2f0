"""``create_app(settings)``: the FastAPI application of the bridge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from api_bridge.direct_post import DirectPost
from api_bridge.direct_routes import BridgeApp, direct_post_routes
from api_bridge.errors import error_answer
from api_bridge.health import add_health_route
from api_bridge.metrics import (
    BridgeMetrics,
    MeteredNatsGateway,
    MetricsMiddleware,
    add_metrics_route,
    bridge_tracer,
)
from api_bridge.nats_gateway import NatsGateway
from api_bridge.openapi import install_openapi
from api_bridge.request_context import RequestLogMiddleware, context_of
from api_bridge.routes import add_operation_routes
from schemas.errors import ErrorCode
from schemas.operations import OPERATIONS
from worker.config import Settings

__all__ = ["create_app"]

DESCRIPTION = """\
The pqkms REST API (compatible with the Qpher REST API): post-quantum KEM,
signatures and key management. Every route is a NATS request to a worker on the
subject named in its description; bodies and replies are the same JSON envelope.
Send your API key in `X-API-Key`.
"""


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 (and any other HTTPException) as an error envelope."""
    assert isinstance(exc, HTTPException)
    context = context_of(request)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        code, message = ErrorCode.NOT_FOUND, f"No route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        allowed = headers.get("Allow", "")
        code, message = ErrorCode.INVALID, (
            f"Method {request.method} is not allowed here; allowed: {allowed}"
        )
    elif exc.status_code < 500:
        code, message = ErrorCode.INVALID, f"Validation failed: {exc.detail}"
    else:
        code, message = ErrorCode.INTERNAL, None
    if len(message or "") > 300:
        message = (message or "")[:300] + "…"
    context.error_code = code.value
    return error_answer(code, context.request_id, message, status=exc.status_code,
                        headers=headers).response()


async def _validation_exception(request: Request, exc: Exception) -> Response:
    """Never expected (no route declares validated parameters), but never a 422 either."""
    context = context_of(request)
    context.error_code = ErrorCode.INVALID.value
    return error_answer(ErrorCode.INVALID, context.request_id).response()


def create_app(settings: Settings) -> BridgeApp:
    """Build the bridge app; NATS is connected in its lifespan (in the background)."""
    metrics = BridgeMetrics()
    gateway: NatsGateway = MeteredNatsGateway(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = BridgeApp(
        title="pqkms",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        # "/api/v1/kem/encrypt/" is a 404 envelope, not a bodiless 307 redirect.
        redirect_slashes=False,
        # FastAPI's own OpenTelemetry hooks (0.16x) would duplicate the bridge's metrics
        # and PQKMS_OTEL spans, and cost a provider check per request; older FastAPI
        # versions keep the unknown option in ``app.extra``.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.gateway = gateway
    body_limit = settings.nats_max_payload()
    post_operations = add_operation_routes(app, gateway, body_limit)
    add_health_route(app, gateway)
    add_metrics_route(app, metrics)
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_exception)
    tracer = bridge_tracer(settings)
    # Metrics inside the log middleware (added last, so outermost): a crash it turns
    # into a 500 is counted as one. The POST operation routes are answered ahead of
    # FastAPI, with the same log line, count and crash answer (api_bridge.direct_post).
    app.add_middleware(MetricsMiddleware, metrics=metrics, tracer=tracer)
    app.add_middleware(RequestLogMiddleware)
    app.serve_directly(DirectPost(direct_post_routes(app, post_operations), gateway, metrics,
                                  tracer, body_limit))
    install_openapi(app, [operation.request for operation in OPERATIONS])
    return app

"""``GET /healthz``: is NATS connected, and does a worker answer the health ping?"""

from __future__ import annotations

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from api_bridge.errors import JSON_MEDIA_TYPE, envelope_headers
from api_bridge.nats_gateway import NatsGateway
from api_bridge.openapi import HealthStatus
from api_bridge.request_context import context_of

__all__ = ["add_health_route"]

PING_TIMEOUT_SECONDS = 1.0


def add_health_route(app: FastAPI, gateway: NatsGateway) -> None:
    """Register ``GET /healthz`` (no API key needed)."""

    async def healthz(request: Request) -> Response:
        context = context_of(request)
        if not gateway.is_connected:
            state = HealthStatus(status="unavailable", nats="disconnected", workers="unknown")
        elif await gateway.ping_workers(context.request_id, PING_TIMEOUT_SECONDS):
            state = HealthStatus(status="ok", nats="connected", workers="responding")
        else:
            state = HealthStatus(status="unavailable", nats="connected", workers="not responding")
        return Response(
            content=orjson.dumps(state.model_dump()),
            status_code=200 if state.status == "ok" else 503,
            headers=envelope_headers(context.request_id),
            media_type=JSON_MEDIA_TYPE,
        )

    app.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        response_model=HealthStatus,
        summary="Bridge health: NATS connected and a worker answering",
        responses={503: {"model": HealthStatus, "description": "NATS down or no worker"}},
        tags=["health"],
        operation_id="healthz",
        openapi_extra={"security": []},
    )

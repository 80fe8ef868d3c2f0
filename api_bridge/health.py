"""``GET /healthz``: is NATS connected, and does a worker answer that it can serve?"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from api_bridge.errors import JSON_MEDIA_TYPE, envelope_headers
from api_bridge.nats_gateway import NatsGateway
from api_bridge.openapi import HealthStatus
from api_bridge.request_context import context_of

__all__ = ["add_health_route", "health_from_ping"]

PING_TIMEOUT_SECONDS = 1.0
# What a worker may say of its parts; anything else (a rogue responder's text) is not
# repeated to whoever asks.
_DATABASE_STATES = frozenset({"ok", "unavailable"})
_AUDIT_STATES = frozenset({"ok", "failing", "stalled", "off"})


def health_from_ping(ping: dict[str, Any] | None) -> HealthStatus:
    """The bridge's health, NATS being connected, from a worker's ping answer."""
    if ping is None:
        return HealthStatus(status="unavailable", nats="connected", workers="not responding")
    status = ping.get("status")
    if status == "ok":
        return HealthStatus(status="ok", nats="connected", workers="responding")
    if status != "degraded":
        return HealthStatus(status="unavailable", nats="connected", workers="not responding")
    return HealthStatus(
        status="unavailable", nats="connected", workers="degraded",
        database=_known(ping.get("database"), _DATABASE_STATES),
        audit=_known(ping.get("audit"), _AUDIT_STATES),
    )


def _known(state: object, known: frozenset[str]) -> str:
    return state if isinstance(state, str) and state in known else "unknown"


def add_health_route(app: FastAPI, gateway: NatsGateway) -> None:
    """Register ``GET /healthz`` (no API key needed)."""

    async def healthz(request: Request) -> Response:
        context = context_of(request)
        if not gateway.is_connected:
            state = HealthStatus(status="unavailable", nats="disconnected", workers="unknown")
        else:
            state = health_from_ping(
                await gateway.ping_workers(context.request_id, PING_TIMEOUT_SECONDS)
            )
        return Response(
            content=orjson.dumps(state.model_dump(exclude_none=True)),
            status_code=200 if state.status == "ok" else 503,
            headers=envelope_headers(context.request_id),
            media_type=JSON_MEDIA_TYPE,
        )

    app.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        response_model=HealthStatus,
        summary="Bridge health: NATS connected and a worker able to serve",
        responses={503: {"model": HealthStatus,
                         "description": "NATS down, no worker, or a worker's database or "
                                        "audit trail failing"}},
        tags=["health"],
        operation_id="healthz",
        openapi_extra={"security": []},
    )

"""The POST operation routes answered in one plain ASGI step.

On the 2-core machine the bridge spent as much CPU per request as a worker, and about a
fifth of it on layers that add nothing to these routes' answers: two middleware
closures around ``send``, Starlette's ``Request`` and ``Response`` objects, its
header maps and body stream (docs/performance.md). A POST operation route has no path
parameters, no dependencies and no FastAPI features to run, so
:class:`DirectPost` does in one coroutine what the app's stack does to every other
request, with the same shared pieces: the request id, the crash answer and the log
line of ``RequestLogMiddleware`` (``request_context``), the count and span of
``MetricsMiddleware``, the body checks (``http_input``), the worker round trip
(``forwarding``), and the answer's headers (``answer``). FastAPI still registers and
documents these routes, and its endpoint for them answers the same way
(``tests/bridge/test_direct_post.py`` sends every case both ways).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from api_bridge import http_input
from api_bridge.errors import error_answer
from api_bridge.forwarding import forward
from api_bridge.metrics import BridgeMetrics, record_span
from api_bridge.nats_gateway import NatsGateway
from api_bridge.request_context import (
    CONTEXT_KEY,
    RequestContext,
    log_crash,
    log_request,
    request_id_from_header,
)
from schemas.errors import ErrorCode
from schemas.operations import Operation
from schemas.subjects import HEADER_API_KEY, HEADER_REQUEST_ID

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["DirectPost", "DirectRoute"]

_API_KEY = HEADER_API_KEY.lower().encode("ascii")
_REQUEST_ID = HEADER_REQUEST_ID.lower().encode("ascii")


@dataclass(frozen=True, slots=True)
class DirectRoute:
    """A POST operation route: FastAPI's route (the metrics label) and its operation."""

    route: APIRoute
    operation: Operation


class DirectPost:
    """Plain ASGI for the POST operation routes; only ever given a ``POST`` to one of
    ``routes``' paths (``BridgeApp`` sends every other request to FastAPI)."""

    def __init__(self, routes: Mapping[str, DirectRoute], gateway: NatsGateway,
                 metrics: BridgeMetrics, tracer: Tracer | None, body_limit: int) -> None:
        self.routes = dict(routes)
        self._gateway = gateway
        self._metrics = metrics
        self._tracer = tracer
        self._body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: read, forward, answer, count, log."""
        started = time.perf_counter()
        start_ns = time.time_ns() if self._tracer is not None else 0
        direct = self.routes[scope["path"]]
        scope["route"] = direct.route
        raw_request_id, api_key, declared_length = _request_headers(scope["headers"])
        context = RequestContext(request_id_from_header(raw_request_id))
        scope[CONTEXT_KEY] = context
        status = 500  # unless an answer starts: an exception is answered with a 500
        answering = False
        try:
            answer = await forward(self._gateway, direct.operation,
                                   self._body(scope, receive, declared_length), api_key,
                                   context)
            status, answering = answer.status, True
            await answer.send_to(send)
        except Exception as exc:
            log_crash(exc, context, scope)
            if not answering:
                await error_answer(ErrorCode.INTERNAL, context.request_id).send_to(send)
        finally:
            self._metrics.observe(direct.route.path, status, time.perf_counter() - started)
            if self._tracer is not None:
                record_span(self._tracer, scope, direct.route.path, status, start_ns,
                            context.request_id)
            log_request(scope, status, context, started)

    async def _body(self, scope: Scope, receive: Receive,
                    declared_length: bytes | None) -> bytes:
        # The body first: a body that is not JSON is answered before the API key is
        # checked, a query (not allowed here) after it, as every validation error.
        body = await http_input.read_json_object(receive, declared_length, self._body_limit)
        http_input.reject_query(scope)
        return body


def _request_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[bytes | None, str | None, bytes | None]:
    """X-Request-ID, X-API-Key and Content-Length, the first of each (ASGI servers
    give header names in lower case), in one pass."""
    request_id: bytes | None = None
    api_key: str | None = None
    length: bytes | None = None
    for name, value in headers:
        if name == _API_KEY:
            if api_key is None:
                api_key = value.decode("latin-1")
        elif name == _REQUEST_ID:
            if request_id is None:
                request_id = bytes(value)
        elif name == b"content-length" and length is None:
            length = bytes(value)
    return request_id, api_key, length

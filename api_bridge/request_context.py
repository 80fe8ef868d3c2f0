"""Per-request context (request id, error code) and the one-line-per-request log.

The middleware is plain ASGI (no BaseHTTPMiddleware task overhead). It is also the
bridge's last line of defence: an exception nobody handled becomes a 500
``ERR_INTERNAL_001`` envelope with a generic message, never a traceback on the wire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_bridge.errors import error_answer
from schemas.envelope import is_sane_request_id, new_request_id
from schemas.errors import ErrorCode
from worker.log_throttle import ThrottleWindow
from worker.logging_setup import exception_fields

__all__ = [
    "CONTEXT_KEY",
    "CRASH_LINES",
    "RequestContext",
    "RequestLogMiddleware",
    "context_of",
    "is_sane_request_id",
    "log_crash",
    "log_request",
    "request_id_from_header",
]

CONTEXT_KEY = "pqkms.context"  # where a request's RequestContext sits in its ASGI scope
_REQUEST_ID_HEADER = b"x-request-id"
_MAX_LOGGED_PATH = 200

log = structlog.get_logger("api_bridge")
CRASH_LINES = ThrottleWindow()  # unhandled_exception lines: see log_crash


@dataclass(slots=True)
class RequestContext:
    """What the request log needs to know about one request."""

    request_id: str
    error_code: str | None = None


def request_id_from_header(value: bytes | None) -> str:
    """The caller's X-Request-ID if it is a sane token, else a fresh UUID4.

    Sane: 1-128 visible ASCII characters. Anything else (empty, too long, spaces,
    non-ASCII) is replaced rather than refused: a tracing header should not fail a
    request, and the id ends up in NATS headers and log lines.
    """
    if value:
        text = value.decode("latin-1")
        if is_sane_request_id(text):
            return text
    return new_request_id()


def context_of(request: Request) -> RequestContext:
    """The context the middleware attached to this request."""
    context = request.scope.get(CONTEXT_KEY)
    if context is None:  # only when the app runs without its middleware
        raw = request.headers.get("x-request-id", "").encode("latin-1")
        context = RequestContext(request_id_from_header(raw))
        request.scope[CONTEXT_KEY] = context
    assert isinstance(context, RequestContext)
    return context


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class RequestLogMiddleware:
    """Assigns the request id, logs one line per request, turns crashes into 500s."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        context = RequestContext(request_id_from_header(_header(scope, _REQUEST_ID_HEADER)))
        scope[CONTEXT_KEY] = context
        status = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                headers = list(message.get("headers", ()))
                if not any(key.lower() == _REQUEST_ID_HEADER for key, _ in headers):
                    headers.append((_REQUEST_ID_HEADER, context.request_id.encode("ascii")))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as exc:
            log_crash(exc, context, scope)
            if not response_started:
                response = error_answer(ErrorCode.INTERNAL, context.request_id).response()
                await response(scope, receive, send_with_request_id)
        finally:
            log_request(scope, status, context, started_at)


def log_crash(exc: Exception, context: RequestContext, scope: Scope) -> None:
    """An exception nobody handled: marks the request internal and logs where it was
    raised (types and frames only, as the worker logs them: messages and locals may
    hold request data)."""
    context.error_code = ErrorCode.INTERNAL.value
    # A bug on a route fails every request that takes it: one line a second, with how
    # many it stands for (``count``), as the worker's exception lines.
    count = CRASH_LINES.note(time.monotonic())
    if count is None:
        return
    log.error(
        "unhandled_exception",
        **exception_fields(exc),
        count=count,
        request_id=context.request_id,
        path=_logged_path(scope),
    )


def log_request(scope: Scope, status: int, context: RequestContext,
                started_at: float) -> None:
    """The one line per request (``started_at``: its ``time.perf_counter()``)."""
    client = scope.get("client")
    log.info(
        "http_request",
        method=scope.get("method"),
        path=_logged_path(scope),
        # Who sent it (a failed API key included): the peer's address, a proxy's when
        # one is in front (its own log then says whose).
        client=client[0] if client else None,
        status=status,
        error_code=context.error_code,
        request_id=context.request_id,
        latency_ms=round((time.perf_counter() - started_at) * 1000, 3),
    )


def _logged_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    return path if len(path) <= _MAX_LOGGED_PATH else path[:_MAX_LOGGED_PATH] + "…"

"""REST routes generated from ``schemas.OPERATIONS``: one route per operation, plus
the second key-by-version route (``GET /api/v1/kms/keys/{version}?algorithm=``).

POST routes forward the body bytes unchanged. GET routes build the body from their
path and query parameters (``version`` → ``key_version``), leaving out absent ones.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from api_bridge import http_input
from api_bridge.errors import BridgeError
from api_bridge.forwarding import forward
from api_bridge.nats_gateway import NatsGateway
from api_bridge.openapi import (
    REQUEST_ID_PARAMETER,
    REQUEST_ID_RESPONSE_HEADER,
    error_responses,
    field_schema,
    json_body,
    success_envelope_model,
)
from api_bridge.request_context import context_of
from schemas.errors import ErrorCode
from schemas.operations import OPERATIONS, Operation
from schemas.subjects import HEADER_API_KEY, SUBJECT_PREFIX, Subject

__all__ = ["HttpRoute", "add_operation_routes", "http_routes"]

# Path parameters whose body field has another name.
_PATH_FIELD = {"version": "key_version"}
# Routes the REST API has beyond OPERATIONS' own path, per subject.
_ALIAS_PATHS = {Subject.KEYS_GET: ("/api/v1/kms/keys/{version}",)}
# Statuses each operation can answer, beyond those every operation can.
_ALWAYS = (400, 401, 429, 500, 502, 503, 504)
_READ_ONLY = {Subject.KEYS_LIST, Subject.KEYS_ACTIVE, Subject.KEYS_GET}
_CONFLICTS = {Subject.KEYS_GENERATE, Subject.KEYS_ROTATE, Subject.KEYS_RETIRE,
              Subject.KEYS_ARCHIVE}
_PARAM = re.compile(r"\{(\w+)\}")

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One HTTP route of an operation."""

    operation: Operation
    path: str
    operation_id: str
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]

    @property
    def statuses(self) -> tuple[int, ...]:
        """Every status this route can answer with."""
        subject = self.operation.subject
        extra = [] if subject in _READ_ONLY else [403]
        if subject != Subject.KEYS_LIST:
            extra.append(404)
        if subject in _CONFLICTS:
            extra.append(409)
        return tuple(sorted({*_ALWAYS, *extra}))


def _operation_id(subject: Subject, alias: int) -> str:
    name = subject.value.removeprefix(SUBJECT_PREFIX + ".").replace(".", "_").replace("-", "_")
    return name if alias == 0 else f"{name}_by_version"


def http_routes() -> list[HttpRoute]:
    """Every HTTP route, in match order (literal paths before parameterised ones)."""
    routes: list[HttpRoute] = []
    aliases: list[HttpRoute] = []
    for operation in OPERATIONS:
        paths = (operation.path, *_ALIAS_PATHS.get(operation.subject, ()))
        for index, path in enumerate(paths):
            path_params = tuple(_PARAM.findall(path))
            bound = {_PATH_FIELD.get(name, name) for name in path_params}
            query = () if operation.method != "GET" else tuple(
                name for name in operation.request.model_fields if name not in bound
            )
            route = HttpRoute(operation, path, _operation_id(operation.subject, index),
                              path_params, query)
            (routes if index == 0 else aliases).append(route)
    # /kms/keys/{version} must come after /kms/keys/active and friends.
    return routes + aliases


def _literal_siblings(route: HttpRoute, routes: list[HttpRoute]) -> dict[str, str]:
    """For a path ending in a parameter: sibling literal segments → their methods."""
    prefix, last = route.path.rsplit("/", 1)
    if not _PARAM.fullmatch(last):
        return {}
    siblings: dict[str, set[str]] = {}
    for other in routes:
        head, tail = other.path.rsplit("/", 1)
        if head == prefix and not _PARAM.fullmatch(tail):
            siblings.setdefault(tail, set()).add(other.operation.method)
    return {name: ", ".join(sorted(methods)) for name, methods in siblings.items()}


def _make_endpoint(
    route: HttpRoute, gateway: NatsGateway, body_limit: int, siblings: dict[str, str]
) -> Endpoint:
    operation = route.operation

    async def build_payload(request: Request) -> bytes:
        if operation.method != "GET":
            body_bytes = await http_input.read_json_object(
                request.receive, request.headers.get("content-length"), body_limit)
            http_input.reject_query(request.scope)
            return body_bytes
        body: dict[str, Any] = {}
        for name in route.path_params:
            raw = request.path_params[name]
            if name == "version":
                if raw in siblings:
                    raise BridgeError(
                        ErrorCode.INVALID,
                        f"Method {request.method} is not allowed here; allowed: {siblings[raw]}",
                        status=405, headers={"Allow": siblings[raw]},
                    )
                body[_PATH_FIELD[name]] = http_input.version_from_path(raw)
            else:
                body[_PATH_FIELD.get(name, name)] = raw
        body.update(http_input.query_fields(request, route.query_params))
        return orjson.dumps(body)

    async def endpoint(request: Request) -> Response:
        # The POST routes are served by api_bridge.direct_post ahead of this endpoint;
        # it answers them the same way (tests/bridge/test_direct_post.py).
        api_key = request.headers.get(HEADER_API_KEY)  # case-insensitive lookup
        answer = await forward(gateway, operation, build_payload(request), api_key,
                               context_of(request))
        return answer.response()

    endpoint.__name__ = route.operation_id
    endpoint.__doc__ = operation.request.__doc__
    return endpoint


def _openapi_extra(route: HttpRoute) -> dict[str, Any]:
    operation = route.operation
    parameters: list[dict[str, Any]] = []
    for name in route.path_params:
        field = _PATH_FIELD.get(name, name)
        parameters.append({"name": name, "in": "path", "required": True,
                           "schema": field_schema(operation.request, field)})
    for name in route.query_params:
        parameters.append({
            "name": name, "in": "query",
            "required": operation.request.model_fields[name].is_required(),
            "schema": field_schema(operation.request, name),
        })
    parameters.append(REQUEST_ID_PARAMETER)
    extra: dict[str, Any] = {"parameters": parameters}
    if operation.method != "GET":
        extra["requestBody"] = json_body(operation.request)
    return extra


def add_operation_routes(app: FastAPI, gateway: NatsGateway,
                         body_limit: int) -> dict[str, Operation]:
    """Register every operation's route(s) on the app, documented for OpenAPI; returns
    the POST routes (no path parameters), path → operation, for
    ``api_bridge.direct_post``."""
    routes = http_routes()
    for route in routes:
        operation = route.operation
        responses = error_responses(
            [s for s in route.statuses], operation.not_found_code
        )
        responses[operation.success_status] = {"headers": dict(REQUEST_ID_RESPONSE_HEADER)}
        app.add_api_route(
            route.path,
            _make_endpoint(route, gateway, body_limit, _literal_siblings(route, routes)),
            methods=[operation.method],
            response_model=success_envelope_model(operation.result),
            status_code=operation.success_status,
            responses=responses,
            summary=operation.summary,
            description=f"NATS subject `{operation.subject.value}`.",
            operation_id=route.operation_id,
            tags=[operation.subject.value.split(".")[2]],
            openapi_extra=_openapi_extra(route),
        )
    return {route.path: route.operation for route in routes
            if route.operation.method == "POST" and not route.path_params}

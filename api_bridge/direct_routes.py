"""The POST operation routes served without FastAPI's per-request machinery.

FastAPI stays the bridge's framework: it registers every route, documents it in the
OpenAPI schema, answers 404/405 and the GET routes. But a POST operation route has no
path parameters, no dependencies and an endpoint that takes the raw request and returns
a finished response (``api_bridge.routes``), so routing, dependency solving, the exit
stack and the exception middleware around it add nothing to the reply — and cost more
CPU per request than the endpoint itself on the 2-core machine (docs/performance.md).
This plain ASGI layer, inside the request-log and metrics middlewares, calls those
endpoints directly for an exact ``POST`` path match and hands everything else to FastAPI.
The matched route goes into the scope, as FastAPI's router does, for the metrics label.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["DirectPostRoutes", "direct_post_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]


def direct_post_routes(app: FastAPI, paths: Collection[str]) -> dict[str, tuple[APIRoute,
                                                                               Endpoint]]:
    """The app's ``POST`` routes at ``paths`` (operation routes): path → (route, endpoint)."""
    found: dict[str, tuple[APIRoute, Endpoint]] = {}
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path in paths and route.methods == {"POST"}:
            found[route.path] = (route, route.endpoint)
    return found


class DirectPostRoutes:
    """Plain ASGI: exact ``POST`` matches go straight to their endpoint."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, tuple[APIRoute, Endpoint]]) -> None:
        self.app = app
        self._routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self._routes.get(scope["path"])
            if found is not None:
                route, endpoint = found
                scope["route"] = route
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

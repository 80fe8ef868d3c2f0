"""The POST operation routes served without FastAPI's per-request machinery.

FastAPI stays the bridge's framework: it registers every route, documents it in the
OpenAPI schema, answers 404/405 and the GET routes. But a POST operation route has no
path parameters, no dependencies and an endpoint that takes the raw request and returns
a finished response (``api_bridge.routes``), so Starlette's middleware stack (server
errors, exception handlers, body limits), its routing, dependency solving and exit stack
add nothing to the reply — and cost more CPU per request than the endpoint itself on the
2-core machine (docs/performance.md). :class:`BridgeApp` therefore sends an exact
``POST`` match on such a path, before all of that, through its own request-log and
metrics layers (the same classes the app's stack has) straight to its endpoint; every
other request takes FastAPI's path. The matched route goes into the scope, as FastAPI's
router does, for the metrics label.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["BridgeApp", "DirectPostRoutes", "direct_post_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]
DirectRoutes = Mapping[str, tuple[APIRoute, Endpoint]]


def direct_post_routes(app: FastAPI, paths: Collection[str]) -> dict[str, tuple[APIRoute,
                                                                               Endpoint]]:
    """The app's ``POST`` routes at ``paths`` (operation routes): path → (route, endpoint)."""
    found: dict[str, tuple[APIRoute, Endpoint]] = {}
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path in paths and route.methods == {"POST"}:
            found[route.path] = (route, route.endpoint)
    return found


class DirectPostRoutes:
    """Plain ASGI: calls the endpoint of the request's path (one of ``routes``)."""

    def __init__(self, routes: DirectRoutes) -> None:
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point; only ever given a ``POST`` to one of its paths."""
        route, endpoint = self.routes[scope["path"]]
        scope["route"] = route
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


class BridgeApp(FastAPI):
    """FastAPI, with the ``POST`` operation routes answered ahead of its middleware."""

    direct: ASGIApp | None = None
    direct_routes: DirectPostRoutes | None = None
    direct_paths: frozenset[str] = frozenset()

    def serve_directly(self, routes: DirectRoutes,
                       wrap: Callable[[ASGIApp], ASGIApp]) -> None:
        """Answer ``routes`` by their endpoints, inside the layers ``wrap`` adds."""
        self.direct_routes = DirectPostRoutes(routes)
        self.direct = wrap(self.direct_routes)
        self.direct_paths = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if (self.direct is not None and scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in self.direct_paths):
            scope["app"] = self
            await self.direct(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

"""Which requests skip FastAPI's per-request machinery, and the app that sends them by.

FastAPI stays the bridge's framework: it registers every route, documents it in the
OpenAPI schema, answers 404/405 and the GET routes. But Starlette's middleware stack
(server errors, exception handlers), its routing, dependency solving and exit stack add
nothing to a POST operation route's answer, and cost more CPU per request than the
endpoint itself on the 2-core machine (docs/performance.md). :class:`BridgeApp`
therefore sends an exact ``POST`` match on such a path, before all of that, to
``api_bridge.direct_post.DirectPost``; every other request takes FastAPI's path.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from api_bridge.direct_post import DirectPost, DirectRoute
from schemas.operations import Operation

__all__ = ["BridgeApp", "direct_post_routes"]


def direct_post_routes(app: FastAPI,
                       operations: Mapping[str, Operation]) -> dict[str, DirectRoute]:
    """The app's ``POST`` routes of ``operations`` (path → operation): path → route."""
    found: dict[str, DirectRoute] = {}
    for route in app.router.routes:
        if (isinstance(route, APIRoute) and route.path in operations
                and route.methods == {"POST"}):
            found[route.path] = DirectRoute(route, operations[route.path])
    return found


class BridgeApp(FastAPI):
    """FastAPI, with the ``POST`` operation routes answered ahead of its middleware."""

    direct: DirectPost | None = None
    direct_paths: frozenset[str] = frozenset()

    def serve_directly(self, direct: DirectPost) -> None:
        """Answer ``POST`` requests to ``direct``'s paths by it."""
        self.direct = direct
        self.direct_paths = frozenset(direct.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if (self.direct is not None and scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in self.direct_paths):
            scope["app"] = self
            await self.direct(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

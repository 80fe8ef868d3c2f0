"""The POST operation routes skip FastAPI's routing layers, and only those routes."""

from __future__ import annotations

from pathlib import Path

from fastapi.routing import APIRoute

from api_bridge.app import create_app
from api_bridge.direct_routes import DirectPostRoutes, direct_post_routes
from schemas import OPERATIONS
from worker.config import Settings


def _app_routes(tmp_path: Path) -> tuple[object, dict[str, tuple[APIRoute, object]]]:
    app = create_app(Settings(data_dir=tmp_path))
    middleware = [m for m in app.user_middleware if m.cls is DirectPostRoutes]
    assert len(middleware) == 1
    return app, middleware[0].kwargs["routes"]


def test_every_post_operation_and_nothing_else_is_served_directly(tmp_path: Path) -> None:
    _, routes = _app_routes(tmp_path)
    posts = {op.path for op in OPERATIONS if op.method == "POST"}
    assert set(routes) == posts
    for path, (route, endpoint) in routes.items():
        assert route.path == path and route.methods == {"POST"}
        assert endpoint is route.endpoint  # the very endpoint FastAPI would call


def test_the_direct_layer_is_inside_the_log_and_metrics_middlewares(tmp_path: Path) -> None:
    app, _ = _app_routes(tmp_path)
    names = [m.cls.__name__ for m in app.user_middleware]  # outermost first
    assert names.index("RequestLogMiddleware") < names.index("MetricsMiddleware") < names.index(
        "DirectPostRoutes")


def test_paths_without_a_post_route_are_left_out(tmp_path: Path) -> None:
    app, _ = _app_routes(tmp_path)
    assert direct_post_routes(app, ["/api/v1/kms/keys", "/nowhere"]) == {}  # type: ignore[arg-type]

"""The POST operation routes are answered ahead of FastAPI's stack, and only those routes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from api_bridge.app import create_app
from api_bridge.direct_post import DirectPost
from api_bridge.direct_routes import BridgeApp, direct_post_routes
from schemas import OPERATIONS
from worker.config import Settings

from .fake_worker import FakeWorker


def _app(tmp_path: Path) -> BridgeApp:
    return create_app(Settings(data_dir=tmp_path))


def test_every_post_operation_and_nothing_else_is_served_directly(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert isinstance(app.direct, DirectPost)
    posts = {op.path: op for op in OPERATIONS if op.method == "POST"}
    assert set(app.direct.routes) == set(app.direct_paths) == set(posts)
    for path, direct in app.direct.routes.items():
        assert direct.route.path == path and direct.route.methods == {"POST"}
        assert direct.operation is posts[path]
    # Every other request goes through FastAPI's stack with the log and metrics layers.
    names = [m.cls.__name__ for m in app.user_middleware]  # type: ignore[attr-defined]
    assert names == ["RequestLogMiddleware", "MetricsMiddleware"]


def test_paths_without_a_post_route_are_left_out(tmp_path: Path) -> None:
    app = _app(tmp_path)
    operations = {op.path: op for op in OPERATIONS}
    assert direct_post_routes(app, {"/api/v1/kms/keys": operations["/api/v1/kms/keys"]}) == {}


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_other_methods_on_a_direct_path_get_fastapis_405(
    client: httpx.AsyncClient, method: str
) -> None:
    response = await client.request(method, "/api/v1/kem/encrypt")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "ERR_INVALID_001"
    assert response.headers["x-request-id"] == response.json()["request_id"]


async def test_a_direct_post_carries_the_request_id_and_no_store(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    response = await client.post("/api/v1/kem/encrypt", json={"key_version": 1},
                                 headers={"X-Request-ID": "rid-direct"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "rid-direct"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-length"] == str(len(response.content))


async def test_a_trailing_slash_is_not_a_direct_path(
    client: httpx.AsyncClient, worker: FakeWorker
) -> None:
    response = await client.post("/api/v1/kem/encrypt/", json={"key_version": 1})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ERR_NOT_FOUND_001"

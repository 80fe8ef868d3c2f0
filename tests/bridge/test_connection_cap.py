"""Beyond ``PQKMS_HTTP_MAX_CONNECTIONS`` connections, a new connection's request gets 503
in the envelope and the connection closes; the connections already served go on."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from api_bridge.connection_limits import AT_CAPACITY_MESSAGE, ConnectionLimits
from api_bridge.main import create_server
from pqkms.nats_embedded import find_free_port
from schemas.errors import ErrorCode
from worker.config import Settings

from .conftest import wait_until
from .live import LiveBridge
from .raw_http import closes_within, read_response

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def capped_bridge() -> Iterator[LiveBridge]:
    """A bridge that serves 2 connections at once (NATS unreachable: /healthz is 503)."""
    live = LiveBridge.for_nats("nats://127.0.0.1:1", http_max_connections=2).start()
    yield live
    live.stop()


def _connect(bridge: LiveBridge) -> socket.socket:
    return socket.create_connection((bridge.settings.http_host, bridge.settings.http_port),
                                    timeout=10)


def _assert_served(connection: socket.socket) -> None:
    connection.sendall(HEALTH)
    response = read_response(connection)
    assert response.json()["status"] == "unavailable"


def test_a_connection_beyond_the_cap_gets_503_in_the_envelope(
    capped_bridge: LiveBridge,
) -> None:
    with _connect(capped_bridge) as first, _connect(capped_bridge) as second:
        _assert_served(first)
        with _connect(capped_bridge) as third:
            third.sendall(HEALTH)
            refused = read_response(third)
            rest, _ = closes_within(third, 5)
        _assert_served(second)
        _assert_served(first)

    assert refused.status == 503
    assert refused.headers["connection"] == "close"
    envelope = refused.json()
    assert envelope["error"] == {"code": ErrorCode.SERVICE_UNAVAILABLE,
                                 "error_code": ErrorCode.SERVICE_UNAVAILABLE,
                                 "message": AT_CAPACITY_MESSAGE}
    assert envelope["request_id"] == refused.headers["x-request-id"]
    assert rest == b""


def test_a_closed_connection_frees_its_place(capped_bridge: LiveBridge) -> None:
    with _connect(capped_bridge) as first:
        _assert_served(first)
        for _ in range(3):  # the second place, again and again
            wait_until(lambda: _served_on_a_new_connection(capped_bridge), timeout=5)


def _served_on_a_new_connection(bridge: LiveBridge) -> bool:
    """Whether a new connection gets /healthz's answer rather than the cap's (the server
    may not have seen the previous connection close yet)."""
    with _connect(bridge) as connection:
        connection.sendall(HEALTH)
        return "status" in read_response(connection).json()


def test_the_server_the_bridge_runs_has_the_limits_of_its_settings() -> None:
    settings = Settings(nats_url="nats://127.0.0.1:1", http_host="127.0.0.1",
                        http_port=find_free_port(), http_max_connections=123,
                        http_max_head_bytes=2048, http_head_timeout_seconds=3,
                        http_body_timeout_seconds=7)
    config = create_server(settings).config

    assert config.limit_concurrency == 123
    assert config.http.connection_limits == ConnectionLimits(  # type: ignore[union-attr]
        max_head_bytes=2048, head_timeout=3, body_timeout=7)

"""A connection whose head or body does not arrive in time is closed (a body's request
answered 408 first); clients that send their requests promptly keep their connection,
pauses between requests included. The bridge here has 0.5 s timeouts, on both loops;
NATS is unreachable, which /healthz answers in a 503 envelope."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from api_bridge.connection_limits import body_timeout_message
from schemas.errors import ErrorCode

from .live import LiveBridge
from .raw_http import closes_within, read_response

TIMEOUT = 0.5
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def quick_bridge(request: pytest.FixtureRequest) -> Iterator[LiveBridge]:
    """A bridge with 0.5 s head and body timeouts."""
    live = LiveBridge.for_nats("nats://127.0.0.1:1", loop=request.param,
                               http_head_timeout_seconds=TIMEOUT,
                               http_body_timeout_seconds=TIMEOUT).start()
    yield live
    live.stop()


@pytest.fixture
def connection(quick_bridge: LiveBridge) -> Iterator[socket.socket]:
    """A new connection to the quick bridge."""
    address = (quick_bridge.settings.http_host, quick_bridge.settings.http_port)
    with socket.create_connection(address, timeout=10) as opened:
        yield opened


def _assert_health_answer(connection: socket.socket) -> None:
    response = read_response(connection)
    assert response.status == 503
    assert response.json()["status"] == "unavailable"
    assert "connection" not in response.headers  # kept alive


def test_a_connection_that_sends_nothing_is_closed(connection: socket.socket) -> None:
    received, waited = closes_within(connection, 5)
    assert received == b""
    assert waited < 3


@pytest.mark.parametrize("part", [b"G", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"])
def test_a_head_that_stalls_is_closed_unanswered(connection: socket.socket,
                                                 part: bytes) -> None:
    connection.sendall(part)
    received, waited = closes_within(connection, 5)
    assert received == b""
    assert waited < 3


def test_a_head_that_stalls_after_a_request_is_closed(connection: socket.socket) -> None:
    connection.sendall(HEALTH)
    _assert_health_answer(connection)
    connection.sendall(b"GET /healthz HTTP/1.1\r\n")
    received, waited = closes_within(connection, 5)
    assert received == b""
    assert waited < 3  # uvicorn's keep-alive timeout, 5 s, stops once a byte arrives


def test_a_body_that_stalls_is_answered_408(connection: socket.socket) -> None:
    connection.sendall(b"POST /api/v1/kem/encrypt HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 100\r\n\r\n" + b'{"plaintext": "')
    started = time.monotonic()
    response = read_response(connection)
    rest, _ = closes_within(connection, 5)

    assert response.status == 408
    assert response.headers["connection"] == "close"
    envelope = response.json()
    assert envelope["error"] == {"code": ErrorCode.INVALID, "error_code": ErrorCode.INVALID,
                                 "message": body_timeout_message(TIMEOUT)}
    assert envelope["request_id"] == response.headers["x-request-id"]
    assert TIMEOUT * 0.9 < time.monotonic() - started < 3
    assert rest == b""


def test_a_body_that_arrives_in_time_is_served(connection: socket.socket) -> None:
    connection.sendall(b"POST /api/v1/kem/encrypt HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 17\r\n\r\n" + b'{"plaintext": ')
    time.sleep(TIMEOUT / 2)
    connection.sendall(b'""}')
    response = read_response(connection)
    assert response.status == 503  # NATS is unreachable: the body was read whole
    assert response.json()["error"]["code"] == ErrorCode.SERVICE_UNAVAILABLE  # type: ignore[index]


def test_a_keep_alive_client_keeps_its_connection(connection: socket.socket) -> None:
    for _ in range(5):
        connection.sendall(HEALTH)
        _assert_health_answer(connection)
    # Pauses between requests longer than the head timeout (shorter than uvicorn's
    # keep-alive timeout): the head's clock starts at its first byte.
    for _ in range(2):
        time.sleep(TIMEOUT * 2)
        connection.sendall(HEALTH)
        _assert_health_answer(connection)
    connection.sendall(HEALTH * 3)  # pipelined
    for _ in range(3):
        _assert_health_answer(connection)

"""A request head larger than ``PQKMS_HTTP_MAX_HEAD_BYTES`` gets 431 in the envelope, at
once and without the rest being parsed; a head within it, and a large body after it, are
served."""

from __future__ import annotations

import socket
import time

import pytest

from api_bridge.connection_limits import head_too_large_message
from schemas.errors import ErrorCode

from .fake_worker import FakeWorker
from .live import LiveBridge
from .raw_http import RawResponse, closes_within, read_response

HEALTH_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "


def _connect(bridge: LiveBridge) -> socket.socket:
    return socket.create_connection((bridge.settings.http_host, bridge.settings.http_port),
                                    timeout=10)


def _head_of(size: int) -> bytes:
    """A complete ``GET /healthz`` head of exactly ``size`` bytes."""
    return HEALTH_HEAD + b"a" * (size - len(HEALTH_HEAD) - 4) + b"\r\n\r\n"


def _assert_head_too_large(response: RawResponse, limit: int) -> None:
    assert response.status == 431
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    envelope = response.json()
    assert envelope["error"] == {"code": ErrorCode.INVALID, "error_code": ErrorCode.INVALID,
                                 "message": head_too_large_message(limit)}
    assert envelope["request_id"] == response.headers["x-request-id"]


def test_a_head_past_the_limit_is_answered_431_without_waiting_for_its_end(
    bridge: LiveBridge,
) -> None:
    limit = bridge.settings.http_max_head_bytes
    with _connect(bridge) as connection:
        started = time.monotonic()
        connection.sendall(HEALTH_HEAD + b"a" * (limit + 4096))  # and never the end
        response = read_response(connection)
        answered = time.monotonic() - started
        rest, _ = closes_within(connection, 5)

    _assert_head_too_large(response, limit)
    assert answered < 2
    assert rest == b""


def test_the_bytes_past_the_limit_are_not_parsed(bridge: LiveBridge) -> None:
    # Parsed, the control character after the limit would make this a 400.
    limit = bridge.settings.http_max_head_bytes
    raw = HEALTH_HEAD + b"a" * (limit - len(HEALTH_HEAD)) + b"\x01\r\n\r\n"
    with _connect(bridge) as connection:
        connection.sendall(raw)
        response = read_response(connection)

    _assert_head_too_large(response, limit)


@pytest.mark.parametrize(("over", "status"), [(0, 200), (1, 431)])
def test_a_head_of_exactly_the_limit_is_served_and_one_byte_more_is_not(
    bridge: LiveBridge, worker: FakeWorker, over: int, status: int,
) -> None:
    limit = bridge.settings.http_max_head_bytes
    with _connect(bridge) as connection:
        connection.sendall(_head_of(limit + over))
        response = read_response(connection)

    assert response.status == status
    if over:
        _assert_head_too_large(response, limit)
    else:
        assert response.json()["status"] == "ok"


def test_a_head_within_the_limit_sent_byte_by_byte_is_served(
    bridge: LiveBridge, worker: FakeWorker,
) -> None:
    with _connect(bridge) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in _head_of(300):
            connection.send(bytes([byte]))
        response = read_response(connection)

    assert response.status == 200


def test_a_large_body_read_with_its_head_is_served(bridge: LiveBridge,
                                                   worker: FakeWorker) -> None:
    # Head and body in one write: the reads that end the head carry much more than the
    # head limit of body, which is not head.
    body = b'{"plaintext": "' + b"A" * (bridge.settings.nats_max_payload() - 2048) + b'"}'
    head = (b"POST /api/v1/kem/encrypt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with _connect(bridge) as connection:
        connection.sendall(head + body + head + body)  # and a second one, pipelined
        first, second = read_response(connection), read_response(connection)

    assert (first.status, second.status) == (200, 200)
    assert [received.raw for received in worker.received] == [body, body]

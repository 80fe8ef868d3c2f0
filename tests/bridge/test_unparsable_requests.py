"""A request HTTP itself cannot parse still gets the envelope, then the connection closes."""

from __future__ import annotations

import socket

import httpx
import orjson
import pytest

from api_bridge.http_protocol import UNPARSABLE_REQUEST_MESSAGE
from schemas.subjects import Subject

from .conftest import API_KEY
from .fake_worker import FakeWorker
from .live import LiveBridge


def _exchange(bridge: LiveBridge, raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send ``raw`` on a new connection, read until the bridge closes it: status line,
    headers (names lower-cased), body."""
    host, port = bridge.settings.http_host, bridge.settings.http_port
    with socket.create_connection((host, port), timeout=5) as connection:
        connection.sendall(raw)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    return status, headers, body


@pytest.mark.parametrize("raw", [
    # What schemathesis sent: a Content-Length that is no number, on a GET.
    b"GET /api/v1/kms/keys/Kyber768/1 HTTP/1.1\r\nHost: x\r\n"
    b"content-length: 9U90H?}65X@\r\nX-API-Key: " + API_KEY.encode() + b"\r\n\r\n",
    b"POST /api/v1/kem/encrypt HTTP/1.1\r\nHost: x\r\nX-API-Key: \x01\x02\r\n\r\n",
    b"GET /api/v1/kms/keys HTTP/1.1\r\nHost: x\r\nbad header name: 1\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
])
def test_unparsable_request_gets_an_envelope_and_a_close(bridge: LiveBridge,
                                                        raw: bytes) -> None:
    status, headers, body = _exchange(bridge, raw)

    assert status == b"HTTP/1.1 400 Bad Request"
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    envelope = orjson.loads(body)
    assert envelope["error"] == {"code": "ERR_INVALID_001", "error_code": "ERR_INVALID_001",
                                 "message": UNPARSABLE_REQUEST_MESSAGE}
    assert envelope["request_id"] == headers["x-request-id"]
    assert headers["cache-control"] == "no-store"


def test_each_unparsable_request_gets_its_own_request_id(bridge: LiveBridge) -> None:
    raw = b"NOT HTTP AT ALL\r\n\r\n"
    first = _exchange(bridge, raw)[1]["x-request-id"]
    second = _exchange(bridge, raw)[1]["x-request-id"]
    assert first != second


def test_the_bridge_serves_on_after_an_unparsable_request(bridge: LiveBridge,
                                                         worker: FakeWorker) -> None:
    _exchange(bridge, b"NOT HTTP AT ALL\r\n\r\n")
    response = httpx.post(f"{bridge.url}/api/v1/kms/keys/generate",
                          json={"algorithm": "Kyber768"}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 201, response.text
    assert worker.last.subject == Subject.KEYS_GENERATE

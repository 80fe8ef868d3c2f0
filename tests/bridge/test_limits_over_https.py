"""The connection limits behind TLS, on the server ``python -m api_bridge`` runs
(``create_server``: uvloop, HTTPS): they count the decrypted bytes."""

from __future__ import annotations

import gc
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from api_bridge.connection_limits import head_too_large_message
from api_bridge.main import create_server
from pqkms.nats_embedded import find_free_port
from tests.support.pki import Authority
from worker.config import Settings

from .raw_http import closes_within, read_response

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
TIMEOUT = 0.5


@pytest.fixture(scope="module")
def https_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    """The bridge's own server over HTTPS with 0.5 s timeouts and a 4 KiB head limit
    (NATS unreachable); its settings, and the CA that signed its certificate."""
    directory = tmp_path_factory.mktemp("pki")
    authority = Authority.create(directory, "bridge-ca")
    cert, key = authority.issue(directory, "bridge", server=True)
    settings = Settings(nats_url="nats://127.0.0.1:1", http_host="127.0.0.1",
                        http_port=find_free_port(), http_tls_cert_file=cert,
                        http_tls_key_file=key, http_max_head_bytes=4096,
                        http_head_timeout_seconds=TIMEOUT, http_body_timeout_seconds=TIMEOUT,
                        log_level="WARNING")
    server = create_server(settings)
    thread = threading.Thread(target=server.run, name="https-bridge", daemon=True)
    thread.start()
    _wait_started(server, thread)
    yield settings, authority.cert_file
    server.should_exit = True
    thread.join(15)
    gc.unfreeze()  # the bridge's server freezes what start-up loaded


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "bridge did not start"
        time.sleep(0.01)


@pytest.fixture
def connection(https_bridge: tuple[Settings, Path]) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to the bridge, handshake done."""
    settings, ca_file = https_bridge
    context = ssl.create_default_context(cafile=str(ca_file))
    plain = socket.create_connection((settings.http_host, settings.http_port), timeout=10)
    with context.wrap_socket(plain, server_hostname="127.0.0.1") as secure:
        yield secure


def test_keep_alive_requests_are_served(connection: ssl.SSLSocket) -> None:
    for _ in range(3):
        connection.sendall(HEALTH)
        assert read_response(connection).json()["status"] == "unavailable"
    time.sleep(TIMEOUT * 2)
    connection.sendall(HEALTH)
    assert read_response(connection).json()["status"] == "unavailable"


def test_a_head_past_the_limit_gets_431(connection: ssl.SSLSocket) -> None:
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
    response = read_response(connection)
    assert response.status == 431
    assert response.json()["error"]["message"] == head_too_large_message(4096)  # type: ignore[index]


def test_a_head_that_stalls_is_closed(connection: ssl.SSLSocket) -> None:
    connection.sendall(b"GET /healthz HTTP/1.1\r\n")
    received, waited = closes_within(connection, 5)
    assert received == b""
    assert waited < 3


def test_a_body_that_stalls_gets_408(connection: ssl.SSLSocket) -> None:
    connection.sendall(b"POST /api/v1/kem/encrypt HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 100\r\n\r\n{")
    assert read_response(connection).status == 408

"""HTTP/1.1 by hand over a socket: what a client library would not send (a head that
never ends, a body that stalls), and answers read as they are."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import orjson

__all__ = ["RawResponse", "closes_within", "read_response"]


@dataclass(frozen=True)
class RawResponse:
    """A response: status code, headers (names lower-cased), body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        """The body as a JSON object."""
        value = orjson.loads(self.body)
        assert isinstance(value, dict)
        return value


def read_response(connection: socket.socket) -> RawResponse:
    """Read one response with a ``content-length`` from ``connection``, and no byte of
    the next (pipelined) one."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = connection.recv(1)
        if not byte:
            raise ConnectionError(f"closed after {head!r}")
        head += byte
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    body = b""
    while len(body) < length:
        chunk = connection.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    return RawResponse(int(status_line.split(" ")[1]), headers, body)


def closes_within(connection: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Wait for the server to close ``connection``: what it sent first, and the time it
    took. A reset counts as a close; no close within ``seconds`` fails the test."""
    connection.settimeout(seconds)
    started = time.monotonic()
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {seconds} s; received {received!r}") from None
    return received, time.monotonic() - started

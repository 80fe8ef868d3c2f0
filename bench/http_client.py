"""A lean HTTP/1.1 keep-alive load generator: a pool of raw connections, no parsing beyond
the status line and Content-Length.

httpx costs 2 to 4 ms of client CPU per request here, more than the bridge it measures, on
the same two cores; this client costs a few tens of microseconds, so the HTTP rows show
the bridge and not the generator. It speaks only what the bridge answers: HTTP/1.1,
Content-Length bodies, keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

__all__ = ["HttpPool", "HttpResponse"]


class HttpResponse:
    """Status and body of one response."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


class HttpPool:
    """Up to ``size`` keep-alive connections to one ``http://host:port``."""

    def __init__(self, base_url: str, size: int, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port URLs: {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._size = size
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._fixed_headers = (
            f"Host: {self._host}:{self._port}\r\nContent-Type: application/json\r\n"
            f"Connection: keep-alive\r\n{extra}"
        ).encode()
        self._idle: asyncio.Queue[_Connection] = asyncio.Queue()
        self._opened = 0

    async def _connection(self) -> _Connection:
        if self._idle.empty() and self._opened < self._size:
            self._opened += 1
            reader, writer = await asyncio.open_connection(self._host, self._port)
            return _Connection(reader, writer)
        return await self._idle.get()

    async def post(self, path: str, body: bytes) -> HttpResponse:
        """POST ``body`` to ``path`` on a pooled connection."""
        connection = await self._connection()
        try:
            connection.writer.write(
                b"POST " + path.encode() + b" HTTP/1.1\r\n" + self._fixed_headers
                + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            head = await connection.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"connection" and value.strip().lower() == b"close":
                    close = True
            payload = await connection.reader.readexactly(length) if length else b""
        except BaseException:
            self._discard(connection)
            raise
        if close:
            self._discard(connection)
        else:
            self._idle.put_nowait(connection)
        return HttpResponse(status, payload)

    def _discard(self, connection: _Connection) -> None:
        self._opened -= 1
        connection.writer.close()

    async def close(self) -> None:
        """Close every idle connection."""
        while not self._idle.empty():
            connection = self._idle.get_nowait()
            connection.writer.close()
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()
        self._opened = 0

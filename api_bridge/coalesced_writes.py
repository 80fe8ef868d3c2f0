"""One socket write per response instead of two.

uvicorn's httptools protocol writes a response's status line and headers, then its
body, as two ``transport.write`` calls; on uvloop each is its own ``send`` syscall and
its own TCP segment (the socket has ``TCP_NODELAY``), so the client is woken twice and
the loopback stack runs twice. A response's writes all happen in one step of its task,
so this protocol hands uvicorn a transport that gathers the writes of a loop step and
sends them as one at the end of it. Everything else goes to the real transport; a close
sends what is gathered first. Measured effect: docs/performance.md (HTTP rows).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescedWritesProtocol", "CoalescingTransport"]


class CoalescingTransport:
    """A transport proxy whose writes of one loop step leave as one ``write``."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Gather ``data``; it leaves with the step's other writes."""
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        """Send what is gathered now (nothing once the transport closes)."""
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        """Send what is gathered, then close."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescedWritesProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Wrap the connection's transport, then let uvicorn set up as usual."""
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        coalescing = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, coalescing))

"""An envelope written straight on a connection that is closed after it.

For what the bridge answers before any app sees a request: one httptools cannot parse,
a head too large, a body that does not arrive in time (``api_bridge.http_protocol``,
``api_bridge.connection_limits``).
"""

from __future__ import annotations

from http import HTTPStatus

from api_bridge.answer import Answer

__all__ = ["closing_answer_bytes"]


def closing_answer_bytes(answer: Answer, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole HTTP/1.1 response carrying ``answer``, with ``connection: close``.

    ``default_headers`` are uvicorn's (``server_state.default_headers``: the date),
    as on every other response.
    """
    reason = HTTPStatus(answer.status).phrase
    lines = [f"HTTP/1.1 {answer.status} {reason}\r\n".encode("ascii")]
    lines += [name + b": " + value + b"\r\n"
              for name, value in [*default_headers, *answer.raw_headers()]]
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines) + answer.body

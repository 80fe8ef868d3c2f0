"""The bridge's HTTP/1.1 protocol: coalesced writes, and unparsable requests answered
in the envelope.

uvicorn answers a request that httptools cannot parse (a ``Content-Length`` that is
not a number, a control character in a header, a broken request line) itself, before
any app sees it: a plain-text 400, then it closes the connection. Every API answer is
an envelope, so here that answer is ``ERR_INVALID_001`` in JSON, with a new request id;
the status and the close stay.
"""

from __future__ import annotations

from http import HTTPStatus

from api_bridge.answer import Answer
from api_bridge.coalesced_writes import CoalescedWritesProtocol
from api_bridge.errors import error_answer
from schemas.envelope import new_request_id
from schemas.errors import ErrorCode

__all__ = ["UNPARSABLE_REQUEST_MESSAGE", "BridgeHttpProtocol", "unparsable_request_bytes"]

UNPARSABLE_REQUEST_MESSAGE = "Validation failed: the HTTP request could not be parsed"


def unparsable_request_bytes(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole HTTP response to a request that could not be parsed."""
    answer: Answer = error_answer(ErrorCode.INVALID, new_request_id(),
                                  UNPARSABLE_REQUEST_MESSAGE)
    reason = HTTPStatus(answer.status).phrase
    lines = [f"HTTP/1.1 {answer.status} {reason}\r\n".encode("ascii")]
    lines += [name + b": " + value + b"\r\n"
              for name, value in [*default_headers, *answer.raw_headers()]]
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines) + answer.body


class BridgeHttpProtocol(CoalescedWritesProtocol):
    """uvicorn's httptools protocol with one write per response and envelope 400s."""

    def send_400_response(self, msg: str) -> None:
        """Answer an unparsable request (``msg`` is uvicorn's, already logged) with an
        envelope, then close."""
        self.transport.write(unparsable_request_bytes(self.server_state.default_headers))
        self.transport.close()

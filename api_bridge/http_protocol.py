"""The bridge's HTTP/1.1 protocol: coalesced writes, limits per connection, and
unparsable requests answered in the envelope.

uvicorn answers a request that httptools cannot parse (a ``Content-Length`` that is
not a number, a control character in a header, a broken request line) itself, before
any app sees it: a plain-text 400, then it closes the connection. Every API answer is
an envelope, so here that answer is ``ERR_INVALID_001`` in JSON, with a new request id;
the status and the close stay. The limits (head size, head and body time, connections)
are ``api_bridge.connection_limits``'.
"""

from __future__ import annotations

from api_bridge.answer import Answer
from api_bridge.closing_answer import closing_answer_bytes
from api_bridge.connection_limits import ConnectionLimits, LimitedConnectionsProtocol
from api_bridge.errors import error_answer
from schemas.envelope import new_request_id
from schemas.errors import ErrorCode
from worker.config import Settings

__all__ = [
    "UNPARSABLE_REQUEST_MESSAGE",
    "BridgeHttpProtocol",
    "bridge_http_protocol",
    "unparsable_request_bytes",
]

UNPARSABLE_REQUEST_MESSAGE = "Validation failed: the HTTP request could not be parsed"


def unparsable_request_bytes(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole HTTP response to a request that could not be parsed."""
    answer: Answer = error_answer(ErrorCode.INVALID, new_request_id(),
                                  UNPARSABLE_REQUEST_MESSAGE)
    return closing_answer_bytes(answer, default_headers)


class BridgeHttpProtocol(LimitedConnectionsProtocol):
    """uvicorn's httptools protocol with one write per response, the connection limits
    and envelope 400s. Serve :func:`bridge_http_protocol`, which sets the limits."""

    def send_400_response(self, msg: str) -> None:
        """Answer an unparsable request (``msg`` is uvicorn's, already logged) with an
        envelope, then close."""
        self.transport.write(unparsable_request_bytes(self.server_state.default_headers))
        self.transport.close()


def bridge_http_protocol(settings: Settings) -> type[BridgeHttpProtocol]:
    """The protocol class for uvicorn's ``http``, with the limits ``settings`` set
    (uvicorn builds each connection's protocol from the class alone)."""
    limits = ConnectionLimits.of(settings)

    class ConfiguredBridgeHttpProtocol(BridgeHttpProtocol):
        connection_limits = limits

    return ConfiguredBridgeHttpProtocol

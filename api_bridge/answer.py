"""One finished API answer: status, headers and JSON body, sent either way.

The bridge answers through Starlette (``response()``: every route FastAPI serves) or
straight on the ASGI ``send`` (``send_to()``: the POST operation routes,
``api_bridge.direct_post``). Both put the same headers on the wire in the same order:
the answer's own, then ``content-length`` and ``content-type``, as Starlette's
``Response`` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Send

__all__ = ["JSON_MEDIA_TYPE", "Answer"]

JSON_MEDIA_TYPE = "application/json"
_JSON_CONTENT_TYPE = (b"content-type", JSON_MEDIA_TYPE.encode("latin-1"))


@dataclass(slots=True)
class Answer:
    """An envelope ready to send: status, headers (names as written), body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    def response(self) -> Response:
        """As a Starlette response."""
        return Response(content=self.body, status_code=self.status, headers=self.headers,
                        media_type=JSON_MEDIA_TYPE)

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The ASGI header list: the headers, lower-cased, then length and type."""
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1"))
               for name, value in self.headers.items()]
        raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        raw.append(_JSON_CONTENT_TYPE)
        return raw

    async def send_to(self, send: Send) -> None:
        """Send as the ASGI response start and body messages."""
        await send({"type": "http.response.start", "status": self.status,
                    "headers": self.raw_headers()})
        await send({"type": "http.response.body", "body": self.body})

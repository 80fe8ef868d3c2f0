"""One API request to a worker and back: the part every operation route shares.

The body (read and checked by the caller), the caller's API key and the request id go
to the operation's subject; the worker's reply, or the bridge's own error when there is
none (``BridgeError``), comes back as the :class:`~api_bridge.answer.Answer` to send.
"""

from __future__ import annotations

from collections.abc import Awaitable
from urllib.parse import quote

from api_bridge.answer import Answer
from api_bridge.errors import BridgeError, error_of
from api_bridge.http_input import InvalidAfterAuth
from api_bridge.nats_gateway import NatsGateway
from api_bridge.replies import answer_from_reply
from api_bridge.request_context import RequestContext
from schemas.operations import Operation
from schemas.subjects import HEADER_API_KEY, HEADER_INPUT_ERROR, HEADER_REQUEST_ID

__all__ = ["forward", "forwarded_headers"]


def forwarded_headers(request_id: str, api_key: str | None) -> dict[str, str]:
    """The NATS headers of a request: its id, and the API key when the caller sent one."""
    headers = {HEADER_REQUEST_ID: request_id}
    if api_key is not None:
        headers[HEADER_API_KEY] = api_key
    return headers


async def forward(gateway: NatsGateway, operation: Operation, payload: Awaitable[bytes],
                  api_key: str | None, context: RequestContext) -> Answer:
    """Await ``payload`` (the body), send it to a worker, answer with its reply; a
    :class:`BridgeError` on the way is answered as the error it describes, and invalid
    parameters (:class:`InvalidAfterAuth`) by the worker, after the API key."""
    try:
        headers = forwarded_headers(context.request_id, api_key)
        try:
            body = await payload
        except InvalidAfterAuth as invalid:
            body = b"{}"
            # (Percent-encoded: a query parameter's name may hold any character.)
            headers[HEADER_INPUT_ERROR] = quote(invalid.message, safe=" '")
        reply = await gateway.request(operation.subject.value, body, headers)
        return answer_from_reply(reply, operation.success_status, context)
    except BridgeError as exc:
        context.error_code = exc.code.value
        return error_of(exc, context.request_id)

"""What nats-server counts of a message against its ``max_payload``.

The server refuses a message whose payload and header block together exceed its
``max_payload``, and closes the connection that sent it: every request in flight on
that connection is lost. nats-py checks the payload alone before sending, so a
payload just under the limit passes its check and the headers carry the message over.
Whoever forwards a payload it did not size itself (the bridge an HTTP body, the Python
client a caller's data) checks the whole message first.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["counted_size"]

# "NATS/1.0\r\n" before the headers, "\r\n" after them.
_HEADER_BLOCK_FRAME = len(b"NATS/1.0\r\n") + len(b"\r\n")
# ": " and "\r\n" around each header's value.
_PER_HEADER = len(b": \r\n")


def counted_size(payload: bytes, headers: Mapping[str, str] | None) -> int:
    """The bytes the server counts of ``payload`` sent with ``headers`` (an upper bound:
    nats-py trims surrounding spaces before it writes a header)."""
    if not headers:
        return len(payload)
    header_bytes = _HEADER_BLOCK_FRAME + sum(
        len(name.encode()) + len(value.encode()) + _PER_HEADER
        for name, value in headers.items()
    )
    return len(payload) + header_bytes

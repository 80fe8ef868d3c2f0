"""nats-py reading what any client may send: bytes that are not UTF-8.

nats-server passes a message's subject, reply subject and header block through as bytes.
nats-py 2.16 decodes the reply subject (``Client._build_message``) and a header block's
status line (``Client._process_headers``) as strict UTF-8, inside its read loop: one
message whose reply subject holds a byte such as ``0xff`` raises there, the read loop
ends, and the connection reads nothing more until a stale-connection check replaces it,
minutes later. A worker then silently stops serving; a few such messages, from any
client that may publish to an operation subject, stopped every worker (found by a
review, docs/decisions.md, "NATS security").

:func:`tolerate_undecodable_messages` makes both lenient, once per process: a reply
subject is decoded with replacement characters (a reply then goes to a subject nobody
listens on), and a header block that cannot be decoded is dropped (the request then has
no API key, and is answered 401). Everything else nats-py does is unchanged. The worker
and the bridge call it at start; ``tests/worker/test_nats_decoding.py`` sends such
messages to real workers.
"""

from __future__ import annotations

from typing import Any

import structlog
from nats.aio.client import Client

__all__ = ["tolerate_undecodable_messages"]

_log = structlog.get_logger("pqkms.nats")
_PATCHED = "_pqkms_tolerates_undecodable"


def _build_message(self: Client, sid: int, subject: bytes, reply: bytes, data: bytes,
                   headers: dict[str, str] | None) -> Any:
    return self.msg_class(
        subject=subject.decode("utf-8", "replace"),
        reply=reply.decode("utf-8", "replace"),
        data=data,
        headers=headers,
        _client=self,
        _sid=sid,
    )


def tolerate_undecodable_messages() -> None:
    """Patch nats-py's ``Client`` as the module docstring says (idempotent)."""
    if getattr(Client, _PATCHED, False):
        return
    strict_headers = Client._process_headers

    async def process_headers(self: Client, headers: bytes) -> dict[str, str] | None:
        try:
            return await strict_headers(self, headers)
        except UnicodeDecodeError:
            _log.warning("nats_headers_undecodable", bytes=len(headers))
            return None

    Client._build_message = _build_message  # type: ignore[method-assign]
    Client._process_headers = process_headers  # type: ignore[method-assign]
    setattr(Client, _PATCHED, True)

"""Failures of a dependency that is only briefly away (a NATS node failing over, a
JetStream leader election), which a caller should retry: 503, never 500."""

from __future__ import annotations

import nats.errors
import nats.js.errors

__all__ = ["TRANSIENT_MESSAGE", "is_transient"]

TRANSIENT_MESSAGE = (
    "The message system is briefly unavailable (a node or stream leader is changing); "
    "retry the request"
)

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says NATS or JetStream could not answer just now."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return isinstance(exc, nats.js.errors.APIError) and exc.code == 503

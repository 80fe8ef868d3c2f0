"""The HTTP bridge: the Qpher REST API in front of the pqkms workers on NATS.

Stateless: it holds no keys and no database. Each REST route becomes a NATS request on
the operation's subject; the worker's envelope comes back as the HTTP body unchanged.
"""

from api_bridge.app import create_app

__all__ = ["create_app"]

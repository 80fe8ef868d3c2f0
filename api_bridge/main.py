"""Run the bridge under uvicorn."""

from __future__ import annotations

import gc
import importlib.util
import socket
import ssl
from collections.abc import Callable

import structlog
import uvicorn

from api_bridge.app import create_app
from api_bridge.http_protocol import bridge_http_protocol
from api_bridge.log_config import configure_logging
from api_bridge.tls import https_context, serves_plain
from worker.config import Settings
from worker.nats_decoding import tolerate_undecodable_messages

__all__ = ["create_server", "run"]


class _BridgeServer(uvicorn.Server):
    """uvicorn's server, with what start-up loaded put out of the collector's sight."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # The app, its routes and the NATS client live as long as the process: a
        # collection then walks only the requests' own objects, as in the workers
        # (≈ 3-8 % less bridge CPU per request, docs/performance.md).
        gc.freeze()


def create_server(settings: Settings) -> uvicorn.Server:
    """A uvicorn server for the bridge, not yet started: HTTPS with the configured
    certificate, or plain HTTP where that is allowed (``api_bridge.tls``; raises its
    ``BridgeTlsError`` otherwise).

    For callers that run it in their own event loop (``await server.serve()``) and
    want to know when it listens (``server.started``), e.g. ``pqkms up``.
    """
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    context = https_context(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        loop=loop,
        # one write per response (docs/performance.md), unparsable requests in the
        # envelope, limits per connection (head size, head and body time)
        http=bridge_http_protocol(settings),
        # connections served at once; beyond them a request gets 503 (the envelope:
        # api_bridge/connection_limits.py), then its connection closes
        limit_concurrency=settings.http_max_connections,
        access_log=False,  # the bridge logs its own line per request
        log_config=None,  # uvicorn's loggers go to the root's JSON (api_bridge.log_config)
        log_level=settings.log_level.lower(),
        server_header=False,
        # The request line logs the TCP peer's address (a proxy's, when one is in front,
        # docs/http-api.md); X-Forwarded-* is not trusted to rewrite it, and the
        # middleware that parses it on every request is skipped.
        proxy_headers=False,
        lifespan="on",
        ssl_context_factory=None if context is None else _serving(context),
    )
    return _BridgeServer(config)


def _serving(
    context: ssl.SSLContext,
) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    """uvicorn's hook for a server context: the bridge's own, built and checked already."""
    return lambda _config, _default: context


def run(settings: Settings) -> None:
    """Serve the bridge on ``settings.http_host:http_port`` until interrupted."""
    configure_logging(settings.log_level, settings.log_json)
    tolerate_undecodable_messages()
    server = create_server(settings)
    if serves_plain(settings):  # allowed, or create_server would have refused
        structlog.get_logger("api_bridge").warning(
            "bridge_plain_http", host=settings.http_host, port=settings.http_port,
            reason="PQKMS_HTTP_ALLOW_PLAIN: TLS is terminated in front of the bridge")
    server.run()

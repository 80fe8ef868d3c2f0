"""Run one worker process until SIGINT / SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

import structlog
from faststream.nats import NatsBroker
from nats.js.kv import KeyValue

from worker.app import (
    GRACEFUL_STOP_SECONDS,
    WorkerServices,
    build_broker,
    build_direct_responder,
    build_job_runner,
    build_rotation_scheduler,
    build_services,
)
from worker.audit.wiring import finish_subscribers
from worker.config import Settings
from worker.handlers.graceful_stop import leave_broker_subjects
from worker.handlers.ordered_flush import send_pings_behind_queued_commands
from worker.heartbeat import beat
from worker.jetstream_setup import JetStreamSetup
from worker.logging_setup import configure_logging
from worker.metrics import MetricsServer, serve_metrics
from worker.nats_decoding import tolerate_undecodable_messages
from worker.nats_security import ConnectRefusalGuard, NatsAccessRefused, redacted_urls
from worker.services.key_events import key_events_stream_step
from worker.services.rate_limit import KvRateLimiter
from worker.services.shared_rate_limiter import SharedRateLimits, SwitchableRateLimiter

__all__ = ["run", "serve"]

_log = structlog.get_logger("pqkms.worker")


async def _open_store(settings: Settings):  # type: ignore[no-untyped-def]
    from worker.store import KeyringFile, KeySource, KeyStore, master_key_from_base64

    master: KeySource
    if settings.master_key is not None:
        master = master_key_from_base64(settings.master_key.get_secret_value())
    else:
        # The store follows the keyring file as `pqkms master-key` replaces it.
        master = KeyringFile(settings.resolved_master_key_file())
    # Workers never migrate: a schema behind head stops them with "run `pqkms db upgrade`"
    # (pqkms up and compose's init service upgrade before any worker starts).
    return await KeyStore.open(settings.resolved_database_url(), master, create_schema=False,
                               pool_size=settings.database_pool_size)


def _fit_messages_to_server(server_max_payload: int, settings: Settings,
                            services: WorkerServices) -> None:
    """Replies, batches and job chunks within the server's message limit."""
    services.handler.fit_replies_to(server_max_payload)
    services.batch.fit_message_limit(server_max_payload)
    needed = settings.nats_max_payload()
    if server_max_payload < needed:
        _log.warning("nats_max_payload_too_small", server_max_payload=server_max_payload,
                     needed=needed, effect="requests whose request or reply would not fit "
                     "in one message are refused (400); raise the server's max_payload")


def _jetstream_setup(
    settings: Settings, broker: NatsBroker, limiter: SwitchableRateLimiter
) -> JetStreamSetup:
    async def open_rate_limit_bucket() -> KeyValue:
        return await broker.key_value(KvRateLimiter.BUCKET, history=1, ttl=3600,
                                      replicas=settings.jetstream_replicas)

    return JetStreamSetup([
        SharedRateLimits(limiter, open_rate_limit_bucket).step(),
        key_events_stream_step(lambda: broker.connection,
                               settings.key_events_retention_hours * 3600,
                               settings.jetstream_replicas),
    ])


def _refuse_to_serve_without_subscriptions(guard: ConnectRefusalGuard) -> None:
    """A worker the server will not let subscribe would say "ready" and serve nothing
    (a worker started by hand beside ``pqkms up`` without its credentials, say); the
    flush before this call has brought the server's answer to every SUB."""
    refused = guard.subscriptions_refused()
    if refused:
        raise NatsAccessRefused(
            f"NATS refused {len(refused)} of the worker's subscriptions ({refused[0]}); "
            "check the worker's NATS user and its permissions (docs/deploy.md)"
        )


async def _connect_unless_stopped(broker: NatsBroker, stop: asyncio.Event) -> bool:
    """Connect; ``False`` when ``stop`` came first. With NATS unreachable the connect
    retries forever, and SIGTERM must still end the worker."""
    connecting = asyncio.ensure_future(broker.connect())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if connecting.done():
        connecting.result()  # its error, if it failed
        return True
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    _log.info("worker_stopped_before_connecting")
    return False


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Connect, serve until ``stop`` is set, then drain and close."""
    store = await _open_store(settings)
    limiter = SwitchableRateLimiter()
    services = build_services(settings, store, limiter)
    direct = build_direct_responder(settings, services)
    guard = ConnectRefusalGuard("worker")
    broker = build_broker(settings, services, direct, guard)
    guard.use_connection(lambda: broker.connection, services.metrics)  # events, gauge
    jobs = build_job_runner(settings, services, broker)
    rotations = build_rotation_scheduler(settings, services, store)
    jetstream = _jetstream_setup(settings, broker, limiter)
    metrics_server: MetricsServer | None = None
    heartbeat = (None if settings.heartbeat_file is None
                 else asyncio.create_task(beat(settings.heartbeat_file), name="pqkms-heartbeat"))
    try:
        if services.metrics is not None and settings.metrics_port is not None:
            services.metrics.watch_event_loop(asyncio.get_running_loop())
            metrics_server = serve_metrics(services.metrics, settings.metrics_host,
                                           settings.metrics_port)
            _log.info("metrics_serving", host=settings.metrics_host, port=metrics_server.port)
        if not await _connect_unless_stopped(broker, stop):
            return
        _fit_messages_to_server(broker.connection.max_payload, settings, services)
        # Before any subscription: "ready" below and each drain at the stop rely on a
        # flush that follows the SUBs and UNSUBs sent before it.
        send_pings_behind_queued_commands(broker.connection)
        await jetstream.start(broker.connection)
        if services.audit is not None:
            services.audit.start()  # writes this run's chain open record
        await broker.start()
        if direct is not None:
            await direct.start(broker.connection)  # its flush covers FastStream's SUBs too
        else:
            await broker.connection.flush()  # FastStream's SUBs on the server before "ready"
        _refuse_to_serve_without_subscriptions(guard)
        jobs.start()
        rotations.start()
        # Everything loaded so far lives as long as the process: out of the collector's
        # sight, a collection only walks the requests' own objects (≈ 8 % less CPU per
        # batch item, docs/performance.md).
        gc.freeze()
        _log.info("worker_ready", nats=redacted_urls(settings.nats_url))
        await stop.wait()
    finally:
        await jetstream.stop()
        await rotations.stop()
        if direct is not None:
            await direct.stop()
        await jobs.stop()
        await leave_broker_subjects(broker, GRACEFUL_STOP_SECONDS)
        if services.audit is not None:
            await finish_subscribers(broker)  # their audit records need the connection
            await services.audit.close()  # the chain's close record
        await broker.stop()
        services.runner.close()
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.close)
        await store.close()
        if heartbeat is not None:  # (beating through the drain: it may take seconds)
            heartbeat.cancel()
        _log.info("worker_stopped")


def run(settings: Settings) -> None:
    """Blocking entry point used by ``pqkms worker`` and ``python -m worker``."""
    configure_logging(settings.log_level, settings.log_json)
    tolerate_undecodable_messages()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        pass

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(main())
    except Exception as exc:
        _log.error("worker_failed", error=str(exc), kind=type(exc).__name__)
        sys.exit(1)

"""Run one worker process until SIGINT / SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog

from worker.app import build_broker, build_job_runner, build_services
from worker.config import Settings
from worker.logging_setup import configure_logging
from worker.services.rate_limit import KvRateLimiter
from worker.services.shared_rate_limiter import SwitchableRateLimiter

__all__ = ["run", "serve"]

_log = structlog.get_logger("pqkms.worker")


async def _open_store(settings: Settings):  # type: ignore[no-untyped-def]
    from worker.store import KeyStore, load_or_create_master_key, master_key_from_base64

    if settings.master_key is not None:
        master = master_key_from_base64(settings.master_key.get_secret_value())
    else:
        master = load_or_create_master_key(settings.resolved_master_key_file(), create=False)
    return await KeyStore.open(settings.resolved_database_url(), master, create_schema=True)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Connect, serve until ``stop`` is set, then drain and close."""
    store = await _open_store(settings)
    limiter = SwitchableRateLimiter()
    services = build_services(settings, store, limiter)
    broker = build_broker(settings, services)
    jobs = build_job_runner(settings, services, broker)
    try:
        await broker.connect()
        try:
            kv = await broker.key_value(KvRateLimiter.BUCKET, history=1, ttl=3600)
            limiter.use(KvRateLimiter(kv))
        except Exception as exc:  # NATS without JetStream: limits hold per worker only
            _log.warning("rate_limits_not_shared", reason=type(exc).__name__)
        await broker.start()
        jobs.start()
        _log.info("worker_ready", nats=settings.nats_url.split(",")[0])
        await stop.wait()
    finally:
        await jobs.stop()
        await broker.stop()
        services.runner.close()
        await store.close()
        _log.info("worker_stopped")


def run(settings: Settings) -> None:
    """Blocking entry point used by ``pqkms worker`` and ``python -m worker``."""
    configure_logging(settings.log_level, settings.log_json)
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

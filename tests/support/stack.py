"""A real pqkms stack for tests: nats-server from the wheel, worker processes, the bridge."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import orjson
from sqlalchemy.engine import make_url

from pqkms.client import PqkmsClient
from pqkms.nats_embedded import EmbeddedNats, find_free_port, start_nats_server
from schemas.algorithms import Plan
from worker.log_sink import FLUSH_SECONDS
from worker.store import KeyStore, load_or_create_master_key

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "LocalStack",
    "NatsCaller",
    "PostgresUnavailable",
    "Reply",
    "log_tail",
    "temporary_postgres_database",
]

# The PostgreSQL server of this machine; PQKMS_TEST_POSTGRES_URL names another.
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


class PostgresUnavailable(RuntimeError):
    """The test PostgreSQL server does not answer."""


@asynccontextmanager
async def temporary_postgres_database(prefix: str = "pqkms_it") -> AsyncIterator[str]:
    """A fresh database on the test PostgreSQL server, dropped on exit; yields its URL.

    Raises :class:`PostgresUnavailable` (before yielding) when the server does not answer,
    so a fixture can skip.
    """
    base = make_url(os.environ.get("PQKMS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(admin_dsn, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        raise PostgresUnavailable(f"PostgreSQL not reachable ({type(exc).__name__})") from exc
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a process's log, for a failure message."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def _exit_report(name: str, process: subprocess.Popen[bytes], log: Path) -> str:
    return f"{name} exited with {process.returncode}; the end of its log:\n{log_tail(log)}"


@dataclass
class Reply:
    """A decoded NATS reply."""

    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def data(self) -> dict[str, Any]:
        return self.body["data"]  # type: ignore[no-any-return]

    @property
    def code(self) -> str | None:
        error = self.body.get("error")
        return error["code"] if error else None


@dataclass
class LocalStack:
    """nats-server + N workers (+ bridge) on loopback, all state in ``root``.

    ``external_nats`` lists servers started elsewhere (e.g. a :class:`NatsCluster`):
    the stack then starts no nats-server of its own and every process gets all of them.
    """

    root: Path
    database_url: str | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    bridge: subprocess.Popen[bytes] | None = None
    nats: EmbeddedNats | None = None
    nats_port: int = 0
    http_port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    external_nats: list[str] = field(default_factory=list)
    worker_logs: dict[int, Path] = field(default_factory=dict)
    # nats-server's largest message; ``pqkms up`` sets the workers' own limit instead.
    nats_max_payload: int = 8 * 1024 * 1024
    # What nats-server holds for a lagging connection (None: pqkms up's).
    nats_max_pending: int | None = None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.root / 'pqkms.db'}"

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return make_url(self.db_url).get_backend_name()

    @property
    def nats_servers(self) -> list[str]:
        """Every NATS server URL, for ``nats.connect``."""
        return list(self.external_nats) or [f"nats://127.0.0.1:{self.nats_port}"]

    @property
    def nats_url(self) -> str:
        """The servers comma-separated, as ``PQKMS_NATS_URL`` takes them."""
        return ",".join(self.nats_servers)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def master_key_file(self) -> Path:
        return self.root / "master.key"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PQKMS_NATS_URL": self.nats_url,
            "PQKMS_DATABASE_URL": self.db_url,
            "PQKMS_MASTER_KEY_FILE": str(self.master_key_file),
            "PQKMS_DATA_DIR": str(self.root),
            "PQKMS_HTTP_PORT": str(self.http_port or 8000),
            "PQKMS_LOG_JSON": "true",
            **self.extra_env,
        }

    # -- lifecycle -------------------------------------------------------------------

    def start_nats(self) -> None:
        if self.external_nats:
            return
        self.nats_port = self.nats_port or find_free_port()
        pending = ({} if self.nats_max_pending is None
                   else {"max_pending": self.nats_max_pending})
        self.nats = start_nats_server(self.root / "nats", port=self.nats_port,
                                      max_payload=self.nats_max_payload,
                                      log_file=self.root / "nats.log",
                                      **pending)

    def stop_nats(self) -> None:
        if self.nats:
            self.nats.stop()
            self.nats = None

    async def init_store(self) -> None:
        master = load_or_create_master_key(self.master_key_file)
        store = await KeyStore.open(self.db_url, master, create_schema=True)
        await store.close()

    def start_worker(self) -> subprocess.Popen[bytes]:
        path = self.root / f"worker-{len(self.worker_logs)}.log"
        log = open(path, "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "worker"], env=self.env(), stdout=log, stderr=log
        )
        self.workers.append(process)
        self.worker_logs[process.pid] = path
        return process

    def start_bridge(self) -> None:
        self.http_port = self.http_port or find_free_port()
        log = open(self.root / "bridge.log", "ab")  # noqa: SIM115
        self.bridge = subprocess.Popen(
            [sys.executable, "-m", "api_bridge"], env=self.env(), stdout=log, stderr=log
        )

    async def start(self, workers: int = 2, bridge: bool = False) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_nats()
        await self.init_store()
        for _ in range(workers):
            self.start_worker()
        await self.wait_for_workers(workers)
        if bridge:
            self.start_bridge()
            await self.wait_for_bridge()

    async def wait_for_workers(self, count: int, timeout: float = 30.0) -> None:
        """Until ``count`` distinct workers have answered a health ping."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        client = await nats.connect(self.nats_servers)
        try:
            while len(seen) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(seen)} of {count} workers answered")
                for process in self.workers:
                    if process.poll() is not None:
                        raise RuntimeError(self.exit_report(process))
                try:
                    reply = await client.request("pqkms.v1.health.ping", b"", timeout=0.5)
                    seen.add(orjson.loads(reply.data)["data"]["worker"])
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    await asyncio.sleep(0.1)
        finally:
            await client.close()

    async def wait_for_bridge(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.bridge is not None
                if self.bridge.poll() is not None:
                    raise RuntimeError(
                        _exit_report("bridge", self.bridge, self.root / "bridge.log"))
                try:
                    if (await client.get(f"{self.http_url}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError("bridge not healthy")

    def exit_report(self, worker: subprocess.Popen[bytes]) -> str:
        """Why a worker that should be running is not: its exit code and its last log lines."""
        return _exit_report("worker", worker, self.worker_logs[worker.pid])

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.workers.clear()

    def stop_worker(self, process: subprocess.Popen[bytes]) -> None:
        """Stop one worker (SIGTERM, then SIGKILL) and forget it."""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.workers.remove(process)

    def stop(self) -> None:
        if self.bridge and self.bridge.poll() is None:
            self.bridge.terminate()
            try:
                self.bridge.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.bridge.kill()
        self.stop_workers()
        self.stop_nats()

    # -- helpers for tests -------------------------------------------------------------

    def db_path_bytes(self) -> bytes:
        """Raw bytes of the SQLite database files (main file and WAL)."""
        files = [self.root / "pqkms.db", self.root / "pqkms.db-wal"]
        return b"".join(path.read_bytes() for path in files if path.exists())

    def requests_served(self, tenant_id: str, subject: str) -> list[int]:
        """Per running worker, how many ``subject`` requests of the tenant it has logged
        (each worker writes one JSON ``request`` line per request to its own log)."""
        # Info lines reach the file up to FLUSH_SECONDS after the request (log_sink).
        time.sleep(3 * FLUSH_SECONDS)
        counts: list[int] = []
        for process in self.workers:
            served: Counter[str] = Counter()
            for line in self.worker_logs[process.pid].read_bytes().splitlines():
                if b'"request"' not in line or tenant_id.encode() not in line:
                    continue
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a line being written right now
                if event.get("event") == "request" and event.get("tenant_id") == tenant_id:
                    served[str(event.get("subject"))] += 1
            counts.append(served[subject])
        return counts

    async def tenant_id(self, api_key: str) -> str:
        """The tenant an API key belongs to."""
        master = load_or_create_master_key(self.master_key_file, create=False)
        store = await KeyStore.open(self.db_url, master, create_schema=False)
        try:
            tenant = await store.authenticate(api_key)
        finally:
            await store.close()
        assert tenant is not None, "unknown API key"
        return tenant.tenant_id

    async def create_tenant(self, plan: Plan = Plan.ENTERPRISE) -> str:
        """A new tenant; returns its API key."""
        master = load_or_create_master_key(self.master_key_file, create=False)
        store = await KeyStore.open(self.db_url, master, create_schema=False)
        try:
            _, api_key = await store.create_tenant(f"tenant-{uuid.uuid4().hex[:12]}", plan)
        finally:
            await store.close()
        return api_key

    async def tenant_with_key(self, algorithm: str = "Kyber768",
                              plan: Plan = Plan.ENTERPRISE) -> str:
        """A new tenant holding version 1 of ``algorithm``; returns its API key."""
        api_key = await self.create_tenant(plan)
        async with await PqkmsClient.connect(self.nats_url, api_key) as client:
            await client.generate_key(algorithm)
        return api_key


class NatsCaller:
    """Send contract requests over NATS with an API key, decode replies."""

    def __init__(self, client: nats.NATS, api_key: str | None) -> None:
        self.client = client
        self.api_key = api_key

    async def raw(self, subject: str, payload: bytes, headers: dict[str, str] | None = None,
                  timeout: float = 10.0) -> Reply:
        all_headers = {"X-API-Key": self.api_key} if self.api_key else {}
        all_headers.update(headers or {})
        message = await self.client.request(subject, payload, timeout=timeout,
                                            headers=all_headers)
        return Reply(orjson.loads(message.data), dict(message.headers or {}))

    async def __call__(self, subject: str, body: dict[str, Any] | None = None,
                       headers: dict[str, str] | None = None, timeout: float = 10.0) -> Reply:
        return await self.raw(subject, orjson.dumps(body or {}), headers, timeout)

"""The benchmark's own stack: nats-server, bare responders, pqkms workers, the bridge."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
from nats.aio.client import Client as NatsClient

from bench.fixture import Seeds
from bench.responder import PING_SUBJECT
from pqkms.nats_access import StackCredentials, access_config
from pqkms.nats_embedded import EmbeddedNats, find_free_port, start_nats_server
from schemas.algorithms import Plan
from schemas.subjects import HEADER_API_KEY, Subject
from worker.store import KeyStore, load_or_create_master_key

__all__ = ["BenchStack"]


def _stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class BenchStack:
    """Everything runs on loopback with its state under ``root``."""

    root: Path
    worker_log_level: str = "INFO"
    # The workers' audit trail (docs/audit.md); off only to measure what it costs.
    audit: bool = True
    # nats-server under SCHED_BATCH, as `pqkms up` runs it (pqkms.nats_embedded).
    nats_batch_scheduling: bool = True
    # The checkout whose code the spawned processes run (``python -m`` imports from the
    # working directory first); None: this one (bench.compare sets another).
    code_dir: Path | None = None
    # Settings for the spawned processes on top of the defaults (bench.compare --env).
    extra_env: dict[str, str] = field(default_factory=dict)
    # nats-server as `pqkms up` runs it: users and permissions (workers and bridge log
    # in, the load generator is a caller without credentials) and an encrypted JetStream
    # store. The bare responders cannot serve on it (callers may not subscribe to
    # requests).
    nats_as_up: bool = False
    credentials: StackCredentials | None = None
    # What a worker process runs after the interpreter (bench.call_census runs the
    # worker under its call counter).
    worker_command: list[str] = field(default_factory=lambda: ["-m", "worker"])
    nats: EmbeddedNats | None = None
    responders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    bridge: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    api_key: str = ""

    @property
    def nats_url(self) -> str:
        assert self.nats is not None
        return self.nats.url

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.root / 'pqkms.db'}"

    @property
    def master_key_file(self) -> Path:
        return self.root / "master.key"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PQKMS_NATS_URL": self.nats_url,
            "PQKMS_DATABASE_URL": self.database_url,
            "PQKMS_MASTER_KEY_FILE": str(self.master_key_file),
            "PQKMS_DATA_DIR": str(self.root),
            "PQKMS_HTTP_PORT": str(self.http_port or 8000),
            "PQKMS_LOG_JSON": "true",
            "PQKMS_LOG_LEVEL": self.worker_log_level,
            "PQKMS_AUDIT": "true" if self.audit else "false",
            **self.extra_env,
        }

    def _spawn(self, args: list[str], log_name: str,
               login: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.root / log_name, "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen([sys.executable, *args], env={**self._env(), **(login or {})},
                                stdout=log, stderr=log, cwd=self.code_dir)

    # -- nats and the transport floor --------------------------------------------------

    def start_nats(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        access: dict[str, Any] | None = None
        store_key: str | None = None
        if self.nats_as_up:
            self.credentials = StackCredentials.generate()
            access = access_config(self.credentials)
            store_key = secrets.token_urlsafe(32)
        self.nats = start_nats_server(self.root / "nats", port=find_free_port(),
                                      log_file=self.root / "nats.log",
                                      batch_scheduling=self.nats_batch_scheduling,
                                      access=access, store_key=store_key)

    async def start_responders(self, count: int, seeds: Seeds) -> None:
        while len(self.responders) < count:
            self.responders.append(self._spawn(
                ["-m", "bench.responder", self.nats_url, seeds.kem.hex(), seeds.dsa.hex()],
                f"responder-{len(self.responders)}.log",
            ))
        await self._wait_for(PING_SUBJECT, count, self.responders, lambda data: data)

    def stop_responders(self) -> None:
        for process in self.responders:
            _stop(process)
        self.responders.clear()

    # -- pqkms ---------------------------------------------------------------------------

    async def init_store(self) -> None:
        """Schema, master key and one enterprise tenant (no rate limits)."""
        master = load_or_create_master_key(self.master_key_file)
        store = await KeyStore.open(self.database_url, master, create_schema=True)
        try:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            _, self.api_key = await store.create_tenant(name, Plan.ENTERPRISE)
        finally:
            await store.close()

    async def start_workers(self, count: int) -> None:
        while len(self.workers) < count:
            self.workers.append(self._spawn(
                self.worker_command, f"worker-{len(self.workers)}.log",
                self.credentials.worker_env() if self.credentials else None))
        await self._wait_for(Subject.HEALTH_PING.value, count, self.workers,
                             lambda data: orjson.loads(data)["data"]["worker"])

    async def generate_keys(self, client: NatsClient) -> None:
        """Version 1 of Kyber768 and Dilithium3 for the tenant."""
        for algorithm in ("Kyber768", "Dilithium3"):
            reply = await client.request(
                Subject.KEYS_GENERATE.value, orjson.dumps({"algorithm": algorithm}),
                timeout=10, headers={HEADER_API_KEY: self.api_key},
            )
            body = orjson.loads(reply.data)
            if "data" not in body:
                raise RuntimeError(f"key generation failed: {body}")

    def start_bridge(self) -> None:
        self.http_port = find_free_port()
        self.bridge = self._spawn(["-m", "api_bridge"], "bridge.log",
                                  self.credentials.bridge_env() if self.credentials else None)

    async def wait_for_bridge(self, within: float = 20.0) -> bool:
        """True once ``/healthz`` answers 200; False if the bridge exits or never does."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.bridge is None or self.bridge.poll() is not None:
                    return False
                try:
                    if (await client.get(f"{self.http_url}/healthz")).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        return False

    # -- shared ----------------------------------------------------------------------------

    async def _wait_for(self, subject: str, count: int, processes: list[subprocess.Popen[bytes]],
                        identity: object, within: float = 30.0) -> None:
        seen: set[object] = set()
        deadline = time.monotonic() + within
        client = await nats.connect(self.nats_url)
        try:
            while len(seen) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(seen)} of {count} answered on {subject}")
                for process in processes:
                    if process.poll() is not None:
                        raise RuntimeError(
                            f"{process.args!r} exited with {process.returncode}; "
                            f"see the logs under {self.root}"
                        )
                try:
                    reply = await client.request(subject, b"", timeout=0.5)
                    seen.add(identity(reply.data))  # type: ignore[operator]
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    await asyncio.sleep(0.1)
        finally:
            await client.close()

    def stop(self) -> None:
        if self.bridge is not None:
            _stop(self.bridge)
            self.bridge = None
        for process in self.workers:
            _stop(process)
        self.workers.clear()
        self.stop_responders()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None

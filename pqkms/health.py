"""Readiness probes: a worker health ping over NATS and the bridge's ``/healthz``.

Used by ``pqkms up`` to decide when the stack is ready and by ``pqkms health``, the
container healthcheck in compose.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from schemas.subjects import Subject

__all__ = [
    "bridge_is_healthy",
    "describe_worker_state",
    "nats_servers",
    "ping_workers",
    "pinned_certificate",
    "worker_state",
]


def nats_servers(nats_url: str) -> list[str]:
    """``PQKMS_NATS_URL`` may name several servers, comma-separated."""
    return [url.strip() for url in nats_url.split(",") if url.strip()]


async def ping_workers(nats_url: str, *, time_limit: float = 2.0,
                       connect_options: Mapping[str, Any] | None = None) -> bool:
    """True when a worker answers ``pqkms.v1.health.ping`` with status ``ok``.

    Connection failures, timeouts, "no responders" and malformed replies all count as
    not healthy; the caller decides how long to keep trying. ``connect_options`` are
    extra ``nats.connect`` arguments: credentials and TLS from
    ``worker.nats_security.nats_security(settings).nats_py_options()``.
    """
    state = await worker_state(nats_url, time_limit=time_limit,
                               connect_options=connect_options)
    return state is not None and state.get("status") == "ok"


def describe_worker_state(state: Mapping[str, Any] | None) -> str:
    """What a health ping's answer says, for a one-line message."""
    if state is None:
        return "no worker answered"
    if state.get("status") == "ok":
        return "a worker answered ok"
    parts = [f"{name} {state[name]}" for name in ("database", "audit")
             if isinstance(state.get(name), str) and str(state[name]).isalpha()]
    return "a worker answered degraded" + (f" ({', '.join(parts)})" if parts else "")


async def worker_state(nats_url: str, *, time_limit: float = 2.0,
                       connect_options: Mapping[str, Any] | None = None
                       ) -> dict[str, Any] | None:
    """A worker's answer to ``pqkms.v1.health.ping`` (its ``data``: ``status``, and from
    current workers ``database`` and ``audit``), or ``None`` when none answers an
    envelope in ``time_limit`` (see :func:`ping_workers`)."""
    import nats
    from nats.errors import Error as NatsError

    try:
        # One pass over the servers, silently: a failure is an answer, not an error.
        connection = await asyncio.wait_for(
            nats.connect(
                servers=nats_servers(nats_url),
                connect_timeout=time_limit,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=_ignore_error,
                name="pqkms-health",
                **(connect_options or {}),
            ),
            time_limit * 2,
        )
    except (TimeoutError, OSError, NatsError):
        return None
    try:
        reply = await connection.request(Subject.HEALTH_PING.value, b"{}", timeout=time_limit)
    except (TimeoutError, OSError, NatsError):
        return None
    finally:
        with contextlib.suppress(TimeoutError, OSError, NatsError):
            await connection.close()
    return _reply_data(reply.data)


async def _ignore_error(_exc: Exception) -> None:
    return None


def _reply_data(body: bytes) -> dict[str, Any] | None:
    try:
        envelope = json.loads(body)
    except ValueError:
        return None
    data = envelope.get("data") if isinstance(envelope, dict) else None
    return data if isinstance(data, dict) else None


def _get_status(url: str, timeout: float) -> int:
    request = urllib.request.Request(url, method="GET")  # noqa: S310 - http(s) URL we built
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def pinned_certificate(path: Path) -> bytes:
    """The DER of the first certificate in a PEM file (the bridge's own certificate).

    Raises ``ValueError`` when the file holds none."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read the certificate {path}: {exc.strerror}") from None
    except ValueError:
        raise ValueError(f"{path} holds no PEM certificate") from None
    return certificates[0].public_bytes(Encoding.DER)


def _get_pinned_status(url: str, timeout: float, pinned: bytes) -> int:
    """``GET url`` over TLS from a server whose certificate is exactly ``pinned``.

    The certificate itself is the trust anchor, so neither a CA nor the name in it is
    checked: a health check on 127.0.0.1 of a bridge whose certificate names its public
    host. Any other certificate is refused before the request is sent."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # verified below: the one certificate pinned
    connection = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443,
                                             timeout=timeout, context=context)
    try:
        connection.connect()
        served = connection.sock.getpeercert(binary_form=True)
        if served is None or not hmac.compare_digest(served, pinned):
            raise ssl.SSLError("the bridge serves another certificate than the pinned one")
        connection.request("GET", parts.path or "/")
        return int(connection.getresponse().status)
    finally:
        connection.close()


async def bridge_is_healthy(url: str, *, time_limit: float = 2.0,
                            pinned: bytes | None = None) -> bool:
    """True when ``GET url`` (the bridge's ``/healthz``) answers 200.

    ``pinned``: for an ``https`` URL, the DER of the only certificate accepted
    (:func:`pinned_certificate`); without it, the system's CAs and the URL's host name."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    try:
        if pinned is not None and url.startswith("https://"):
            status = await asyncio.to_thread(_get_pinned_status, url, time_limit, pinned)
        else:
            status = await asyncio.to_thread(_get_status, url, time_limit)
    except (OSError, ValueError, http.client.HTTPException):
        return False
    return status == 200

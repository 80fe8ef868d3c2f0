"""NATS credentials and TLS from Settings: one place for the worker, the bridge and the CLI.

:func:`nats_security` reads the ``PQKMS_NATS_*`` settings, refuses combinations that
cannot mean what the operator intended, loads the TLS files once and returns a
:class:`NatsConnectSecurity`, which gives the same choice in the two shapes our
connections need: keyword arguments for ``nats.connect`` (bridge, Python client,
``pqkms health``, ``pqkms batch``) and a FastStream security object for the worker's
``NatsBroker``.

Authentication is one of: user + password, a ``.creds`` file (user JWT + nkey seed,
operator mode) or an nkey seed file. TLS is on when any ``PQKMS_NATS_TLS_*`` setting is
given or a server URL uses ``tls://``; a client certificate makes it mutual TLS.

Secrets never leave this module in text meant for people: errors and
:meth:`NatsConnectSecurity.describe` name settings and file paths only.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from faststream.nats import NatsCredentials, NatsNKey, NatsSecurity, NatsUserPassword
from nats.aio.client import Client as NatsClient
from nats.errors import SlowConsumerError
from pydantic import SecretStr

from worker.config import Settings
from worker.log_throttle import ThrottledWarning

__all__ = [
    "ConnectRefusalGuard",
    "ConnectionGauge",
    "NatsAccessRefused",
    "NatsConnectSecurity",
    "NatsSecurityError",
    "nats_security",
    "redacted_url",
    "redacted_urls",
    "refusal_reason",
    "server_url",
]

_log = structlog.get_logger("pqkms.nats")

# Lower-cased server error texts that mean "these credentials / this TLS setup will not
# be accepted", as opposed to a server that is merely down or restarting.
_AUTH_REFUSALS = {
    "authorization violation": "authorization violation: the server refused the NATS "
    "credentials (PQKMS_NATS_USER/PASSWORD, _CREDS_FILE or _NKEY_SEED_FILE)",
    "user authentication expired": "the NATS user's credentials have expired",
    "user authentication revoked": "the NATS user's credentials were revoked",
    "account authentication expired": "the NATS account's credentials have expired",
    "authorization timeout": "authorization timeout: the server expected credentials "
    "that were not sent",
    "secure connection - tls required": "the server requires TLS: set "
    "PQKMS_NATS_TLS_CA_FILE or use a tls:// URL",
}


def redacted_url(url: str) -> str:
    """One NATS server URL without its credentials (``nats://user:pass@host:port`` is one
    way to authenticate), for logs and messages."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


def redacted_urls(urls: str) -> str:
    """``PQKMS_NATS_URL`` (comma-separated servers) without credentials."""
    return ", ".join(redacted_url(url.strip()) for url in urls.split(",") if url.strip())


def server_url(client: NatsClient) -> str | None:
    """The server ``client`` is connected to, or was until it lost it, without
    credentials; ``None`` before any."""
    # nats-py names the server only while connected; the one just lost is still its
    # current server during the disconnect callback.
    uri = client.connected_url or getattr(getattr(client, "_current_server", None), "uri", None)
    return redacted_url(uri.geturl()) if uri is not None else None


_DEFAULT_INBOX_PREFIX = "_INBOX"


class NatsSecurityError(ValueError):
    """NATS security settings that conflict or cannot be used; says which and why."""


class NatsAccessRefused(ConnectionError):
    """The NATS server refused this client's credentials or TLS setup at first connect."""


_SUBSCRIPTION_REFUSED = "permissions violation for subscription"


@dataclass(frozen=True, slots=True)
class NatsConnectSecurity:
    """How to authenticate to NATS and whether (and how) to use TLS."""

    user: str | None = None
    password: SecretStr | None = None
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    tls_handshake_first: bool = False
    mutual_tls: bool = False
    # The first token of this connection's reply subjects (``PQKMS_NATS_INBOX_PREFIX``):
    # a server may let a user subscribe to its own prefix only (pqkms.nats_access).
    inbox_prefix: str = _DEFAULT_INBOX_PREFIX

    def nats_py_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` / ``Client.connect``."""
        options: dict[str, Any] = {}
        if self.inbox_prefix != _DEFAULT_INBOX_PREFIX:
            options["inbox_prefix"] = self.inbox_prefix
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password.get_secret_value() if self.password else ""
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = str(self.nkey_seed_file)
        if self.tls is not None:
            options["tls"] = self.tls
            options["tls_handshake_first"] = self.tls_handshake_first
            if self.tls_hostname:
                options["tls_hostname"] = self.tls_hostname
        return options

    def faststream_security(self) -> NatsSecurity | None:
        """The same choice as a FastStream ``security=`` object (``None``: no auth, no TLS)."""
        tls: dict[str, Any] = {
            "ssl_context": self.tls,
            "tls_hostname": self.tls_hostname,
            "tls_handshake_first": self.tls_handshake_first,
        }
        if self.creds_file is not None:
            return NatsCredentials.from_file(self.creds_file, **tls)
        if self.nkey_seed_file is not None:
            return NatsNKey.from_file(self.nkey_seed_file, **tls)
        if self.user is not None:
            password = self.password.get_secret_value() if self.password else ""
            return NatsUserPassword(self.user, password, **tls)
        if self.tls is not None:
            return NatsSecurity(**tls)
        return None

    def describe(self) -> str:
        """One line for logs: the method and the files, never a secret."""
        if self.creds_file is not None:
            auth = f"creds file {self.creds_file}"
        elif self.nkey_seed_file is not None:
            auth = f"nkey seed file {self.nkey_seed_file}"
        elif self.user is not None:
            auth = f"user {self.user!r} with password"
        else:
            auth = "no credentials"
        if self.tls is None:
            return f"{auth}, no TLS"
        return f"{auth}, {'mutual TLS' if self.mutual_tls else 'TLS'}"


def _given(path: Path | None, setting: str) -> Path | None:
    """The path when set; a clear error when it names no readable file."""
    if path is None:
        return None
    if not path.is_file():
        raise NatsSecurityError(f"{setting}: {path} is not a file")
    return path


def _seed_file(path: Path | None) -> Path | None:
    """The seed file when it holds one user seed and nothing else (nats-py reads the
    whole file as the seed); the error never quotes the file."""
    path = _given(path, "PQKMS_NATS_NKEY_SEED_FILE")
    if path is None:
        return None
    try:
        content = path.read_bytes().strip()
    except OSError as exc:
        raise NatsSecurityError(
            f"PQKMS_NATS_NKEY_SEED_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    if not content.startswith(b"SU") or len(content.split()) != 1:
        raise NatsSecurityError(
            f"PQKMS_NATS_NKEY_SEED_FILE: {path} must hold one user nkey seed (SU...) "
            "and nothing else"
        )
    return path


def _urls_carry_credentials(nats_url: str) -> bool:
    for url in nats_url.split(","):
        url = url.strip()
        if url and "@" in urlsplit(url if "://" in url else f"nats://{url}").netloc:
            return True
    return False


def _uses_tls_scheme(nats_url: str) -> bool:
    return any(url.strip().lower().startswith("tls://") for url in nats_url.split(","))


def _check_one_auth(settings: Settings) -> None:
    chosen = [
        name
        for name, given in (
            ("PQKMS_NATS_USER/PASSWORD", bool(settings.nats_user)),
            ("PQKMS_NATS_CREDS_FILE", settings.nats_creds_file is not None),
            ("PQKMS_NATS_NKEY_SEED_FILE", settings.nats_nkey_seed_file is not None),
            ("credentials in PQKMS_NATS_URL", _urls_carry_credentials(settings.nats_url)),
        )
        if given
    ]
    if len(chosen) > 1:
        raise NatsSecurityError(
            f"choose one NATS authentication method, not {' and '.join(chosen)}"
        )
    if settings.nats_password is not None and not settings.nats_user:
        raise NatsSecurityError("PQKMS_NATS_PASSWORD is set without PQKMS_NATS_USER")


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    ca_file = _given(settings.nats_tls_ca_file, "PQKMS_NATS_TLS_CA_FILE")
    cert_file = _given(settings.nats_tls_cert_file, "PQKMS_NATS_TLS_CERT_FILE")
    key_file = _given(settings.nats_tls_key_file, "PQKMS_NATS_TLS_KEY_FILE")
    if (cert_file is None) != (key_file is None):
        raise NatsSecurityError(
            "mutual TLS needs both PQKMS_NATS_TLS_CERT_FILE and PQKMS_NATS_TLS_KEY_FILE"
        )
    wanted = (
        ca_file is not None
        or cert_file is not None
        or settings.nats_tls_server_name is not None
        or settings.nats_tls_handshake_first
        or _uses_tls_scheme(settings.nats_url)
    )
    if not wanted:
        return None
    try:
        # Verifies the server's certificate and host name; TLS 1.2 at least.
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
        )
    except (ssl.SSLError, OSError) as exc:
        raise NatsSecurityError(
            f"PQKMS_NATS_TLS_CA_FILE: cannot load {ca_file}: {_ssl_text(exc)}"
        ) from None
    if cert_file is not None and key_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except (ssl.SSLError, OSError) as exc:
            raise NatsSecurityError(
                f"PQKMS_NATS_TLS_CERT_FILE/KEY_FILE: cannot load {cert_file} with key "
                f"{key_file}: {_ssl_text(exc)}"
            ) from None
    return context


def _ssl_text(exc: BaseException) -> str:
    # An SSLError's reason ("PEM_LIB", "KEY_VALUES_MISMATCH") says enough and holds no
    # file contents.
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else (getattr(exc, "strerror", None) or type(exc).__name__)


def nats_security(settings: Settings) -> NatsConnectSecurity:
    """The connection security ``settings`` ask for.

    Raises :class:`NatsSecurityError` on conflicting settings (two authentication
    methods, a password without a user, half a client certificate) or unusable files.
    """
    _check_one_auth(settings)
    context = _tls_context(settings)
    return NatsConnectSecurity(
        user=settings.nats_user or None,
        password=settings.nats_password,
        creds_file=_given(settings.nats_creds_file, "PQKMS_NATS_CREDS_FILE"),
        nkey_seed_file=_seed_file(settings.nats_nkey_seed_file),
        tls=context,
        tls_hostname=settings.nats_tls_server_name,
        tls_handshake_first=settings.nats_tls_handshake_first and context is not None,
        mutual_tls=settings.nats_tls_cert_file is not None,
        inbox_prefix=settings.nats_inbox_prefix,
    )


def refusal_reason(exc: BaseException) -> str | None:
    """Why the server will not accept this client, for a log line; ``None`` when the
    failure looks transient (server down, restarting, network)."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return None  # the peer went away mid-handshake: a restart, not a refusal
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the server's certificate was not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or type(exc).__name__}"
    text = str(exc).removeprefix("nats: ").strip().strip("'").lower()
    for marker, reason in _AUTH_REFUSALS.items():
        if marker in text:
            return reason
    return None


_SLOW_CONSUMER = ThrottledWarning("pqkms.nats", "nats_slow_consumer")


class ConnectionGauge(Protocol):
    """Where the state of a NATS connection is exported (``worker.metrics``)."""

    def watch_nats_connection(self, is_connected: Callable[[], bool]) -> None:
        """Report ``is_connected()`` (called at scrape time, from another thread)."""


class ConnectRefusalGuard:
    """NATS connection callbacks that make a refused connection loud, not a silent loop,
    and an outage visible.

    Every refusal (wrong credentials, TLS failure) is logged once per outage with its
    reason. Before the first connection has ever been lost, a refusal also aborts the
    connect call with :class:`NatsAccessRefused` (nats-py lets an error callback's
    exception end its connect loop), so a misconfigured worker exits at start instead of
    retrying forever. Once a connection has been up, refusals are only logged and
    reconnecting goes on: the server's configuration may be mid-reload.

    Given its connection (:meth:`use_connection`), the guard also logs
    ``nats_disconnected`` and ``nats_reconnected`` with the server's URL, as the bridge
    does, and reports whether the connection is up (:meth:`is_connected`).
    """

    def __init__(self, component: str, *, fail_at_start: bool = True) -> None:
        self._component = component
        self._fail_at_start = fail_at_start
        self._was_connected = False
        self._reported: set[str] = set()
        self._subscriptions_refused: list[str] = []
        self._connection: Callable[[], NatsClient] | None = None
        self._down_since: float | None = None

    def use_connection(self, connection: Callable[[], NatsClient],
                       gauge: ConnectionGauge | None = None) -> None:
        """The connection these callbacks belong to (the worker's: ``lambda:
        broker.connection``), and where to export its state. Without it the guard cannot
        tell an outage from a deliberate close, so it logs no connection events."""
        self._connection = connection
        if gauge is not None:
            gauge.watch_nats_connection(self.is_connected)

    def is_connected(self) -> bool:
        """True while the connection is up; safe to call from another thread."""
        client = self._client()
        return client is not None and client.is_connected

    def _client(self) -> NatsClient | None:
        if self._connection is None:
            return None
        try:
            return self._connection()
        except Exception:  # FastStream raises until the first connect
            return None

    def subscriptions_refused(self) -> list[str]:
        """The server's permission errors about this client's subscriptions so far
        (nats-py reports them through ``error_cb`` and keeps the connection)."""
        return list(self._subscriptions_refused)

    @property
    def error_cb(self) -> Callable[[Exception], Awaitable[None]]:
        """For ``error_cb=``."""
        return self._on_error

    @property
    def disconnected_cb(self) -> Callable[[], Awaitable[None]]:
        """For ``disconnected_cb=``: nats-py calls it only after a connection was up."""
        return self._on_disconnected

    @property
    def reconnected_cb(self) -> Callable[[], Awaitable[None]]:
        """For ``reconnected_cb=``: a new outage may report again."""
        return self._on_reconnected

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            # One per message dropped: counted, one line a second (worker.log_throttle).
            _SLOW_CONSUMER.note(component=self._component, subject=exc.subject)
            return
        text = str(exc)
        if _SUBSCRIPTION_REFUSED in text and len(self._subscriptions_refused) < 100:
            self._subscriptions_refused.append(text.removeprefix("nats: "))
        reason = refusal_reason(exc)
        if reason is None:
            return
        if reason not in self._reported:
            self._reported.add(reason)
            _log.error("nats_access_refused", component=self._component, reason=reason)
        if self._fail_at_start and not self._was_connected:
            raise NatsAccessRefused(f"NATS refused the {self._component}: {reason}")

    async def _on_disconnected(self) -> None:
        self._was_connected = True
        client = self._client()
        if client is None or client.is_closed:
            return  # closing on purpose (the worker stops): not an outage
        self._down_since = time.monotonic()
        _log.warning("nats_disconnected", component=self._component,
                     url=server_url(client))

    async def _on_reconnected(self) -> None:
        self._reported.clear()
        client = self._client()
        if client is None:
            return
        down, self._down_since = self._down_since, None
        _log.info("nats_reconnected", component=self._component, url=server_url(client),
                  down_seconds=None if down is None else round(time.monotonic() - down, 3))

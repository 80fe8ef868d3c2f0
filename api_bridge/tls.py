"""HTTPS for the bridge: what it serves, and when it refuses to serve plain HTTP.

The Qpher API takes HTTPS only, TLS 1.3. The bridge serves HTTPS with the certificate
and key of ``PQKMS_HTTP_TLS_CERT_FILE`` and ``PQKMS_HTTP_TLS_KEY_FILE``, TLS 1.3 and
nothing older. Without them it serves plain HTTP only where no network sees it (a
loopback address, as ``pqkms up`` does by default) or where the operator says that a
proxy in front terminates TLS (``PQKMS_HTTP_ALLOW_PLAIN``); anywhere else it refuses to
start rather than take API keys in clear text (docs/http-api.md, "HTTPS").
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from worker.config import Settings

__all__ = ["BridgeTlsError", "http_scheme", "https_context", "is_loopback", "serves_plain"]

_CERT_SETTING = "PQKMS_HTTP_TLS_CERT_FILE"
_KEY_SETTING = "PQKMS_HTTP_TLS_KEY_FILE"


class BridgeTlsError(ValueError):
    """The bridge's TLS settings cannot work; the message says which and why."""


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or a wildcard such as 0.0.0.0: reachable from outside


def http_scheme(settings: Settings) -> str:
    """``https`` when the bridge has a certificate, else ``http``."""
    return "https" if settings.http_tls_cert_file is not None else "http"


def serves_plain(settings: Settings) -> bool:
    """True when the bridge would serve plain HTTP on an address others reach (allowed
    by ``PQKMS_HTTP_ALLOW_PLAIN``: a proxy in front terminates TLS)."""
    return settings.http_tls_cert_file is None and not is_loopback(settings.http_host)


def https_context(settings: Settings) -> ssl.SSLContext | None:
    """The server context for the bridge's HTTPS, or ``None`` for plain HTTP.

    Raises :class:`BridgeTlsError` for a certificate without its key (or the reverse),
    files that do not load, and plain HTTP on an address others reach without
    ``PQKMS_HTTP_ALLOW_PLAIN``."""
    cert, key = settings.http_tls_cert_file, settings.http_tls_key_file
    if (cert is None) != (key is None):
        raise BridgeTlsError(f"{_CERT_SETTING} and {_KEY_SETTING} go together: set both "
                             "for HTTPS, or neither")
    if cert is not None and key is not None:
        return _server_context(cert, key)
    if serves_plain(settings) and not settings.http_allow_plain:
        raise BridgeTlsError(
            f"the bridge would serve plain HTTP on {settings.http_host}, where API keys "
            f"would cross the network in clear text: set {_CERT_SETTING} and {_KEY_SETTING} "
            "for HTTPS, or PQKMS_HTTP_ALLOW_PLAIN=true when a proxy in front of the bridge "
            "terminates TLS"
        )
    return None


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        # The reason names the file and what is wrong with it, never the key's content.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BridgeTlsError(
            f"the bridge's certificate {cert} and key {key} do not load: {reason}"
        ) from None
    return context

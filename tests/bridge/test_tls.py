"""api_bridge.tls: HTTPS with TLS 1.3 only, and no plain HTTP where a network sees it."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from api_bridge.tls import BridgeTlsError, http_scheme, https_context, is_loopback
from pqkms.nats_embedded import find_free_port
from tests.cli.processes import clean_env
from tests.support.pki import Authority
from worker.config import Settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A server certificate and key for 127.0.0.1, and the key of another certificate."""
    directory = tmp_path_factory.mktemp("pki")
    authority = Authority.create(directory, "bridge-ca")
    cert, key = authority.issue(directory, "bridge", server=True)
    _, other_key = authority.issue(directory, "other", server=True)
    return cert, key, other_key


def _settings(**values: object) -> Settings:
    return Settings(**{"nats_url": "nats://127.0.0.1:1", **values})  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_plain_http_is_served_on_loopback(host: str) -> None:
    assert is_loopback(host)
    assert https_context(_settings(http_host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "bridge.example.com"])
def test_plain_http_where_a_network_sees_it_is_refused_unless_a_proxy_terminates_tls(
    host: str,
) -> None:
    assert not is_loopback(host)
    with pytest.raises(BridgeTlsError) as refused:
        https_context(_settings(http_host=host))
    message = str(refused.value)
    assert f"plain HTTP on {host}" in message
    assert "PQKMS_HTTP_TLS_CERT_FILE" in message
    assert "PQKMS_HTTP_ALLOW_PLAIN=true" in message
    assert https_context(_settings(http_host=host, http_allow_plain=True)) is None


def test_a_certificate_serves_https_with_tls_1_3_only(pki: tuple[Path, Path, Path]) -> None:
    cert, key, _ = pki
    settings = _settings(http_host="0.0.0.0", http_tls_cert_file=cert,
                         http_tls_key_file=key)
    context = https_context(settings)
    assert context is not None
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert http_scheme(settings) == "https"
    assert http_scheme(_settings()) == "http"


@pytest.mark.parametrize("given", ["cert", "key"])
def test_a_certificate_and_its_key_go_together(pki: tuple[Path, Path, Path], given: str) -> None:
    cert, key, _ = pki
    values = {"http_tls_cert_file": cert} if given == "cert" else {"http_tls_key_file": key}
    with pytest.raises(BridgeTlsError, match="go together"):
        https_context(_settings(**values))


def test_files_that_do_not_load_are_named_and_their_content_is_not(
    pki: tuple[Path, Path, Path], tmp_path: Path,
) -> None:
    cert, _, other_key = pki
    missing = tmp_path / "missing.key"
    with pytest.raises(BridgeTlsError) as refused:
        https_context(_settings(http_tls_cert_file=cert, http_tls_key_file=missing))
    assert str(missing) in str(refused.value)
    assert "No such file" in str(refused.value)

    with pytest.raises(BridgeTlsError) as mismatched:
        https_context(_settings(http_tls_cert_file=cert, http_tls_key_file=other_key))
    assert str(other_key) in str(mismatched.value)
    assert "PRIVATE KEY" not in str(mismatched.value)


def test_the_bridge_process_refuses_to_serve_plain_http_off_loopback() -> None:
    env = clean_env(PQKMS_NATS_URL="nats://127.0.0.1:1", PQKMS_HTTP_HOST="0.0.0.0",
                    PQKMS_HTTP_PORT=str(find_free_port()))
    started = subprocess.run([sys.executable, "-m", "api_bridge"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert started.returncode == 1
    assert started.stderr.strip().startswith("pqkms bridge: the bridge would serve plain HTTP")
    assert "Traceback" not in started.stderr

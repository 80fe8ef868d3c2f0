"""``pqkms up`` with a certificate: the bridge takes HTTPS, TLS 1.3, and nothing else.

The Qpher API takes HTTPS only (TLS 1.3); the official SDK reaches the stack over it
with the CA in ``REQUESTS_CA_BUNDLE``, plain HTTP and TLS 1.2 get no answer, and the
health check accepts the bridge's own certificate for a loopback URL.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pqkms.nats_embedded import find_free_port
from pqkms.stack import bridge_available
from tests.cli.processes import RunningCommand, clean_env, run_pqkms, start_pqkms
from tests.support.pki import Authority

pytestmark = pytest.mark.skipif(not bridge_available(), reason="api_bridge is not installed")


@dataclass(frozen=True)
class HttpsStack:
    """``pqkms up`` serving HTTPS on ``port`` with a certificate of ``ca``."""

    up: RunningCommand
    port: int
    data_dir: Path
    ca_file: Path
    cert_file: Path
    other_cert_file: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def https_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsStack]:
    root = tmp_path_factory.mktemp("https-up")
    authority = Authority.create(root, "bridge-ca")
    cert, key = authority.issue(root, "bridge", server=True)
    other_cert, _ = Authority.create(root, "other-ca").issue(root, "other", server=True)
    port, data_dir = find_free_port(), root / "data"
    up = start_pqkms("up", "--data-dir", str(data_dir), "--http-port", str(port),
                     "--nats-port", str(find_free_port()), "--workers", "1",
                     "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        ready = up.wait_for_stdout("pqkms ready:", timeout=90)
        assert f"HTTP https://127.0.0.1:{port}" in ready
        yield HttpsStack(up, port, data_dir, authority.cert_file, cert, other_cert)
        assert up.stop(signal.SIGTERM, timeout=60) == 0
    finally:
        up.kill()


def _api_key(data_dir: Path) -> str:
    created = run_pqkms("tenant", "create", "acme", "--plan", "pro", "--data-dir", str(data_dir))
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["api_key"])


def test_the_sdk_encrypts_and_decrypts_over_https(
    https_stack: HttpsStack, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qpher import Qpher

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_stack.ca_file))  # requests' trust store
    sdk = Qpher(api_key=_api_key(https_stack.data_dir), base_url=https_stack.url,
                max_retries=0, timeout=30)
    version = sdk.keys.generate("Kyber768").key_version
    sealed = sdk.kem.encrypt(b"over TLS 1.3", key_version=version)
    assert sdk.kem.decrypt(sealed.ciphertext, key_version=version).plaintext == b"over TLS 1.3"


def test_plain_http_gets_no_answer(https_stack: HttpsStack) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", https_stack.port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            connection.request("GET", "/healthz")
            connection.getresponse()
    finally:
        connection.close()


def test_tls_1_2_is_refused(https_stack: HttpsStack) -> None:
    context = ssl.create_default_context(cafile=str(https_stack.ca_file))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", https_stack.port), timeout=10) as raw, \
            pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="127.0.0.1")

    context = ssl.create_default_context(cafile=str(https_stack.ca_file))
    with socket.create_connection(("127.0.0.1", https_stack.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.3"


def test_health_accepts_the_bridges_own_certificate_and_no_other(
    https_stack: HttpsStack,
) -> None:
    healthz = f"{https_stack.url}/healthz"
    by_variable = run_pqkms("health", "--http-url", healthz, "--timeout", "15",
                            env=clean_env(PQKMS_HTTP_TLS_CERT_FILE=str(https_stack.cert_file)))
    assert by_variable.returncode == 0, by_variable.stderr
    pinned_elsewhere = run_pqkms("health", "--http-url", healthz, "--timeout", "15",
                                 "--http-cert", str(https_stack.other_cert_file))
    assert pinned_elsewhere.returncode == 1
    assert "unhealthy" in pinned_elsewhere.stderr
    # Without a pin: the system's CAs, which do not know this test's CA.
    assert run_pqkms("health", "--http-url", healthz, "--timeout", "15").returncode == 1


def test_up_refuses_plain_http_off_loopback_before_it_starts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    refused = run_pqkms("up", "--data-dir", str(data_dir), "--http-host", "0.0.0.0",
                        "--http-port", str(find_free_port()), "--nats-port", str(find_free_port()))
    assert refused.returncode == 1
    assert refused.stderr.startswith("pqkms up: the bridge would serve plain HTTP on 0.0.0.0")
    assert not data_dir.exists()

"""Settings → NATS connection options (worker/nats_security.py), without a server."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faststream.nats import (
    NatsBroker,
    NatsCredentials,
    NatsNKey,
    NatsSecurity,
    NatsUserPassword,
)
from pydantic import SecretStr
from structlog.testing import capture_logs

from worker.config import Settings
from worker.nats_security import (
    ConnectRefusalGuard,
    NatsAccessRefused,
    NatsSecurityError,
    nats_security,
    refusal_reason,
)

PASSWORD = "correct horse battery staple"


def _settings(**values: object) -> Settings:
    # Keyword arguments win over any PQKMS_* variable of the environment running the tests.
    base: dict[str, object] = {
        "nats_url": "nats://127.0.0.1:4222", "nats_user": None, "nats_password": None,
        "nats_creds_file": None, "nats_nkey_seed_file": None, "nats_tls_ca_file": None,
        "nats_tls_cert_file": None, "nats_tls_key_file": None, "nats_tls_server_name": None,
        "nats_tls_handshake_first": False,
    }
    base.update(values)
    return Settings(**base)  # type: ignore[arg-type]


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate (usable as its own CA) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "user.nk"
    path.write_text("SUAPJ54Q3DQZ5TSHDRRRTDYBSIXBZKXXKBHVKNYH7FHACZXDJSCRAE6UMM\n")
    return path


@pytest.fixture
def creds_file(tmp_path: Path) -> Path:
    path = tmp_path / "user.creds"
    path.write_text("-----BEGIN NATS USER JWT-----\nplaceholder\n------END NATS USER JWT------\n")
    return path


# -- what each setting turns into ---------------------------------------------------------------


def test_nothing_set_means_no_options_and_no_faststream_security() -> None:
    security = nats_security(_settings())
    assert security.nats_py_options() == {}
    assert security.faststream_security() is None
    assert security.describe() == "no credentials, no TLS"


def test_user_and_password() -> None:
    security = nats_security(_settings(nats_user="worker", nats_password=SecretStr(PASSWORD)))
    assert security.nats_py_options() == {"user": "worker", "password": PASSWORD}
    faststream = security.faststream_security()
    assert isinstance(faststream, NatsUserPassword)
    assert (faststream.username, faststream.password) == ("worker", PASSWORD)
    assert PASSWORD not in security.describe() and PASSWORD not in repr(security)


def test_nkey_seed_file(seed_file: Path) -> None:
    security = nats_security(_settings(nats_nkey_seed_file=seed_file))
    assert security.nats_py_options() == {"nkeys_seed": str(seed_file)}
    faststream = security.faststream_security()
    assert isinstance(faststream, NatsNKey) and faststream.seed == str(seed_file)
    assert faststream.seed_is_file
    # The file's path, never its content.
    assert str(seed_file) in security.describe() and "SUAP" not in security.describe()


def test_creds_file(creds_file: Path) -> None:
    security = nats_security(_settings(nats_creds_file=creds_file))
    assert security.nats_py_options() == {"user_credentials": str(creds_file)}
    faststream = security.faststream_security()
    assert isinstance(faststream, NatsCredentials) and faststream.credentials == creds_file


def test_a_ca_file_turns_tls_on_with_verification(tmp_path: Path) -> None:
    ca_file, _ = _self_signed(tmp_path, "ca")
    security = nats_security(_settings(nats_tls_ca_file=ca_file,
                                       nats_tls_server_name="nats.internal"))
    context = security.nats_py_options()["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [entry["subject"] for entry in context.get_ca_certs()] == [((("commonName", "ca"),),)]
    assert security.nats_py_options()["tls_hostname"] == "nats.internal"
    assert security.nats_py_options()["tls_handshake_first"] is False
    faststream = security.faststream_security()
    assert type(faststream) is NatsSecurity
    assert faststream.ssl_context is context and faststream.tls_hostname == "nats.internal"
    assert security.describe() == "no credentials, TLS"


def test_a_client_certificate_makes_it_mutual_tls(tmp_path: Path, seed_file: Path) -> None:
    ca_file, _ = _self_signed(tmp_path, "ca")
    cert_file, key_file = _self_signed(tmp_path, "client")
    security = nats_security(_settings(
        nats_tls_ca_file=ca_file, nats_tls_cert_file=cert_file, nats_tls_key_file=key_file,
        nats_nkey_seed_file=seed_file, nats_tls_handshake_first=True))
    assert security.mutual_tls
    options = security.nats_py_options()
    assert options["tls_handshake_first"] is True and options["nkeys_seed"] == str(seed_file)
    faststream = security.faststream_security()
    assert isinstance(faststream, NatsNKey)
    assert faststream.ssl_context is options["tls"] and faststream.tls_handshake_first
    assert security.describe().endswith("mutual TLS")


def test_a_tls_url_alone_turns_tls_on_with_the_system_cas() -> None:
    security = nats_security(_settings(nats_url="tls://nats.example:4222"))
    assert isinstance(security.nats_py_options()["tls"], ssl.SSLContext)


def test_the_broker_accepts_the_security_object(seed_file: Path) -> None:
    security = nats_security(_settings(nats_nkey_seed_file=seed_file))
    NatsBroker("nats://127.0.0.1:4222", security=security.faststream_security())


# -- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nats_user": "u", "nats_password": SecretStr(PASSWORD), "nats_creds_file": "creds"},
         "PQKMS_NATS_USER/PASSWORD and PQKMS_NATS_CREDS_FILE"),
        ({"nats_creds_file": "creds", "nats_nkey_seed_file": "seed"},
         "PQKMS_NATS_CREDS_FILE and PQKMS_NATS_NKEY_SEED_FILE"),
        ({"nats_url": f"nats://u:{PASSWORD}@127.0.0.1:4222", "nats_nkey_seed_file": "seed"},
         "PQKMS_NATS_NKEY_SEED_FILE and credentials in PQKMS_NATS_URL"),
        ({"nats_password": SecretStr(PASSWORD)}, "PQKMS_NATS_PASSWORD is set without"),
    ],
    ids=["user-and-creds", "creds-and-nkey", "url-and-nkey", "password-without-user"],
)
def test_conflicting_authentication_is_refused(
    values: dict[str, object], message: str, seed_file: Path, creds_file: Path
) -> None:
    files = {"creds": creds_file, "seed": seed_file}
    values = {name: files.get(value, value) if isinstance(value, str) else value
              for name, value in values.items()}
    with pytest.raises(NatsSecurityError) as refused:
        nats_security(_settings(**values))
    assert message in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_half_a_client_certificate_is_refused(tmp_path: Path) -> None:
    cert_file, _ = _self_signed(tmp_path, "client")
    with pytest.raises(NatsSecurityError, match="both PQKMS_NATS_TLS_CERT_FILE and"):
        nats_security(_settings(nats_tls_cert_file=cert_file))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.nk"
    with pytest.raises(NatsSecurityError) as refused:
        nats_security(_settings(nats_nkey_seed_file=missing))
    assert str(refused.value) == f"PQKMS_NATS_NKEY_SEED_FILE: {missing} is not a file"


def test_a_seed_file_with_more_than_the_seed_is_refused(tmp_path: Path) -> None:
    seed = "SUAPJ54Q3DQZ5TSHDRRRTDYBSIXBZKXXKBHVKNYH7FHACZXDJSCRAE6UMM"
    pair = tmp_path / "worker.pair"  # what `nk -gen user -pubout` prints
    pair.write_text(f"{seed}\nUAKRP7WJGLFXOH4OOOUGILLZTF5NLMUH3PCR2QOFLX6SK5Z755BOK6W7\n")
    with pytest.raises(NatsSecurityError) as refused:
        nats_security(_settings(nats_nkey_seed_file=pair))
    assert "must hold one user nkey seed" in str(refused.value)
    assert seed not in str(refused.value)


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    cert_file, _ = _self_signed(tmp_path, "client")
    _, other_key = _self_signed(tmp_path, "other")
    with pytest.raises(NatsSecurityError, match=r"cannot load .*client\.crt with key"):
        nats_security(_settings(nats_tls_cert_file=cert_file, nats_tls_key_file=other_key))


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(NatsSecurityError, match="PQKMS_NATS_TLS_CA_FILE: cannot load"):
        nats_security(_settings(nats_tls_ca_file=garbage))


# -- refusals reported by a server --------------------------------------------------------------


def test_refusal_reasons() -> None:
    assert "authorization violation" in (
        refusal_reason(nats.errors.Error("nats: 'Authorization Violation'")) or "")
    assert "requires TLS" in (
        refusal_reason(nats.errors.Error("nats: 'Secure Connection - TLS Required'")) or "")
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    assert refusal_reason(verify) == (
        "TLS: the server's certificate was not accepted: unable to get local issuer certificate")
    # Down or restarting is not a refusal.
    assert refusal_reason(ConnectionRefusedError(111, "Connection refused")) is None
    assert refusal_reason(ssl.SSLEOFError(8, "EOF occurred")) is None
    assert refusal_reason(nats.errors.Error("nats: 'Stale Connection'")) is None


async def test_the_guard_ends_the_first_connect_then_only_logs() -> None:
    guard = ConnectRefusalGuard("worker")
    refused = nats.errors.Error("nats: 'Authorization Violation'")
    with capture_logs() as logs:
        await guard.error_cb(ConnectionRefusedError(111, "Connection refused"))  # retried
        with pytest.raises(NatsAccessRefused, match="NATS refused the worker: authorization"):
            await guard.error_cb(refused)
        with pytest.raises(NatsAccessRefused):
            await guard.error_cb(refused)
        await guard.disconnected_cb()  # it had been connected: keep reconnecting
        await guard.error_cb(refused)
        await guard.reconnected_cb()
        await guard.error_cb(refused)
    events = [entry["event"] for entry in logs]
    # Once per outage, not once per attempt.
    assert events == ["nats_access_refused", "nats_access_refused"]

"""NATS with mutual TLS and nkey users, under the accounts and permissions of deploy/nats/.

The server runs ``deploy/nats/server-tls.conf`` (which includes ``accounts.conf``) as
shipped, with a throwaway CA, certificates and nkeys in the environment, so the
documented configuration is the tested one. A worker and the bridge connect with
their own nkeys and client certificates; a client application does too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import nats.errors
import nkeys
import orjson
import pytest
from pydantic import SecretStr

from pqkms.client import PqkmsClient
from pqkms.health import ping_workers
from pqkms.nats_embedded import EmbeddedNats, find_free_port, nats_server_binary
from schemas.subjects import Subject
from tests.support.pki import Authority
from tests.support.stack import LocalStack
from worker.config import Settings
from worker.nats_security import nats_security, redacted_url, redacted_urls

pytestmark = [pytest.mark.integration, pytest.mark.long]

DEPLOY_NATS = Path(__file__).resolve().parents[2] / "deploy" / "nats"
ROLES = ("worker", "bridge", "app", "stranger")  # stranger: a key the server does not know


# -- throwaway nkeys --------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """One NATS user: its nkey seed file and public key, and a client certificate."""

    seed_file: Path
    public_key: str
    cert_file: Path
    key_file: Path


def _nkey_user(directory: Path, name: str) -> tuple[Path, str]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = directory / f"{name}.nk"
    seed_file.write_bytes(seed)
    seed_file.chmod(0o600)
    return seed_file, public


@dataclass
class SecureNats:
    """The TLS server and everything a client needs to reach it."""

    server: EmbeddedNats
    ca: Authority
    rogue_ca: Authority  # signs nothing the server trusts
    users: dict[str, Identity]
    log_file: Path

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.server.port}"

    def settings(self, role: str, **changes: object) -> Settings:
        """Settings of a process connecting as ``role``."""
        user = self.users[role]
        values: dict[str, object] = {
            "nats_url": self.url,
            "nats_nkey_seed_file": user.seed_file,
            "nats_tls_ca_file": self.ca.cert_file,
            "nats_tls_cert_file": user.cert_file,
            "nats_tls_key_file": user.key_file,
        }
        values.update(changes)
        return Settings(**values)  # type: ignore[arg-type]

    def env(self, role: str) -> dict[str, str]:
        """``PQKMS_NATS_*`` variables of a process connecting as ``role``."""
        user = self.users[role]
        return {
            "PQKMS_NATS_URL": self.url,
            "PQKMS_NATS_NKEY_SEED_FILE": str(user.seed_file),
            "PQKMS_NATS_TLS_CA_FILE": str(self.ca.cert_file),
            "PQKMS_NATS_TLS_CERT_FILE": str(user.cert_file),
            "PQKMS_NATS_TLS_KEY_FILE": str(user.key_file),
        }

    async def connect(self, role: str, **options: object) -> nats.NATS:
        """A nats-py connection as ``role``, failing at once instead of retrying."""
        connect_options = nats_security(self.settings(role)).nats_py_options()
        connect_options.update(options)
        return await nats.connect(self.url, allow_reconnect=False, connect_timeout=3,
                                  **connect_options)

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nats-server did not listen")


@pytest.fixture(scope="module")
def secure_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureNats]:
    root = tmp_path_factory.mktemp("nats-security")
    pki = root / "pki"
    pki.mkdir()
    ca = Authority.create(pki, "pqkms-test-ca")
    rogue_ca = Authority.create(pki, "rogue-ca")
    server_cert, server_key = ca.issue(pki, "nats-server", server=True)
    users = {}
    for role in ROLES:
        seed_file, public = _nkey_user(pki, role)
        cert_file, key_file = ca.issue(pki, f"{role}-client", server=False)
        users[role] = Identity(seed_file, public, cert_file, key_file)
    port = find_free_port()
    env = {
        **os.environ,
        "NATS_HOST": "127.0.0.1",
        "NATS_CLIENT_PORT": str(port),
        "NATS_STORE_DIR": str(root / "jetstream"),
        "NATS_TLS_CERT": str(server_cert),
        "NATS_TLS_KEY": str(server_key),
        "NATS_TLS_CA": str(ca.cert_file),
        "NATS_WORKER_NKEY": users["worker"].public_key,
        "NATS_BRIDGE_NKEY": users["bridge"].public_key,
        "NATS_APP_NKEY": users["app"].public_key,
    }
    config = DEPLOY_NATS / "server-tls.conf"
    log_file = root / "nats.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)], env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = EmbeddedNats(process, "127.0.0.1", port, root / "jetstream", config)
    try:
        _wait_for_port(port, process)
        yield SecureNats(server, ca, rogue_ca, users, log_file)
    finally:
        server.stop()


# -- a stack whose processes connect with their own identities --------------------------------


@dataclass
class SecureStack(LocalStack):
    """LocalStack on the TLS server: workers as ``worker``, the bridge as ``bridge``."""

    secure: SecureNats | None = None
    role_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def start_worker(self) -> subprocess.Popen[bytes]:
        self.extra_env = self.role_env["worker"]
        return super().start_worker()

    def start_bridge(self) -> None:
        self.extra_env = self.role_env["bridge"]
        super().start_bridge()

    async def wait_for_workers(self, count: int, timeout: float = 30.0) -> None:
        assert self.secure is not None
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        client = await self.secure.connect("app")
        try:
            while len(seen) < count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(seen)} of {count} workers answered")
                for process in self.workers:
                    if process.poll() is not None:
                        raise RuntimeError(self.exit_report(process))
                try:
                    reply = await client.request(Subject.HEALTH_PING.value, b"", timeout=0.5)
                    seen.add(orjson.loads(reply.data)["data"]["worker"])
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    await asyncio.sleep(0.1)
        finally:
            await client.close()


@pytest.fixture(scope="module")
async def secure_stack(secure_nats: SecureNats,
                       tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecureStack]:
    worker_env = secure_nats.env("worker")
    # The worker never sends a clear-text byte; the bridge uses the classic upgrade.
    worker_env["PQKMS_NATS_TLS_HANDSHAKE_FIRST"] = "true"
    stack = SecureStack(
        root=tmp_path_factory.mktemp("secure-stack"),
        external_nats=[secure_nats.url],
        secure=secure_nats,
        role_env={"worker": worker_env, "bridge": secure_nats.env("bridge")},
    )
    try:
        await stack.start(workers=1, bridge=True)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
async def app_key(secure_stack: SecureStack) -> str:
    return await secure_stack.create_tenant()


class Errors:
    """An error callback that keeps what nats-py reports."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for text in self.seen:
                if re.search(pattern, text, re.IGNORECASE):
                    return text
            await asyncio.sleep(0.05)
        raise AssertionError(f"no error matching {pattern!r}; saw {self.seen}")


# -- what works ---------------------------------------------------------------------------------


async def test_client_application_encrypts_over_mutual_tls_with_an_nkey(
    secure_stack: SecureStack, secure_nats: SecureNats, app_key: str
) -> None:
    client = await PqkmsClient.from_settings(secure_nats.settings("app"), app_key)
    async with client:
        await client.generate_key("Kyber768")
        sealed = await client.encrypt(b"over TLS", 1)
        assert await client.decrypt(sealed["ciphertext"], 1) == b"over TLS"
        signature_key = await client.generate_key("Dilithium3")
        signed = await client.sign(b"msg", signature_key["key_version"])
        assert await client.verify(b"msg", signed["signature"], signature_key["key_version"])


async def test_jobs_run_under_the_worker_permissions(
    secure_stack: SecureStack, secure_nats: SecureNats
) -> None:
    api_key = await secure_stack.create_tenant()
    async with await PqkmsClient.from_settings(secure_nats.settings("app"), api_key) as client:
        await client.generate_key("Kyber768")
        job_id = await client.submit_job("kem.encrypt", [{"plaintext": "AA=="}] * 5,
                                         key_version=1, chunk_items=2)
        status = await client.wait_for_job(job_id, timeout=60)
        assert status["items_done"] == 5
        assert len([result async for result in client.job_results(job_id)]) == 5


async def test_bridge_serves_http_through_its_own_account(secure_stack: SecureStack) -> None:
    headers = {"X-API-Key": await secure_stack.create_tenant()}
    async with httpx.AsyncClient(base_url=secure_stack.http_url, headers=headers,
                                 timeout=30) as http:
        assert (await http.get("/healthz")).status_code == 200
        generated = await http.post("/api/v1/kms/keys/generate", json={"algorithm": "Kyber768"})
        assert generated.status_code == 201, generated.text
        sealed = await http.post("/api/v1/kem/encrypt",
                                 json={"plaintext": "aGk=", "key_version": 1})
        assert sealed.status_code == 200, sealed.text
        assert sealed.json()["data"]["ciphertext"]


async def test_worker_credentials_pass_the_health_check(secure_stack: SecureStack,
                                                        secure_nats: SecureNats) -> None:
    options = nats_security(secure_nats.settings("worker")).nats_py_options()
    assert await ping_workers(secure_nats.url, time_limit=5, connect_options=options)


# -- what is refused ----------------------------------------------------------------------------


async def test_a_caller_cannot_subscribe_to_operation_subjects(
    secure_stack: SecureStack, secure_nats: SecureNats, app_key: str
) -> None:
    errors = Errors()
    connection = await secure_nats.connect("app", error_cb=errors.record)
    spied: list[str] = []

    async def spy(message: nats.aio.msg.Msg) -> None:
        spied.append(message.subject)

    try:
        await connection.subscribe(Subject.KEM_ENCRYPT.value, cb=spy)
        await connection.subscribe("pqkms.v1.>", queue="pqkms-workers", cb=spy)
        await errors.wait_for(r"permissions violation for subscription to \"?pqkms\.v1\.kem")
        await errors.wait_for(r"permissions violation for subscription to \"?pqkms\.v1\.>")
        # The connection is still usable, the request reaches a worker, the spy sees nothing.
        reply = await connection.request(Subject.KEM_ENCRYPT.value, orjson.dumps(
            {"plaintext": "AA==", "key_version": 1}), headers={"X-API-Key": app_key},
            timeout=10)
        assert orjson.loads(reply.data)["data"]["ciphertext"]
        assert spied == []
    finally:
        await connection.close()


async def test_a_caller_cannot_publish_outside_the_operation_subjects(
    secure_stack: SecureStack, secure_nats: SecureNats
) -> None:
    errors = Errors()
    connection = await secure_nats.connect("app", error_cb=errors.record)
    try:
        # A job chunk without an API key check, a fake key event, the JetStream API.
        await connection.publish("pqkms.v1.jobs.chunks.t.j.0", b"{}")
        await errors.wait_for(r"permissions violation for publish to \"?pqkms\.v1\.jobs\.chunks")
        await connection.publish("pqkms.v1.events.keys.t", b"{}")
        await errors.wait_for(r"permissions violation for publish to \"?pqkms\.v1\.events")
        await connection.publish("$JS.API.INFO", b"")
        await errors.wait_for(r"permissions violation for publish to \"?\$JS\.API")
    finally:
        await connection.close()


async def test_worker_credentials_subscribe_only_in_the_queue_group(
    secure_stack: SecureStack, secure_nats: SecureNats
) -> None:
    errors = Errors()
    connection = await secure_nats.connect("worker", error_cb=errors.record)
    try:
        await connection.subscribe(Subject.KEM_DECRYPT.value)
        await errors.wait_for(r"permissions violation for subscription to \"?pqkms\.v1\.kem")
    finally:
        await connection.close()


async def test_an_unknown_nkey_is_refused(secure_nats: SecureNats) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await secure_nats.connect("stranger")


async def test_no_credentials_are_refused(secure_nats: SecureNats) -> None:
    settings = secure_nats.settings("app", nats_nkey_seed_file=None)
    options = nats_security(settings).nats_py_options()
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await nats.connect(secure_nats.url, allow_reconnect=False, connect_timeout=3, **options)


async def test_a_connection_without_a_client_certificate_is_refused(
    secure_nats: SecureNats,
) -> None:
    settings = secure_nats.settings("app", nats_tls_cert_file=None, nats_tls_key_file=None)
    options = nats_security(settings).nats_py_options()
    # Refused in the handshake (certificate required), or the server hangs up.
    with pytest.raises((ssl.SSLError, ConnectionError, nats.errors.UnexpectedEOF)):
        connection = await nats.connect(secure_nats.url, allow_reconnect=False,
                                        connect_timeout=3, **options)
        # Under TLS 1.3 the server's refusal can arrive after the handshake returned.
        await connection.flush(timeout=3)


async def test_a_connection_without_tls_is_refused(secure_nats: SecureNats) -> None:
    seed = secure_nats.users["app"].seed_file
    plain_url = f"nats://127.0.0.1:{secure_nats.server.port}"
    # nats-py upgrades to TLS when the server demands it, but with the system CAs only:
    # our CA is not among them, so not even the handshake completes.
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(plain_url, allow_reconnect=False, connect_timeout=3,
                           nkeys_seed=str(seed))


async def test_a_server_certificate_from_another_ca_is_refused(
    secure_nats: SecureNats,
) -> None:
    settings = secure_nats.settings("app", nats_tls_ca_file=secure_nats.rogue_ca.cert_file)
    options = nats_security(settings).nats_py_options()
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(secure_nats.url, allow_reconnect=False, connect_timeout=3,
                           **options)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"PQKMS_NATS_NKEY_SEED_FILE": "stranger"}, "authorization violation"),
        ({"PQKMS_NATS_TLS_CA_FILE": "rogue"}, "TLS: the server's certificate was not accepted"),
    ],
    ids=["unknown-nkey", "untrusted-server-certificate"],
)
async def test_a_refused_worker_exits_with_the_reason(
    secure_nats: SecureNats, tmp_path: Path, changes: dict[str, str], reason: str
) -> None:
    env = secure_nats.env("worker")
    for name, which in changes.items():
        env[name] = str(secure_nats.users["stranger"].seed_file if which == "stranger"
                        else secure_nats.rogue_ca.cert_file)
    stack = LocalStack(root=tmp_path, external_nats=[secure_nats.url], extra_env=env)
    await stack.init_store()
    process = stack.start_worker()
    try:
        # It does not retry a refusal forever: it stops on its own, with status 1.
        assert await asyncio.to_thread(process.wait, 60) == 1
    finally:
        stack.stop()
    log = stack.worker_logs[process.pid].read_text()
    refused = [orjson.loads(line) for line in log.splitlines()
               if '"nats_access_refused"' in line]
    assert refused and reason.lower() in refused[0]["reason"].lower()
    assert '"worker_failed"' in log
    seed = secure_nats.users["stranger"].seed_file.read_text().strip()
    assert seed not in log


async def test_a_refused_bridge_keeps_answering_503_and_logs_why(
    secure_nats: SecureNats, tmp_path: Path
) -> None:
    env = secure_nats.env("bridge")
    env["PQKMS_NATS_NKEY_SEED_FILE"] = str(secure_nats.users["stranger"].seed_file)
    stack = LocalStack(root=tmp_path, external_nats=[secure_nats.url], extra_env=env)
    stack.start_bridge()
    try:
        async with httpx.AsyncClient(base_url=stack.http_url) as http:
            deadline = time.monotonic() + 30
            log = ""
            while '"nats_unreachable"' not in log and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                log = (tmp_path / "bridge.log").read_text()
            # By design the bridge waits for NATS (it may be mid-reload): 503, not an exit.
            status = None
            while status is None and time.monotonic() < deadline:
                try:
                    status = (await http.get("/healthz")).status_code
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
            assert status == 503
            assert stack.bridge is not None and stack.bridge.poll() is None
    finally:
        stack.stop()
    unreachable = [orjson.loads(line) for line in log.splitlines()
                   if '"nats_unreachable"' in line]
    assert unreachable and "authorization violation" in unreachable[0]["refused"]


# -- operator mode: .creds files ----------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, claims: dict[str, object]) -> str:
    """A NATS JWT (v2) signed by ``issuer``: what `nsc` writes, made by hand."""
    body: dict[str, object] = {"iat": int(time.time()), "iss": issuer.public_key.decode(),
                               "name": name, "sub": subject, "nats": {**claims, "version": 2}}
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode()
    signed = (f"{_b64url(json.dumps({'typ': 'JWT', 'alg': 'ed25519-nkey'}).encode())}."
              f"{_b64url(json.dumps(body).encode())}")
    return f"{signed}.{_b64url(issuer.sign(signed.encode()))}"


def _key_pair(prefix: int) -> tuple[bytes, nkeys.KeyPair]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return seed, nkeys.from_seed(bytearray(seed))


@pytest.fixture(scope="module")
def operator_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server in operator mode (JWT accounts) and a user's .creds file: (URL, creds)."""
    root = tmp_path_factory.mktemp("nats-operator")
    _, operator = _key_pair(nkeys.PREFIX_BYTE_OPERATOR)
    unlimited = {name: -1 for name in ("subs", "data", "payload", "imports", "exports",
                                       "conn", "leaf")}
    jetstream = {name: -1 for name in ("mem_storage", "disk_storage", "streams", "consumer")}
    accounts = {}
    for name, limits in (("SYS", unlimited), ("PQKMS", {**unlimited, **jetstream})):
        _, account = _key_pair(nkeys.PREFIX_BYTE_ACCOUNT)
        accounts[name] = (account, _jwt(operator, account.public_key.decode(), name,
                                        {"type": "account", "limits": limits}))
    pqkms_account = accounts["PQKMS"][0]
    user_seed, user = _key_pair(nkeys.PREFIX_BYTE_USER)
    user_jwt = _jwt(pqkms_account, user.public_key.decode(), "worker",
                    {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1,
                     "payload": -1})
    creds = root / "worker.creds"
    creds.write_text(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------"
                     f"\n\n-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n"
                     "------END USER NKEY SEED------\n")
    creds.chmod(0o600)
    port = find_free_port()
    preload = ", ".join(f'{key.public_key.decode()}: "{token}"' for key, token in accounts.values())
    config = root / "operator.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'operator: "{_jwt(operator, operator.public_key.decode(), "op", {"type": "operator"})}"\n'
        f"system_account: {accounts['SYS'][0].public_key.decode()}\n"
        f"resolver: MEMORY\nresolver_preload: {{ {preload} }}\n"
        f'jetstream {{ store_dir: "{root / "jetstream"}" }}\n')
    with open(root / "nats.log", "ab") as log:
        process = subprocess.Popen([str(nats_server_binary()), "-c", str(config)],
                                   stdout=log, stderr=subprocess.STDOUT)
    server = EmbeddedNats(process, "127.0.0.1", port, root / "jetstream", config)
    try:
        _wait_for_port(port, process)
        yield server.url, creds
    finally:
        server.stop()


async def test_worker_and_client_connect_with_a_creds_file(
    operator_nats: tuple[str, Path], tmp_path: Path
) -> None:
    url, creds = operator_nats
    stack = LocalStack(root=tmp_path, external_nats=[url],
                       extra_env={"PQKMS_NATS_CREDS_FILE": str(creds)})
    await stack.init_store()
    process = stack.start_worker()
    settings = Settings(nats_url=url, nats_creds_file=creds)
    options = nats_security(settings).nats_py_options()
    try:
        deadline = time.monotonic() + 60
        while not await ping_workers(url, time_limit=1, connect_options=options):
            assert process.poll() is None, stack.worker_logs[process.pid].read_text()
            assert time.monotonic() < deadline, "the worker never answered"
            await asyncio.sleep(0.2)
        api_key = await stack.create_tenant()
        async with await PqkmsClient.from_settings(settings, api_key) as client:
            assert (await client.generate_key("Kyber768"))["key_version"] == 1
        # Without the creds file the same server refuses.
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=3)
    finally:
        stack.stop()


SERVER_PASSWORD = "s3cret-for-the-test-only"


@pytest.fixture
def password_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server with JetStream whose one user logs in with a password."""
    root = tmp_path_factory.mktemp("password-nats")
    port = find_free_port()
    config = root / "password.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        'authorization { users = [ '
        f'{{ user: "pqkms-worker", password: "{SERVER_PASSWORD}" }} ] }}\n'
        f'jetstream {{ store_dir: "{root / "jetstream"}" }}\n')
    with open(root / "nats.log", "ab") as log:
        process = subprocess.Popen([str(nats_server_binary()), "-c", str(config)],
                                   stdout=log, stderr=subprocess.STDOUT)
    server = EmbeddedNats(process, "127.0.0.1", port, root / "jetstream", config)
    try:
        _wait_for_port(port, process)
        yield server.url
    finally:
        server.stop()



async def test_worker_and_client_connect_with_a_user_and_password(
    password_nats: str, tmp_path: Path
) -> None:
    url = password_nats
    stack = LocalStack(root=tmp_path, external_nats=[url],
                       extra_env={"PQKMS_NATS_USER": "pqkms-worker",
                                  "PQKMS_NATS_PASSWORD": SERVER_PASSWORD})
    await stack.init_store()
    process = stack.start_worker()
    settings = Settings(nats_url=url, nats_user="pqkms-worker",
                        nats_password=SecretStr(SERVER_PASSWORD))
    options = nats_security(settings).nats_py_options()
    try:
        deadline = time.monotonic() + 60
        while not await ping_workers(url, time_limit=1, connect_options=options):
            assert process.poll() is None, stack.worker_logs[process.pid].read_text()
            assert time.monotonic() < deadline, "the worker never answered"
            await asyncio.sleep(0.2)
        api_key = await stack.create_tenant()
        async with await PqkmsClient.from_settings(settings, api_key) as client:
            assert (await client.generate_key("Kyber768"))["key_version"] == 1
        # A wrong password is refused, and the password never reaches the worker's log.
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            await nats.connect(url, user="pqkms-worker", password="wrong",
                               allow_reconnect=False, connect_timeout=3)
    finally:
        stack.stop()
    assert SERVER_PASSWORD.encode() not in stack.worker_logs[process.pid].read_bytes()


async def test_a_password_in_the_url_never_reaches_the_worker_log(
    password_nats: str, tmp_path: Path
) -> None:
    # ``nats://user:password@host:port`` is one way to log in; the worker's ready line
    # names the server without it.
    url_with_password = password_nats.replace("nats://", f"nats://pqkms-worker:{SERVER_PASSWORD}@")
    stack = LocalStack(root=tmp_path, external_nats=[url_with_password])
    await stack.init_store()
    process = stack.start_worker()
    log = stack.worker_logs[process.pid]
    try:
        deadline = time.monotonic() + 60
        while b"worker_ready" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the worker never became ready"
            await asyncio.sleep(0.2)
    finally:
        stack.stop()
    text = log.read_text()
    assert password_nats in text  # the server, named without the credentials
    assert SERVER_PASSWORD not in text


def test_redacted_urls_drop_credentials() -> None:
    assert redacted_urls("nats://u:p@a:4222, tls://b:4443,c") == (
        "nats://a:4222, tls://b:4443, nats://c")
    assert redacted_url("nats://token@[::1]:4222") == "nats://[::1]:4222"

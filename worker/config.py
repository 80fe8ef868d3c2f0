"""Settings from ``PQKMS_*`` environment variables (pydantic-settings).

No settings object is built at import; call :func:`get_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.algorithms import Plan

__all__ = ["PlanLimits", "Settings", "get_settings"]

ONE_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """Per-plan caps; ``None`` means unlimited."""

    max_versions: int | None
    rate_per_second: float | None
    burst: int | None


class Settings(BaseSettings):
    """Everything a worker, the bridge or the CLI needs to know."""

    model_config = SettingsConfigDict(env_prefix="PQKMS_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".pqkms"), description="SQLite file, master key, NATS store"
    )
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_inbox_prefix: str = Field(
        default="_INBOX", pattern=r"^[A-Za-z0-9_-]+$",
        description="first token of this process's reply subjects; `pqkms up` gives the "
        "workers and the bridge their own, which callers may not subscribe to",
    )
    # NATS security (worker/nats_security.py, docs/deploy.md "NATS security").
    nats_creds_file: Path | None = Field(
        default=None, description=".creds file: NATS user JWT + nkey seed (operator mode)"
    )
    nats_nkey_seed_file: Path | None = Field(default=None, description="NATS nkey seed file")
    nats_tls_ca_file: Path | None = Field(
        default=None, description="CA certificates that signed the NATS server's certificate"
    )
    nats_tls_cert_file: Path | None = Field(default=None, description="client cert, mutual TLS")
    nats_tls_key_file: Path | None = Field(default=None, description="the client cert's key")
    nats_tls_server_name: str | None = Field(
        default=None, description="name expected in the server certificate (default: URL host)"
    )
    nats_tls_handshake_first: bool = Field(
        default=False, description="TLS before any NATS protocol byte (server: handshake_first)"
    )
    jetstream_replicas: int = Field(
        default=1, ge=1, le=5,
        description="replicas of the rate-limit KV bucket: 3 on a 3-node NATS cluster, so "
        "losing one node keeps limits shared (jobs: PQKMS_JOB_STREAM_REPLICAS)",
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    # What one HTTP connection may hold (api_bridge/connection_limits.py).
    http_max_head_bytes: int = Field(
        default=64 * 1024, ge=1024, description="the request line and headers of one "
        "request; a larger head is answered 431 and its connection closed, unparsed",
    )
    http_head_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a request's line and headers must arrive within "
        "this long of their first byte (of the connection's opening, for its first "
        "request); else the connection is closed",
    )
    http_body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="a request's body must arrive within this long of "
        "its headers; else 408 and the connection is closed",
    )
    http_max_connections: int = Field(
        default=10_000, ge=1, description="connections the bridge serves at once; a "
        "request on any connection beyond them is answered 503, then that connection is "
        "closed. Keep it under the process's open-file limit (ulimit -n)",
    )
    # HTTPS for the bridge (api_bridge/tls.py, docs/http-api.md "HTTPS").
    http_tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain) the bridge serves HTTPS with, "
        "TLS 1.3 only; with PQKMS_HTTP_TLS_KEY_FILE"
    )
    http_tls_key_file: Path | None = Field(
        default=None, description="the bridge certificate's private key (PEM, unencrypted)"
    )
    http_allow_plain: bool = Field(
        default=False, description="serve plain HTTP on an address other than loopback: "
        "only behind a proxy that terminates TLS"
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default: SQLite in data_dir"
    )
    database_pool_size: int = Field(
        default=10, ge=1, le=500,
        description="connections a worker keeps per pool; on PostgreSQL a worker holds up "
        "to twice this (the store and the per-request status read)",
    )
    master_key_file: Path | None = Field(default=None, description="default: data_dir/master.key")
    master_key: SecretStr | None = Field(
        default=None, description="base64 of a 32-byte master key (instead of a file)"
    )
    max_message_bytes: int = Field(default=ONE_MIB, ge=1, description="plaintext/message limit")
    request_timeout_seconds: float = 10.0
    bridge_replies_in_flight_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1, description="the bridge's requests wait while their "
        "replies' likely bytes in flight would pass this; keep it under nats-server's "
        "max_pending (64 MB by default), which cuts off a connection that falls behind",
    )
    crypto_threads: int = Field(default=2, ge=1)
    direct_data_plane: bool = Field(
        default=True, description="serve crypto subjects on the connection, not per-message"
        " FastStream subscribers (docs/performance.md)",
    )
    direct_max_in_flight: int = Field(default=256, ge=1)
    log_level: str = "INFO"
    log_json: bool | None = Field(default=None, description="default: JSON unless on a terminal")
    metrics_host: str = Field(default="127.0.0.1", description="where a worker serves /metrics")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="a worker's /metrics port (none: no metrics); pqkms up: worker i gets +i-1",
    )
    otel: bool = Field(default=False, description="one OpenTelemetry span per request (SDK)")
    heartbeat_file: Path | None = Field(
        default=None,
        description="a file whose time the worker's event loop renews every second (pqkms up "
        "sets it and restarts a worker whose file goes stale: worker.heartbeat)",
    )
    rotation_check_seconds: float = Field(
        default=60.0, gt=0, description="how often each worker looks for keys due for rotation"
    )
    rotation_min_period_seconds: int = Field(
        default=60, ge=1, description="the shortest rotation period a tenant may set"
    )
    key_events_retention_hours: float = Field(
        default=168.0, ge=0, description="PQKMS_KEY_EVENTS stream max age; 0: no stream"
    )
    audit: bool = Field(
        default=True, description="audit every operation (docs/audit.md); false only for "
        "setups that audit elsewhere, e.g. benchmarks of the crypto alone",
    )
    audit_fsync: bool = Field(
        default=False, description="SQLite: fsync every audit group commit (synchronous=FULL) "
        "before its requests are answered; by default a commit is in the WAL, which survives "
        "a crash of the worker but not a power cut (docs/audit.md#durability)",
    )
    audit_linger_ms: float = Field(
        default=10.0, ge=0, le=1000, description="while signatures are running in the crypto "
        "pool, the audit group commit waits up to this long for their records, so one commit "
        "serves several (0: never wait; docs/audit.md)",
    )
    audit_stream_replicas: int | None = Field(
        default=None, ge=1, le=5, description="PQKMS_AUDIT replicas (default: jetstream_replicas)"
    )
    audit_stream_max_age_days: float = Field(
        default=0.0, ge=0, description="PQKMS_AUDIT max age in days; 0: kept until removed"
    )
    audit_unauthenticated_per_second: float = Field(
        default=20.0, ge=0, description="requests without a valid API key each worker audits "
        "one by one, per second (bursts of 5 times as many); the rest are only counted "
        "(worker/audit/unauthenticated.py)",
    )

    free_max_versions: int | None = 3
    free_rate_per_second: float | None = 10.0
    free_burst: int | None = 20
    pro_max_versions: int | None = 10
    pro_rate_per_second: float | None = 500.0
    pro_burst: int | None = 1000
    enterprise_max_versions: int | None = None
    enterprise_rate_per_second: float | None = None
    enterprise_burst: int | None = None

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'pqkms.db').resolve()}"

    def resolved_master_key_file(self) -> Path:
        """Where the master key lives when it is not given inline."""
        return self.master_key_file or self.data_dir / "master.key"

    def nats_max_payload(self) -> int:
        """A NATS max_payload that fits the largest request: base64 growth plus JSON."""
        return self.max_message_bytes * 4 // 3 + 64 * 1024

    def limits_for(self, plan: Plan) -> PlanLimits:
        """The caps for one plan."""
        prefix = Plan(plan).value
        return PlanLimits(
            max_versions=getattr(self, f"{prefix}_max_versions"),
            rate_per_second=getattr(self, f"{prefix}_rate_per_second"),
            burst=getattr(self, f"{prefix}_burst"),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once from the environment."""
    return Settings()

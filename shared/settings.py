"""Configuration from the environment (CONTRACT.md lists the public variables).

Every variable is `FUNNELCAST_<FIELD>`; defaults suit the embedded runtime on one machine.
"""

import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.topology import PROCESSES, SERVICES, port_variable

DEV_AUTH_SECRET = "funnelcast-dev-secret-not-for-production-use"  # noqa: S105 - documented dev default, warned about
EMBEDDED_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
EMBEDDED_POSTGRES_PORT = 15432


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNELCAST_", extra="ignore")

    # --- the public contract ---
    kafka_bootstrap: str | None = Field(None, description="broker bootstrap servers; unset: embedded broker")
    database_url: str | None = Field(None, description="Postgres server URL; unset: embedded Postgres")
    auth_secret: SecretStr | None = Field(None, description="secret that signs bearer tokens")
    org_file: Path | None = Field(None, description="the organisation file; unset: the sample")
    home: Path = Field(Path(".funnelcast"), description="state directory of the embedded runtime")
    webhook_allowed_networks: str = Field("", description="CIDRs webhook targets may resolve to although private")
    cors_origins: str = Field("", description="comma-separated browser origins allowed to call the APIs; none if unset")

    # --- Kafka client tuning (short defaults suit Tansu; see DESIGN.md section 5) ---
    kafka_fetch_max_wait_ms: int = 10
    kafka_session_timeout_ms: int = 6000
    kafka_rebalance_timeout_ms: int = 3000
    kafka_heartbeat_interval_ms: int = 1000
    kafka_request_timeout_ms: int = 10000
    # Apache Kafka supports the idempotent producer; Tansu (embedded) does not.
    kafka_idempotence: bool = True
    kafka_replication_factor: int = 1
    # Consumers apply the records that queued up while the previous batch was applied in one
    # transaction: at most this many (1 = one event a transaction).
    consumer_batch_max: int = 500
    # A consumer that has waited this long for its partitions (a join that never completed, seen on
    # Tansu after a restart) is replaced by a new one; joins take 3-15 s there.
    stream_assignment_deadline_s: float = 30.0

    # --- outbox relay ---
    relay_batch_size: int = 1000
    relay_idle_poll_s: float = 1.0
    relay_max_backoff_s: float = 5.0
    outbox_retention_days: int = 90

    # --- scoring service (services/scoring/schedule.py) ---
    # Training in the background: a check every interval, a fit of a kind once this many new outcomes came.
    scoring_train_interval_s: float = 3600.0
    scoring_train_min_new_outcomes: int = 100
    # Open opportunities, then open leads, are re-scored this often (age in stage, activity recency and
    # a lead's recency of contact move without an event), this many a round (read, scored, the changed
    # ones written in one transaction); a score is published only when it changed.
    scoring_rescore_interval_s: float = 3600.0
    scoring_rescore_batch: int = 500

    # --- leads service (services/leads/overdue.py) ---
    # Every instance counts the leads overdue for follow-up this often (the gauge
    # funnelcast_leads_follow_ups_overdue): one indexed query a round.
    leads_overdue_refresh_s: float = Field(30.0, gt=0)

    # --- HTTP ---
    host: str = "127.0.0.1"
    max_body_bytes: int = 1_048_576
    token_ttl_s: int = 12 * 3600
    log_level: str = "INFO"
    shutdown_grace_s: float = 10.0

    # --- embedded runtime ---
    embedded_postgres_port: int = EMBEDDED_POSTGRES_PORT
    embedded_kafka_port: int = 9092
    tansu_bin: Path | None = None
    db_pool_size: int = 10

    @property
    def kafka_bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.embedded_kafka_port}"

    @property
    def server_url(self) -> str:
        return self.database_url or f"postgresql://postgres@127.0.0.1:{self.embedded_postgres_port}/postgres"

    def database_url_for(self, service: str) -> str:
        """Each service has its own database on the configured server."""
        return with_database(self.server_url, SERVICES[service].database)

    def port_for(self, process: str) -> int:
        """A service's or a worker's port (shared/topology.py PROCESSES), unless its variable says otherwise."""
        return int(os.environ.get(port_variable(process), PROCESSES[process].port))

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def signing_secret(self) -> str:
        return self.auth_secret.get_secret_value() if self.auth_secret else DEV_AUTH_SECRET


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@lru_cache
def get_settings() -> Settings:
    return Settings()

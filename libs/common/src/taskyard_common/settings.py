"""One settings class per concern, each with its own environment prefix."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NatsSettings(BaseSettings):
    """Where NATS is and how the JetStream topology is shaped (TASKYARD_NATS_*)."""

    model_config = SettingsConfigDict(env_prefix="TASKYARD_NATS_")

    url: str = "nats://127.0.0.1:4222"
    prefix: str = Field("taskyard", pattern=r"^[a-z][a-z0-9_-]{0,30}$")
    replicas: int = Field(1, ge=1, le=5)
    # Liveness timeout of a job message: a silent worker loses its job after this long.
    ack_wait_s: float = Field(30.0, gt=0)
    # Hard cap on deliveries at the consumer; per-job max_attempts is enforced by the executor.
    max_deliver: int = Field(100, ge=2)
    # Queues JOBS can hold (three consumers each). nats-server 2.15 caps a stream at 1,000
    # consumers unless the stream sets its own limit: without this, the 334th queue failed.
    max_queues: int = Field(1000, ge=1, le=100_000)
    events_max_age_s: float = 7 * 86400
    logs_max_age_s: float = 7 * 86400
    logs_max_bytes: int = 1 << 30
    heartbeat_interval_s: float = Field(5.0, gt=0)


class DbSettings(BaseSettings):
    """The API's database (TASKYARD_DB_*). SQLite by default, PostgreSQL in production."""

    model_config = SettingsConfigDict(env_prefix="TASKYARD_DB_")

    url: str = "sqlite+aiosqlite:///./data/taskyard.db"
    echo: bool = False

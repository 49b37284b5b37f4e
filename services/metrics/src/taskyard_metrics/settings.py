"""Settings of the metrics service (TASKYARD_METRICS_*); NATS comes from taskyard_common's NatsSettings."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MetricsSettings(BaseSettings):
    """Where the metrics service listens and how often it reads JetStream."""

    model_config = SettingsConfigDict(env_prefix="TASKYARD_METRICS_")

    host: str = "127.0.0.1"
    port: int = Field(8742, ge=1, le=65535)
    # Queue/worker gauges are read from JetStream on this period and cached, never per scrape.
    poll_interval_s: float = Field(2.0, gt=0)
    # EVENTS are fetched in batches: large enough for bursts, small enough to ack promptly.
    fetch_batch: int = Field(256, ge=1, le=10_000)
    fetch_timeout_s: float = Field(1.0, gt=0)
    log_level: str = "info"

"""Settings of the metrics service (TASKYARD_METRICS_*); NATS comes from taskyard_common's NatsSettings."""

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .costs import parse_budgets, parse_labels


def parse_wait_targets(text: str) -> dict[str, float]:
    """`"batch=3600, reports=600"` -> {"batch": 3600.0, "reports": 600.0}; ValueError naming the bad entry."""
    targets: dict[str, float] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        queue, sep, seconds = entry.partition("=")
        try:
            value = float(seconds) if sep and queue.strip() else -1.0
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ValueError(f"{entry!r} is not QUEUE=SECONDS with SECONDS > 0")
        targets[queue.strip()] = value
    return targets


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
    # Queue-wait SLO (docs/operations.md, "SLOs"): a started attempt meets it when it waited at most
    # its queue's target. One default, overridden per queue as "batch=3600,reports=600".
    wait_target_s: float = Field(60.0, gt=0)
    wait_targets: str = ""
    # Costs (docs/costs.md): spend is counted per value of these job labels, and budgets per label
    # value ("team=ml:50usd/1d, team=ops:7200cpu_s/1d") are exported for the budget alert.
    cost_labels: str = "team"
    cost_budgets: str = ""

    @field_validator("wait_targets")
    @classmethod
    def _check_wait_targets(cls, value: str) -> str:
        parse_wait_targets(value)
        return value

    @field_validator("cost_labels")
    @classmethod
    def _check_cost_labels(cls, value: str) -> str:
        parse_labels(value)
        return value

    @field_validator("cost_budgets")
    @classmethod
    def _check_cost_budgets(cls, value: str) -> str:
        parse_budgets(value)
        return value

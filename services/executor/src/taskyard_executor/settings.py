"""Executor settings (TASKYARD_EXECUTOR_*)."""

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKYARD_EXECUTOR_")

    queues: Annotated[list[str], NoDecode] = ["default"]
    slots: int = Field(8, ge=1, le=4096)
    # Import paths of modules with user handlers (like Celery's -A), comma-separated in the env.
    handlers: Annotated[list[str], NoDecode] = []
    host: str = "127.0.0.1"
    port: int = 8743
    drain_grace_s: float = Field(30.0, ge=0)
    idle_poll_s: float = Field(0.2, gt=0)
    # An idle worker's long pulls expire and are renewed this often; a drain waits for them.
    armed_pull_s: float = Field(1.0, gt=0)
    # A job starting or ending publishes the heartbeat after this window, so a burst of starts is
    # one KV put and slot use shown by the API trails the truth by about this much (docs/api.md).
    heartbeat_coalesce_s: float = Field(0.05, ge=0, le=1)
    # A job's `started` waits this long: a job that ends sooner reports one event, its outcome
    # carrying the start. 50 ms: 20 ms jobs on a busy 2-core machine ran 25-31 ms at p50 and under
    # 45 ms at p95, so 30 ms caught only about half of them (docs/performance.md, change 24).
    # 0 publishes every `started` at once.
    started_coalesce_s: float = Field(0.05, ge=0, le=1)
    # Lifecycle events reported within this window share one EVENTS message (logsink.Emitter);
    # 0 batches what is reported in the same turn of the event loop.
    event_batch_s: float = Field(0.001, ge=0, le=0.1)
    max_result_bytes: int = 256 * 1024
    worker_id: str | None = None

    @field_validator("queues", "handlers", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

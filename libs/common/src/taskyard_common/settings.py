"""One settings class per concern, each with its own environment prefix."""

import ipaddress
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NatsSettings(BaseSettings):
    """Where NATS is and how the JetStream topology is shaped (TASKYARD_NATS_*)."""

    model_config = SettingsConfigDict(env_prefix="TASKYARD_NATS_")

    # One server, or every node of a cluster comma-separated (nats_util.server_urls).
    url: str = "nats://127.0.0.1:4222"
    prefix: str = Field("taskyard", pattern=r"^[a-z][a-z0-9_-]{0,30}$")
    # Copies JetStream keeps of every stream, consumer and the workers bucket: 1 on one server,
    # 3 on a JetStream cluster (one node may fail, docs/scaling.md).
    replicas: int = Field(1, ge=1, le=5)
    # Liveness timeout of a job message: a silent worker loses its job after this long.
    ack_wait_s: float = Field(30.0, gt=0)
    # Hard cap on deliveries at the consumer; per-job max_attempts is enforced by the executor.
    max_deliver: int = Field(100, ge=2)
    # Queues JOBS can hold (three consumers each). nats-server 2.15 caps a stream at 1,000
    # consumers unless the stream sets its own limit: without this, the 334th queue failed.
    max_queues: int = Field(1000, ge=1, le=100_000)
    # How long JOBS remembers a published job's message id, so the outbox's republish of a job
    # whose publish was acked but not recorded (an api crash between the two) stores nothing new.
    # nats-server keeps every id in memory for this long (~150 B each: at 3,000 jobs/s, 54 MB for
    # 2 minutes, 270 MB for 10). An api that comes back later than this republishes such a job: it
    # runs twice and its timeline shows the second run as `duplicate_run` (docs/operations.md).
    duplicate_window_s: float = Field(120.0, ge=1, le=86400)
    events_max_age_s: float = 7 * 86400
    logs_max_age_s: float = 7 * 86400
    logs_max_bytes: int = 1 << 30
    heartbeat_interval_s: float = Field(5.0, gt=0)


class DbSettings(BaseSettings):
    """The API's database (TASKYARD_DB_*). SQLite by default, PostgreSQL in production."""

    model_config = SettingsConfigDict(env_prefix="TASKYARD_DB_")

    url: str = "sqlite+aiosqlite:///./data/taskyard.db"
    echo: bool = False
    # SQLite's `PRAGMA synchronous` (WAL mode). FULL fsyncs the WAL at every commit, so what the
    # API answered for survives a power loss. NORMAL fsyncs only at checkpoints: a process crash
    # loses nothing, a machine crash loses the commits since the last checkpoint (accepted jobs,
    # keys, decisions); measured and chosen in docs/operations.md, "Durability".
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"
    # SQLite's own checkpoint of the WAL every this many pages (its default; 0: only explicit ones).
    sqlite_wal_autocheckpoint: int = Field(1000, ge=0)


class ArtifactSettings(BaseSettings):
    """Job input and output files in JetStream's Object Store (TASKYARD_ARTIFACTS_*).

    The api and the executors read the same variables: the api refuses what is over a limit
    before anything is stored, the executor refuses outputs over the per-job limit.
    """

    model_config = SettingsConfigDict(env_prefix="TASKYARD_ARTIFACTS_")

    # One file (an upload or an output). Over it: a 413 naming the limit, nothing stored.
    max_file_bytes: int = Field(5 << 30, gt=0)
    # All inputs of one job, and (separately) all its outputs.
    max_job_bytes: int = Field(10 << 30, gt=0)
    max_files_per_job: int = Field(1000, ge=1, le=10_000)
    # The whole bucket (the stream's max_bytes; JetStream reserves it on the server).
    bucket_max_bytes: int = Field(20 << 30, gt=0)
    # Objects expire this long after they were written; at least the api's finished-job retention
    # by default (30 days), so a job's outputs live as long as its row.
    max_age_s: float = Field(30 * 86400.0, gt=0)
    # Chunk size in the store (nats-py's Object Store uses 128 KiB; fewer messages are faster).
    chunk_bytes: int = Field(256 * 1024, ge=1024, le=1024 * 1024)
    # Where executors create job working directories (default: the system temp dir).
    work_root: str | None = None


def proxy_list(value: str) -> list[str]:
    """`"10.0.0.5, 10.244.0.0/16"` as a list (the trusted proxies of a service's
    `forwarded_allow_ips`); ValueError naming an entry that is no IP address or network."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"forwarded_allow_ips: {entry!r} is not an IP address or network (CIDR)"
            ) from None
    return entries

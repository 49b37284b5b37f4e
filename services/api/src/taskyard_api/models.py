"""Database tables. The API is their only writer."""

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency"),
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_queue_id", "queue", "id"),
        Index("ix_jobs_batch_status", "batch_id", "status"),
        Index("ix_jobs_workflow", "workflow_id"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    type: Mapped[str] = mapped_column(String(128), index=True)
    queue: Mapped[str] = mapped_column(String(63))
    priority: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[Any] = mapped_column(JsonType, nullable=True)
    labels: Mapped[dict] = mapped_column(JsonType, default=dict)
    timeout_s: Mapped[float] = mapped_column(Float)
    max_attempts: Mapped[int] = mapped_column(Integer)
    backoff: Mapped[dict] = mapped_column(JsonType)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # Continuations after checkpoint decisions within this generation.
    resume: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # W3C traceparent of the job's trace (None when tracing is off); executors continue it.
    traceparent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    stream_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Outbox: since when the job's current message waits to be published (None: JOBS has it).
    outbox_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    progress: Mapped[dict | None] = mapped_column(JsonType, nullable=True)
    result: Mapped[Any] = mapped_column(JsonType, nullable=True)
    error: Mapped[dict | None] = mapped_column(JsonType, nullable=True)
    # Highest EVENTS sequence applied to this row: replays and stale events change nothing.
    last_event_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(26), nullable=True)
    workflow_id: Mapped[str | None] = mapped_column(String(26), nullable=True)
    node: Mapped[str | None] = mapped_column(String(128), nullable=True)
    inputs: Mapped[dict | None] = mapped_column(JsonType, nullable=True)

    # Input files and output globs of a job that has them (docs/artifacts.md); NULL for most jobs.
    artifacts: Mapped[dict | None] = mapped_column(JsonType, nullable=True)


class JobEdge(Base):
    """`child` waits for `parent` to end as `on` asks. `state` is open until the gate keeper
    settles the edge, exactly once: accepted (the child may run) or refused (it is skipped)."""

    __tablename__ = "job_edges"
    __table_args__ = (
        Index("ix_job_edges_child_state", "child_id", "state"),
        Index("ix_job_edges_state", "state"),
    )

    parent_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    child_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    on: Mapped[str] = mapped_column(String(16))  # succeeded | finished
    state: Mapped[str] = mapped_column(String(16))  # open | accepted | refused


class Batch(Base):
    """Jobs submitted together; their callbacks run once, when the last of them has ended."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    total: Mapped[int] = mapped_column(Integer)
    # Callback job specs by outcome (on_success / on_failure / on_complete), run once.
    callbacks: Mapped[dict] = mapped_column(JsonType, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Workflow(Base):
    """A DAG of jobs (its nodes); its status is derived from theirs."""

    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    on_failure: Mapped[str] = mapped_column(String(16))  # stop | continue
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobEventRow(Base):
    """The job's timeline: one row per lifecycle event."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(26), index=True)
    # EVENTS stream sequence; unique so projecting the same message twice inserts nothing.
    stream_seq: Mapped[int | None] = mapped_column(BigInteger, unique=True, nullable=True)
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[float] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    data: Mapped[dict] = mapped_column(JsonType, default=dict)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)


class Checkpoint(Base):
    """A job paused for a person: an approval or a question, and what was decided."""

    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_status_expires", "status", "expires_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(26), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # approval | question
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[Any] = mapped_column(JsonType, nullable=True)
    choices: Mapped[list | None] = mapped_column(JsonType, nullable=True)
    approvers: Mapped[list] = mapped_column(JsonType)
    on_reject: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))  # pending | approved | rejected | answered | expired
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    decided_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    answer: Mapped[Any] = mapped_column(JsonType, nullable=True)

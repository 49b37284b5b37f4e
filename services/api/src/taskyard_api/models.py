"""Database tables. The API is their only writer."""

from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
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


def _partial(name: str, present: str, *columns: str) -> Index:
    """An index of the rows whose `present` column is not NULL (queries name it with =, < or
    IS NOT NULL, which lets both planners use it)."""
    where = text(f"{present} IS NOT NULL")
    return Index(name, *columns, sqlite_where=where, postgresql_where=where)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency"),
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_queue_id", "queue", "id"),
        # Most jobs leave these columns NULL (all of them until they start or end): their indexes
        # hold only the rows that have a value, so a plain job's insert and moves do not write
        # them (migrations 0012, 0016).
        _partial("ix_jobs_finished_at_id", "finished_at", "finished_at", "id"),
        _partial("ix_jobs_started_at_id", "started_at", "started_at", "id"),
        _partial("ix_jobs_status_finished_id", "finished_at", "status", "finished_at", "id"),
        _partial("ix_jobs_outbox_at", "outbox_at", "outbox_at"),
        _partial("ix_jobs_batch_status", "batch_id", "batch_id", "status"),
        _partial("ix_jobs_workflow", "workflow_id", "workflow_id"),
        # The gate timer's next due job: one index range, not a scan per tick.
        _partial("ix_jobs_status_run_at", "run_at", "status", "run_at"),
        # A key's waiting jobs in admission order, a priority at a time (admission._first_waiting).
        _partial(
            "ix_jobs_concurrency_key_waiting",
            "concurrency_key",
            "concurrency_key",
            "status",
            "priority",
            "created_at",
            "id",
        ),
        _partial(
            "ix_jobs_rate_key_waiting", "rate_key", "rate_key", "status", "priority", "created_at", "id"
        ),
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
    outbox_at: Mapped[float | None] = mapped_column(Float, nullable=True)
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
    # A workflow's map node ({"over", "parallel"}, plus "total" once it fanned out) or one of its
    # item jobs ({"of": <map node's job id>, "index": i}); NULL for every other job.
    map: Mapped[dict | None] = mapped_column(JsonType, nullable=True)

    # Gates beside parents (lifecycle.gate_status); NULL where a job has no such gate.
    run_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    approval: Mapped[dict | None] = mapped_column(JsonType, nullable=True)
    concurrency_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    concurrency: Mapped[dict | None] = mapped_column(JsonType, nullable=True)
    rate_key: Mapped[str | None] = mapped_column(String(256), nullable=True)
    rate: Mapped[dict | None] = mapped_column(JsonType, nullable=True)


class GateKey(Base):
    """A concurrency or rate key: its row is locked while the gate keeper admits its jobs, so two
    api processes never admit past the limit; a rate key's token bucket lives here (it survives
    restarts)."""

    __tablename__ = "gate_keys"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # concurrency | rate
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    # The latest submitted job's settings for this key ({"limit", "strategy"} or {"per_s", "burst"}).
    settings: Mapped[dict] = mapped_column(JsonType, default=dict)
    tokens: Mapped[float] = mapped_column(Float, default=0.0)
    refilled_at: Mapped[float] = mapped_column(Float, default=0.0)


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


class JobMessage(Base):
    """One message of a job's thread (messages.py): from the job (`ctx.say`, its questions), from a
    person (an answer, a plain message) or from Taskyard (a question that expired). `id` orders the
    thread; `key` makes each message stored once whoever writes it twice (a replayed event)."""

    __tablename__ = "job_messages"
    __table_args__ = (Index("ix_job_messages_job_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(String(120), unique=True)
    job_id: Mapped[str] = mapped_column(String(26))
    author_kind: Mapped[str] = mapped_column(String(16))  # job | person | taskyard
    author: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    # The question (checkpoint) this message asks or answers.
    checkpoint_id: Mapped[str | None] = mapped_column(String(40), nullable=True)


class AuditEvent(Base):
    """One admin action (or a refused attempt at one): who, when, what, from where."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_actor_at", "actor_name", "at"),
        Index("ix_audit_events_action_at", "action", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    actor_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    actor_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    actor_role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict] = mapped_column(JsonType, default=dict)


class JobNotify(Base):
    """A job's webhook: where to POST, and on which outcomes. Stored before the job itself, so no
    outcome can be projected before the projector knows whom to tell."""

    __tablename__ = "job_notify"

    job_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    on: Mapped[list] = mapped_column(JsonType)
    created_at: Mapped[float] = mapped_column(Float)


class Notification(Base):
    """One webhook to deliver (or delivered): enqueued by the projector in the transaction that
    records the outcome, claimed by one api process at a time with a conditional UPDATE."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_status_next", "status", "next_at"),)

    # job id : generation : resume : outcome — the same outcome projected twice is one row.
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(26), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[dict] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(16))  # pending | delivering | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[float] = mapped_column(Float)
    claimed_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Every try and its answer: [{at, status_code, error, ms}], newest last (bounded).
    deliveries: Mapped[list] = mapped_column(JsonType, default=list)
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobRollup(Base):
    """Per-minute counts per queue: outcomes (kind = succeeded/failed/dead/cancelled/retrying, the
    error class for failures) and queue waits (kind = started, wait_bucket = rollups.WAIT_BUCKETS
    index). Kept by the projector, read by the charts and the queue counts (rollups.py)."""

    __tablename__ = "job_rollups"

    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch seconds // 60
    queue: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    error_class: Mapped[str] = mapped_column(String(100), primary_key=True, server_default="")
    wait_bucket: Mapped[int] = mapped_column(Integer, primary_key=True, server_default="-1")
    n: Mapped[int] = mapped_column(BigInteger)


class Schedule(Base):
    """Creates jobs from `template` at its fire times (cron in `timezone`, or every `every_s`).
    `next_fire_at` is the first fire time not yet handled (NULL while paused): the timer reads the
    smallest one through its index instead of scanning schedules."""

    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_next_fire_at", "next_fire_at"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    every_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    timezone: Mapped[str] = mapped_column(String(64))
    template: Mapped[dict] = mapped_column(JsonType)
    overlap: Mapped[str] = mapped_column(String(16))  # allow | skip | cancel_previous | queue_one
    catch_up: Mapped[str] = mapped_column(String(8))  # none | latest | all
    catch_up_max: Mapped[int] = mapped_column(Integer)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # Intervals count from here (the creation time, or the last change of the timing).
    anchor_at: Mapped[float] = mapped_column(Float)
    next_fire_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Bumped by every change of the timing: a timer that read an older version does not move it.
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ScheduleFire(Base):
    """One fire time of a schedule, handled once: its primary key (schedule_id, fire_at) is the
    uniqueness that decides which api process fires it; the row is inserted in the transaction
    that inserts the job. `outcome`: created | skipped | failed; `kind`: timer | catch_up | manual."""

    __tablename__ = "schedule_fires"
    # Retention deletes a fire with its job, and a fire that created none once it is old.
    __table_args__ = (Index("ix_schedule_fires_job_id", "job_id"), Index("ix_schedule_fires_at", "at"))

    schedule_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    fire_at: Mapped[float] = mapped_column(Float, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(String(26), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[float] = mapped_column(Float)


# The Core tables the API writes with statements of its own (mypy sees `Model.__table__` as a
# FromClause, which `update()` and `insert()` do not take).
class EventEpoch(Base):
    """EVENTS' sequences went back after `after_seq` (a crash lost messages the database had
    projected): the projector adds `shift` to the sequences above it (event_epochs.py)."""

    __tablename__ = "event_epochs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    after_seq: Mapped[int] = mapped_column(BigInteger)
    shift: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[float] = mapped_column(Float)


class AttemptCost(Base):
    """What one attempt used, from its outcome event (costs.py). Keyed like its timeline row (the
    event's place in EVENTS), so projecting it twice stores it once. The job's queue, type, batch,
    workflow and labels are copied in: totals need no join and outlive the job's retention."""

    __tablename__ = "attempt_costs"
    __table_args__ = (
        Index("ix_attempt_costs_at", "at"),
        Index("ix_attempt_costs_type_at", "type", "at"),
        _partial("ix_attempt_costs_batch", "batch_id", "batch_id"),
        _partial("ix_attempt_costs_workflow", "workflow_id", "workflow_id"),
    )

    key: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    job_id: Mapped[str] = mapped_column(String(26), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    at: Mapped[float] = mapped_column(Float)
    queue: Mapped[str] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(128))
    batch_id: Mapped[str | None] = mapped_column(String(26), nullable=True)
    workflow_id: Mapped[str | None] = mapped_column(String(26), nullable=True)
    labels: Mapped[dict] = mapped_column(JsonType, default=dict)
    cpu_s: Mapped[float] = mapped_column(Float)
    wall_s: Mapped[float] = mapped_column(Float)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    measured: Mapped[str] = mapped_column(String(8))


class AttemptSpend(Base):
    """What an attempt's handler reported spending (ctx.cost), summed per unit and kind."""

    __tablename__ = "attempt_spend"

    key: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    unit: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    amount: Mapped[float] = mapped_column(Float)


jobs_table = cast(Table, Job.__table__)
edges_table = cast(Table, JobEdge.__table__)
batches_table = cast(Table, Batch.__table__)
workflows_table = cast(Table, Workflow.__table__)
job_notify_table = cast(Table, JobNotify.__table__)
rollups_table = cast(Table, JobRollup.__table__)
gate_keys_table = cast(Table, GateKey.__table__)
checkpoints_table = cast(Table, Checkpoint.__table__)
schedules_table = cast(Table, Schedule.__table__)
fires_table = cast(Table, ScheduleFire.__table__)
epochs_table = cast(Table, EventEpoch.__table__)
costs_table = cast(Table, AttemptCost.__table__)
spend_table = cast(Table, AttemptSpend.__table__)
events_table = cast(Table, JobEventRow.__table__)
messages_table = cast(Table, JobMessage.__table__)
notifications_table = cast(Table, Notification.__table__)

"""Wire schemas: what travels over NATS between the api, executors and the metrics service."""

import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

Priority = Literal["high", "normal", "low"]


class JobState(StrEnum):
    blocked = "blocked"  # waits for its parents (depends_on, a workflow's needs)
    scheduled = "scheduled"  # waits for its time (run_at, delay_s)
    needs_approval = "needs_approval"  # waits for a person's yes before it may start
    throttled = "throttled"  # waits for a place under its concurrency or rate key
    queued = "queued"
    running = "running"
    retrying = "retrying"
    waiting = "waiting"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    dead = "dead"
    skipped = "skipped"  # a parent ended in a way its edge does not accept: never ran


FINAL_STATES = frozenset(
    {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.dead, JobState.skipped}
)
# The outcomes a run reports that end its generation for good: a later delivery of the same
# generation must not run it again (the executor's journal), and a run reported after one of them
# is a second run (the API's projector).
ENDED_OUTCOMES = frozenset({"succeeded", "failed", "dead"})


class Backoff(BaseModel):
    """Exponential backoff with full jitter: delay = uniform(0, min(max_s, base_s * factor**(n-1)))."""

    base_s: float = Field(1.0, gt=0, le=3600)
    factor: float = Field(2.0, ge=1, le=10)
    max_s: float = Field(300.0, gt=0, le=86400)


class InputFile(BaseModel):
    """A file staged into the job's working directory before it runs (content in the artifact store)."""

    path: str  # normalised relative path (artifact_names)
    sha256: str
    size: int = 0


def message_id(job_id: str, generation: int = 0, resume: int = 0) -> str:
    """The Nats-Msg-Id of a job's message in JOBS: the job id's last 16 characters (its 80 random
    bits, unique among the jobs of a duplicate window), with the generation and resume once either
    is bumped so that the new message is not taken for the old one. nats-server keeps every id of
    the window in memory, and 16 bytes fit Go's 16-byte size class where all 26 take 32."""
    return _with_bumps(job_id[-16:], generation, resume)


def message_ids(job_id: str, generation: int = 0, resume: int = 0) -> tuple[str, str]:
    """The ids a job's current message may carry: `message_id`'s, and the same with the whole job
    id in place of its tail, as messages published before 2026-12-07 carry. A queued job's message
    outlives an upgrade, and the reconciler must still know it for the job's (else it would send
    the job again, and it would run twice)."""
    return message_id(job_id, generation, resume), _with_bumps(job_id, generation, resume)


def _with_bumps(base: str, generation: int, resume: int) -> str:
    return base if generation == 0 and resume == 0 else f"{base}:{generation}:{resume}"


class JobSpec(BaseModel):
    """The JOBS message body: everything an executor needs to run the job, no database needed."""

    id: str
    type: str
    payload: Any = None
    queue: str = "default"
    priority: Priority = "normal"
    timeout_s: float = 3600.0
    max_attempts: int = 3
    backoff: Backoff = Field(default_factory=Backoff)
    labels: dict[str, str] = Field(default_factory=dict)
    submitted_at: float = Field(default_factory=time.time)
    # Bumped by a manual retry so the new message is not swallowed by JetStream's dedupe window.
    generation: int = 0
    # Bumped each time a job continues after a checkpoint decision (same generation, same journal).
    resume: int = 0
    # Files staged into the working directory, and globs (relative to it) collected after the run.
    inputs: list[InputFile] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)

    @property
    def msg_id(self) -> str:
        return message_id(self.id, self.generation, self.resume)


EventType = Literal[
    "queued",
    "started",
    "progress",
    "succeeded",
    "failed",
    "retrying",
    "cancelled",
    "dead",
    "worker_lost",
    "cancel_requested",
    "retried",
    "waiting",
    "decided",
    "step",
    "said",  # a line of the job's thread (ctx.say): journaled, so a resumed job does not say it twice
    "handed_back",  # a draining or stopped worker returned the job unfinished (no attempt spent)
]


class JobEvent(BaseModel):
    """One lifecycle event, published to EVENTS on taskyard.events.<job_id>."""

    job_id: str
    type: EventType
    at: float = Field(default_factory=time.time)
    attempt: int = 0
    worker_id: str | None = None
    queue: str | None = None
    priority: str | None = None
    job_type: str | None = None
    # Message generation (bumped by a manual retry): events of an older run never move the job.
    generation: int = 0
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(
        cls, job: Any, kind: EventType, data: dict[str, Any] | None = None, attempt: int = 0, **fields: Any
    ) -> "JobEvent":
        """An event of `job`: a JobSpec, or the API's job row (the same field names)."""
        return cls(
            job_id=job.id,
            type=kind,
            attempt=attempt,
            queue=job.queue,
            priority=job.priority,
            job_type=job.type,
            generation=job.generation,
            data=data or {},
            **fields,
        )


class EventBatch(BaseModel):
    """Several jobs' events in one EVENTS message: the API's `queued` announcements of one publish
    burst (Topology.queued_subject; the API has written their timeline rows itself, the metrics
    service counts them), or an executor's lifecycle events (Topology.batch_subject; projected like
    single events, each keeping its place in the batch)."""

    events: list[JobEvent]


def message_events(data: bytes, batch: bool) -> list[JobEvent]:
    """The events of one EVENTS message body: an EventBatch's (`batch`, Topology.is_batch_subject)
    or the one JobEvent. Raises pydantic's ValidationError for a malformed body."""
    if batch:
        return EventBatch.model_validate_json(data).events
    return [JobEvent.model_validate_json(data)]


class LogLine(BaseModel):
    """One log line, published to LOGS on taskyard.logs.<job_id>."""

    stream: Literal["stdout", "stderr", "log"] = "log"
    line: str
    at: float = Field(default_factory=time.time)
    attempt: int = 0


class RunningJob(BaseModel):
    """A job a worker holds right now, as its heartbeat reports it."""

    id: str
    type: str
    queue: str
    started_at: float


class Heartbeat(BaseModel):
    """A worker's heartbeat, the value of its key in the workers KV bucket."""

    id: str
    host: str
    pid: int
    version: str
    queues: list[str]
    slots: int
    running: list[RunningJob] = Field(default_factory=list)
    done: int = 0
    failed: int = 0
    state: Literal["running", "draining"] = "running"
    started_at: float
    # Job types this worker can run: the API accepts a non-built-in type once some worker has it.
    handlers: list[str] = Field(default_factory=list)
    # A REST worker's: the api process serving it (its home), the only one that counts its slots
    # and writes this key (api leases.py). None for an executor.
    via: str | None = None
    at: float = Field(default_factory=time.time)

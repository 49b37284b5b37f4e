"""The job lifecycle core: one typed job record and one pure transition function.

Everything that moves a job goes through `transition`: submit and the outbox (`Published`), the
projector (`Reported`: what an executor said), cancel, retry and checkpoint decisions. It does no
I/O, so every legal and illegal move is tested in milliseconds (tests/unit/test_lifecycle.py);
the callers load a record, ask the core, and write back `changes(old, new)` under a guard.

Whether a job's current message is in JOBS is outbox bookkeeping (`outbox_at`), not a status:
a submitted job is `queued` from the moment it is stored, unless a gate holds it. Gates are
passed in one order (`gate_status`): parents (`blocked`), its time (`scheduled`), a person's yes
(`needs_approval`), a place under its concurrency or rate key (`throttled`), then `queued`.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

from taskyard_common.coalesce import parts
from taskyard_common.schemas import FINAL_STATES, JobEvent, message_id

from .failures import Refused

# Held by a gate: stored, not in JOBS, waiting for the gate to open (docs/gates.md).
GATED_STATES = frozenset({"blocked", "scheduled", "needs_approval", "throttled"})
# A job is waiting for a decision, a retry, a gate or a slot in these states (it gets a reason).
WAITING_STATES = GATED_STATES | {"queued", "retrying", "waiting"}
# A job holds its place under its concurrency key from admission until it ends.
KEY_HOLDING_STATES = frozenset({"queued", "running", "retrying", "waiting"})
# A job in these states has its current message in JOBS (queued, retrying: waiting for delivery;
# running: delivered, not yet acked): the reconciler checks that it is still there.
RESENDABLE_STATES = frozenset({"queued", "retrying", "running"})
# Only these end states may be run again.
RETRYABLE_STATES = frozenset({"failed", "dead", "cancelled"})
# A worker's reports that end its attempt (`_reported` records the attempt from them).
_ENDS_ATTEMPT = FINAL_STATES | {"waiting", "retrying", "handed_back"}
# Edge conditions: the child runs once its parent ended so.
EDGE_ACCEPTS = {"succeeded": frozenset({"succeeded"}), "finished": FINAL_STATES}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """A job as the API stores it: one row of `jobs`, field for column."""

    id: str
    type: str
    queue: str
    priority: str
    status: str
    payload: Any
    labels: dict[str, str]
    timeout_s: float
    max_attempts: int
    backoff: dict[str, float]
    idempotency_key: str | None
    owner_id: str
    created_at: float
    updated_at: float
    traceparent: str | None = None
    # Bumped by a manual retry: a new message generation (escapes JetStream's dedupe window).
    generation: int = 0
    # Continuations after checkpoint decisions within this generation.
    resume: int = 0
    attempt: int = 0
    worker_id: str | None = None
    # JOBS sequence of the job's current message, once JetStream acked it.
    stream_seq: int | None = None
    # Outbox: since when the current message waits to be published; None once JOBS has it.
    outbox_at: float | None = None
    progress: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    # Highest EVENTS sequence applied: replays and stale events change nothing.
    last_event_seq: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    # Work made of many jobs: the batch and the workflow it belongs to, its name there.
    batch_id: str | None = None
    workflow_id: str | None = None
    node: str | None = None
    # Workflow inputs: payload key → "<parent node>/<JSON pointer into its result>", resolved
    # into the payload when the job is released.
    inputs: dict[str, str] | None = None
    # Input files and output globs ({"inputs": [...], "outputs": [...]}), None for a job without files.
    artifacts: dict[str, Any] | None = None
    # Gates beside parents (None: no such gate). Not before this time (epoch s):
    run_at: float | None = None
    # A person's yes before it starts: {"approvers": [...], "expires_at": t, "decision": None | {...}}.
    approval: dict[str, Any] | None = None
    # At most `concurrency["limit"]` jobs of this key hold a place at once (KEY_HOLDING_STATES).
    concurrency_key: str | None = None
    concurrency: dict[str, Any] | None = None
    # Jobs of this key are admitted no faster than `rate` ({"per_s": r, "burst": b}).
    rate_key: str | None = None
    rate: dict[str, Any] | None = None
    # A workflow's map node: {"over": "<node>/<pointer>", "parallel": N | None, "total": n once it
    # fanned out}; one of its item jobs: {"of": <the map node's id>, "index": i}.
    map: dict[str, Any] | None = None

    @property
    def is_map_node(self) -> bool:
        return self.map is not None and "over" in self.map

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def approved(self) -> bool:
        return self.approval is None or bool((self.approval.get("decision") or {}).get("approved"))

    @property
    def msg_id(self) -> str:
        """Nats-Msg-Id of the current message."""
        return message_id(self.id, self.generation, self.resume)


COLUMNS = tuple(f.name for f in fields(JobRecord))
_VALUES = attrgetter(*COLUMNS)
_INDEX = {name: i for i, name in enumerate(COLUMNS)}
# A frozen dataclass's __init__ sets each of the 39 fields through object.__setattr__ (~10 µs a
# record), and a job's record is built six or seven times between submit and its outcome (rows the
# projector reads, copies with changes). record_from sets them through the slots' own descriptors,
# one line a field, as dataclasses writes __init__ (a loop over the descriptors took 3.0 µs a
# record, the unrolled lines 2.05); the record stays frozen to everyone else.
SETTERS = {name: getattr(JobRecord, name).__set__ for name in COLUMNS}


def record_maker(names: Sequence[str]) -> Callable[[Iterable[Any]], JobRecord]:
    """A function making a record of every field's value given in the order of `names` (a row's
    columns, say). Fewer or more values than fields: ValueError."""
    if sorted(names) != sorted(COLUMNS):
        raise ValueError(f"not the record's fields: {sorted(set(names) ^ set(COLUMNS))}")
    values = ", ".join(f"v{i}" for i in range(len(names)))
    lines = "".join(f"    s{i}(job, v{i})\n" for i in range(len(names)))
    source = f"def make(values):\n    job = new(JobRecord)\n    ({values},) = values\n{lines}    return job\n"
    scope: dict[str, Any] = {"new": object.__new__, "JobRecord": JobRecord}
    scope |= {f"s{i}": SETTERS[name] for i, name in enumerate(names)}
    exec(source, scope)  # the source is built above from the field names alone
    return scope["make"]


# A record of every field's value, in COLUMNS order.
record_from = record_maker(COLUMNS)


def replace(job: JobRecord, **changes: Any) -> JobRecord:
    """`dataclasses.replace` for a JobRecord in a third of its time (a job is copied four or five
    times between submit and its outcome)."""
    values = list(_VALUES(job))
    for name, value in changes.items():
        values[_INDEX[name]] = value
    return record_from(values)


# --- what can happen to a job ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """JetStream acked the message of (generation, resume) at stream sequence `seq`."""

    seq: int
    generation: int
    resume: int


@dataclass(frozen=True, slots=True)
class Reported:
    """An executor's (or the API's own) lifecycle event, projected from EVENTS at `seq`.

    `held`: the `started` an outcome carried in the same message (`reports`); it moves the job like
    a `started` of its own, and leaves `seq` to the outcome that follows it.
    """

    event: JobEvent
    seq: int
    held: bool = False


def reports(event: JobEvent, seq: int) -> list[Reported]:
    """The transitions one EVENTS message makes: a coalesced outcome is its `started`, then itself."""
    started, *rest = parts(event)
    if not rest:
        return [Reported(event, seq)]
    return [Reported(started, seq, held=True), Reported(rest[0], seq)]


@dataclass(frozen=True, slots=True)
class Cancel:
    at: float


@dataclass(frozen=True, slots=True)
class Retry:
    at: float
    # Run again no earlier than this (a retry with a delay): `scheduled` until then.
    run_at: float | None = None


@dataclass(frozen=True, slots=True)
class Decided:
    """A checkpoint of `generation` was decided: the job resumes, or fails with `error`."""

    generation: int
    at: float
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Released:
    """Every parent ended as its edge asks: the job may run, with `payload` (inputs resolved)."""

    at: float
    payload: Any


@dataclass(frozen=True, slots=True)
class Skipped:
    """A parent ended in a way the edge does not accept (or could not give an input)."""

    at: float
    parent_id: str
    why: str
    # The parent's name in its workflow or batch request, when it has one (shown beside its id).
    parent_name: str | None = None


@dataclass(frozen=True, slots=True)
class Unrunnable:
    """A blocked job that can never run as asked (an input its parent's result lacks): failed."""

    at: float
    error: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Expanded:
    """A map node fanned out into `total` item jobs: it runs until they have all ended."""

    at: float
    total: int


@dataclass(frozen=True, slots=True)
class Joined:
    """Every item job of a map node ended: it succeeded with their results in order (`result`),
    or failed with `error`."""

    at: float
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Rearm:
    """Wait for parents again (their retry re-runs this job too)."""

    at: float


@dataclass(frozen=True, slots=True)
class Due:
    """A scheduled job's time came (the gate timer noticed at `at`)."""

    at: float


@dataclass(frozen=True, slots=True)
class Approved:
    """A person said yes (`approved`) or no to a job that needs approval before it starts; `at`
    past the approval's `expires_at` with no decision is its expiry (`by` None)."""

    at: float
    approved: bool
    by: str | None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Resend:
    """The reconciler found the job's current message gone from JOBS with nothing left to report
    on it (reconcile_rule): queue it again, its message due in the outbox under the same id. A
    running job's attempt is lost (its worker and its outcome are gone); a queued or retrying one
    only waits for its message again."""

    at: float


@dataclass(frozen=True, slots=True)
class Admitted:
    """Its concurrency and rate keys have a place for it: the job may go to JOBS."""

    at: float


Event = (
    Published
    | Reported
    | Cancel
    | Retry
    | Decided
    | Released
    | Skipped
    | Unrunnable
    | Rearm
    | Due
    | Approved
    | Admitted
    | Resend
    | Expanded
    | Joined
)


def gate_status(job: JobRecord, now: float) -> str:
    """Where a job stands once its parents are done: the first gate after them that is still
    closed, else `queued`. A job with a concurrency or rate key always passes `throttled`: the gate
    keeper admits it (in the same transaction when there is room), so nobody jumps that queue."""
    if job.run_at is not None and job.run_at > now:
        return "scheduled"
    if not job.approved:
        return "needs_approval"
    if job.concurrency_key is not None or job.rate_key is not None:
        return "throttled"
    return "queued"


def _gated(job: JobRecord, at: float, status: str | None = None) -> JobRecord:
    """`job` moved to `status` (default: its first closed gate), its message due when queued."""
    status = status or gate_status(job, at)
    if status == "needs_approval" and job.status != status:
        job = replace(job, approval=_asking(job.approval or {}, at))
    return replace(job, status=status, outbox_at=at if status == "queued" else None, updated_at=at)


def _asking(approval: dict[str, Any], at: float) -> dict[str, Any]:
    """The approval as it starts waiting at `at`: its window (`expires_s`) runs from when a person
    can first be asked, not from the submit (a job scheduled for tomorrow is not expired on arrival)."""
    window = approval.get("expires_s")
    return approval if window is None else {**approval, "expires_at": at + window}


def _ask_again(job: JobRecord) -> JobRecord:
    """A new generation of a job whose approval was refused or expired asks again; a yes stands."""
    if job.approval is None or job.approved:
        return job
    return replace(job, approval={**job.approval, "decision": None})


def new_job(
    *, id: str, owner_id: str, now: float, traceparent: str | None, blocked: bool = False, **spec: Any
) -> JobRecord:
    """A just-submitted job: `queued`, its message due for publishing now; or held by its first
    closed gate (`blocked` until its parents end, `scheduled`, …) with nothing to publish yet."""
    job = JobRecord(
        id=id,
        owner_id=owner_id,
        status="queued",
        created_at=now,
        updated_at=now,
        traceparent=traceparent,
        **spec,
    )
    return _gated(job, now, "blocked" if blocked else None)


def transition(job: JobRecord, event: Event) -> JobRecord:
    """The job after `event`, or `Refused` when a command may not apply to it."""
    match event:
        case Published():
            return _published(job, event)
        case Reported():
            return _reported(job, event.event, event.seq, event.held)
        case Cancel(at):
            if job.finished:
                raise Refused(f"job {job.id} is already {job.status}")
            return replace(job, status="cancelled", finished_at=at, updated_at=at, outbox_at=None)
        case Retry(at, run_at):
            if job.status not in RETRYABLE_STATES:
                raise Refused(f"job {job.id} is {job.status}; only failed, dead or cancelled jobs retry")
            if job.is_map_node:
                raise Refused(
                    f"job {job.id} is a map node: retry its failed items; it joins their results again"
                )
            again = replace(_requeued(job, at, generation=job.generation + 1, resume=0), run_at=run_at)
            return _gated(_ask_again(again), at)
        case Decided():
            return _decided(job, event)
        case Released(at, payload):
            if job.status != "blocked":
                return job  # cancelled meanwhile: stays so
            return _gated(replace(job, payload=payload), at)
        case Due(at):
            if job.status != "scheduled" or job.run_at is None or job.run_at > at:
                return job
            return _gated(job, at)
        case Approved():
            return _approved(job, event)
        case Resend(at):
            if job.status not in RESENDABLE_STATES or job.outbox_at is not None:
                return job  # it moved on, or its message is already due
            return replace(job, status="queued", worker_id=None, stream_seq=None, outbox_at=at, updated_at=at)
        case Admitted(at):
            if job.status != "throttled":
                return job
            return _gated(job, at, "queued")
        case Skipped(at, parent_id, why, parent_name):
            if job.status not in GATED_STATES:
                return job
            error = {"type": "ParentNotDone", "message": why, "parent": parent_id}
            if parent_name is not None:
                error["parent_name"] = parent_name
            return replace(job, status="skipped", error=error, finished_at=at, updated_at=at)
        case Unrunnable(at, error):
            if job.status != "blocked":
                return job
            return replace(job, status="failed", error=error, finished_at=at, updated_at=at)
        case Expanded(at, total):
            if job.status != "blocked" or not job.is_map_node:
                return job
            spec = {**(job.map or {}), "total": total}
            return replace(job, status="running", map=spec, started_at=job.started_at or at, updated_at=at)
        case Joined(at, result, error):
            if job.status not in ("blocked", "running") or not job.is_map_node:
                return job
            if error is not None:
                return replace(job, status="failed", error=error, finished_at=at, updated_at=at)
            return replace(job, status="succeeded", result=result, error=None, finished_at=at, updated_at=at)
        case Rearm(at):
            if not job.finished or job.status == "succeeded":
                return job
            return replace(
                _ask_again(_requeued(job, at, generation=job.generation + 1, resume=0)),
                status="blocked",
                outbox_at=None,
            )
    raise TypeError(f"not a lifecycle event: {event!r}")


def _approved(job: JobRecord, event: Approved) -> JobRecord:
    if job.status != "needs_approval" or job.approval is None:
        raise Refused(f"job {job.id} is {job.status}; it is not waiting for approval")
    decision = {"approved": event.approved, "by": event.by, "at": event.at, "comment": event.comment}
    decided = replace(job, approval={**job.approval, "decision": decision})
    if event.approved:
        return _gated(decided, event.at)
    why = "approval expired" if event.by is None else f"rejected by {event.by}"
    error = {"type": "ApprovalRejected", "message": why + (f": {event.comment}" if event.comment else "")}
    return replace(decided, status="cancelled", error=error, finished_at=event.at, updated_at=event.at)


def changes(old: JobRecord, new: JobRecord) -> dict[str, Any]:
    """The columns that moved: writing back an unchanged one could undo a concurrent write."""
    return {name: value for name in COLUMNS if (value := getattr(new, name)) != getattr(old, name)}


def lost_worker(job: JobRecord, event: JobEvent) -> bool:
    """A `started` that shows an attempt whose worker died (its message was redelivered after
    ack_wait), which the timeline shows as `worker_lost`: a later attempt while the job still runs,
    or one that skips an attempt never seen to start (its worker died before its `started` was
    stored, e.g. inside the executor's coalescing window). A hand-back spends no attempt, so a
    queued job's next start may repeat the attempt it was handed back at."""
    if event.type != "started" or event.generation != job.generation:
        return False
    if job.status == "running":
        return job.worker_id is not None and event.attempt > job.attempt
    if job.status == "queued":
        return event.attempt > max(job.attempt, 1)
    if job.status == "retrying":
        return event.attempt > job.attempt + 1
    return False


def lost_attempt(job: JobRecord, event: JobEvent) -> tuple[int, str | None]:
    """The attempt and worker a `worker_lost` row names (only known while the job ran)."""
    if job.status == "running":
        return job.attempt, job.worker_id
    return event.attempt - 1, None


def _published(job: JobRecord, event: Published) -> JobRecord:
    if (event.generation, event.resume) != (job.generation, job.resume):
        return job  # the ack of an older message: the current one is still due
    return replace(job, stream_seq=event.seq, outbox_at=None)


def _requeued(job: JobRecord, at: float, *, generation: int, resume: int) -> JobRecord:
    return replace(
        job,
        status="queued",
        generation=generation,
        resume=resume,
        attempt=0 if generation != job.generation else job.attempt,
        worker_id=None,
        stream_seq=None,
        outbox_at=at,
        error=None,
        result=None,
        finished_at=None,
        updated_at=at,
    )


def _decided(job: JobRecord, event: Decided) -> JobRecord:
    if job.status != "waiting" or job.generation != event.generation:
        return job  # the job moved on (cancelled, retried): the decision is only recorded
    if event.error is not None:
        return replace(job, status="failed", error=event.error, finished_at=event.at, updated_at=event.at)
    return _requeued(job, event.at, generation=job.generation, resume=job.resume + 1)


def _reported(job: JobRecord, event: JobEvent, seq: int, held: bool = False) -> JobRecord:
    if seq <= job.last_event_seq:
        return job  # projected before (a replay)
    if event.generation < job.generation or job.finished:
        # An older run's event, or news of a job that has ended (a late `started` after a
        # cancel, the executor's own `cancelled`): the timeline keeps it, the job stays.
        return job if held else replace(job, last_event_seq=seq)
    moved: dict[str, Any] = {"updated_at": max(job.updated_at, event.at)}
    if not held:  # a held `started` leaves its message's seq to the outcome it came in
        moved["last_event_seq"] = seq
    kind, data = event.type, event.data
    if kind in _ENDS_ATTEMPT:
        # The attempt that ends here ran, even when its `started` is projected after this (another
        # api process took it): the next start must not read as a lost worker (`lost_worker`).
        moved["attempt"] = max(job.attempt, event.attempt)
    if kind == "started":
        moved.update(status="running", attempt=event.attempt, worker_id=event.worker_id)
        moved["started_at"] = job.started_at or event.at
    elif kind == "progress":
        moved["progress"] = data
        if (
            job.status in ("queued", "retrying")
            and event.worker_id is not None
            and event.attempt > job.attempt
        ):
            # Only a running attempt reports progress: its `started` is in an earlier message that
            # another api process projected after this one (and is then ignored as older).
            moved.update(status="running", attempt=event.attempt, worker_id=event.worker_id)
            moved["started_at"] = job.started_at or event.at
    elif kind == "waiting":
        moved.update(status="waiting", worker_id=None)
    elif kind == "retrying":
        moved.update(status="retrying", error=data.get("error"))
    elif kind == "handed_back":
        # A draining or stopped worker returned it unfinished: queued again, the attempt unspent.
        moved.update(status="queued", worker_id=None)
    elif kind in FINAL_STATES:
        moved.update(status=kind, finished_at=event.at)
        if kind == "succeeded":
            moved.update(result=data.get("result"), error=None)
        elif kind != "cancelled":
            moved["error"] = data.get("error")
    # `queued`, `step`, `decided`, … are timeline entries: the API wrote what they mean itself.
    return replace(job, **moved)

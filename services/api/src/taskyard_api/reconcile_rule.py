"""The reconciler's decision (pure): may a job whose message is gone from JOBS be sent again?

The database is the record of what was accepted; JOBS only holds the jobs that may run now. After
a machine crash JetStream may have lost messages it had acknowledged (it flushes to disk every
`sync_interval`, 2 minutes by default), so a row can say `queued`, `retrying` or `running` while
its message is gone. But JOBS is a WorkQueue stream: a message also leaves it when an executor
acks (or terms) it, and the executor stores the job's outcome in EVENTS *before* that ack. So a
missing message is either lost, or taken by an executor whose outcome the projector has not
applied yet. The rule tells them apart without guessing at timings:

1. The row is older than `min_age_s` (`updated_at`: its submit, gate, start or last event), so a
   job just published or just started is never touched, and a lagging replica's reads settle.
2. First round: its message (by stream sequence, and its `Nats-Msg-Id` must be the job's, as a
   stream that lost its tail reuses sequences) is missing. Nothing is done; the round notes the
   row as it was and EVENTS' last sequence read *after* the message was seen missing (the
   watermark): any outcome stored before the ack that removed the message is at or below it.
3. A later round: the message is still missing, the row has not moved (same status, generation,
   resume, stream sequence, attempt and last applied event), the projector has acked EVENTS up to
   the watermark (so any such outcome has been applied, and would have moved the row), and, for a
   running job, no live worker's heartbeat lists it. Then nothing will ever report on it: a queued
   or retrying job is sent again (`republished`), a running one is queued again as a lost attempt
   (`requeued`), both through the lifecycle core (`Resend`) and the outbox, with the same message
   id (JetStream's dedupe turns a survivor into a no-op).

Bound: a lost message is sent again between max(min_age_s, interval) and min_age_s + 2 × interval
after the row last moved, once the projector has caught up.
"""

from dataclasses import dataclass
from typing import Literal

from .lifecycle import RESENDABLE_STATES, JobRecord

Verdict = Literal["ok", "young", "suspect", "wait", "republish", "requeue"]


@dataclass(frozen=True, slots=True)
class Suspect:
    """A job whose message a round found missing: the row as it was, and EVENTS' last sequence
    read after the message was seen missing."""

    row: tuple
    watermark: int


def row_key(job: JobRecord) -> tuple:
    """What must not have moved between the two rounds that see the message missing."""
    return (job.status, job.generation, job.resume, job.stream_seq, job.attempt, job.last_event_seq)


def checked(job: JobRecord) -> bool:
    """Is this row one whose current message should be in JOBS?"""
    return job.status in RESENDABLE_STATES and job.stream_seq is not None and job.outbox_at is None


def verdict(
    job: JobRecord,
    *,
    message_there: bool,
    worker_runs_it: bool,
    suspect: Suspect | None,
    projected_upto: int,
    now: float,
    min_age_s: float,
) -> Verdict:
    """What the reconciler does with one checked job this round (see the module docstring).

    `ok`: nothing is wrong (forget any suspicion); `young`: too recent to judge; `suspect`: note it
    with this round's watermark; `wait`: still suspect, the projector has not caught up yet (keep
    the old note); `republish` / `requeue`: send it again."""
    if not checked(job) or message_there:
        return "ok"
    if now - job.updated_at < min_age_s:
        return "young"
    if job.status == "running" and worker_runs_it:
        return "ok"  # its worker still holds it: whatever it reports will be projected
    if suspect is None or suspect.row != row_key(job):
        return "suspect"
    if projected_upto < suspect.watermark:
        return "wait"
    return "requeue" if job.status == "running" else "republish"


# -- decisions: a decided checkpoint whose `decided` event the job's journal lost ---------------


@dataclass(frozen=True, slots=True)
class DecisionRepair:
    """What the reconciler does for one decided checkpoint: send its `decided` event to the job's
    journal again (the stream lost it), and queue the job again (it ran without the decision and
    parked at the same checkpoint once more)."""

    republish: bool = False
    resume: bool = False


NOTHING = DecisionRepair()


def awaits_decision(job: JobRecord, *, ck_generation: int, ck_status: str, gate: bool) -> bool:
    """Will a run of this job still read this decision from its journal? A decided checkpoint of
    a running job (not an approval before its start, which never reaches the journal), of the
    job's current generation, the job not finished."""
    return ck_status != "pending" and not gate and not job.finished and job.generation == ck_generation


def decision_repair(
    job: JobRecord,
    *,
    ck_generation: int,
    ck_status: str,
    gate: bool,
    decided_at: float | None,
    in_journal: bool,
    pending_here: bool,
    continuation_due: bool,
    goes_on: bool,
    now: float,
    min_age_s: float,
) -> DecisionRepair:
    """The database is the record of decisions: a decision whose API call answered is in the
    checkpoint's row, committed with the job's move (queued again, or failed). Its `decided`
    event in the job's EVENTS subject is what a run reads (the journal); a machine crash can take
    it, and take or keep the continuation's JOBS message. Then:

    - the event is not in the journal (`in_journal`) → send it again, same message id;
    - the job is `waiting` with no pending checkpoint in its generation (`pending_here`): it ran
      without the decision and parked at the decided checkpoint again, which no one can decide
      now. If the decision lets it go on (`goes_on`), and no continuation message is in JOBS or
      due in the outbox (`continuation_due`: that run will read the decision, once it is back),
      it is queued again as the decision would have (`Decided`: a new continuation).

    Nothing is judged within `min_age_s` of the decision (its own publish may be on its way) or,
    for a resume, of the job's last move."""
    if not awaits_decision(job, ck_generation=ck_generation, ck_status=ck_status, gate=gate):
        return NOTHING
    if decided_at is None or now - decided_at < min_age_s:
        return NOTHING
    parked_again = job.status == "waiting" and not pending_here
    resume = parked_again and goes_on and not continuation_due and now - job.updated_at >= min_age_s
    return DecisionRepair(republish=not in_journal, resume=resume)

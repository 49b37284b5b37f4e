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

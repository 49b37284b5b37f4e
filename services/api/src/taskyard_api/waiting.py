"""Why is this job not running yet? Position, ETA and a reason in plain words, with evidence.

This module reads (events, consumers, workers, rates); reasons.py decides from what was read.
"""

import time

from . import approvals
from .lifecycle import JobRecord
from .models import JobEventRow
from .queue_state import SHORT_WINDOW_S, QueueState
from .reasons import (
    approval_reason,
    checkpoint_reason,
    publishing_reason,
    queued_reason,
    retry_reason,
    scheduled_reason,
)
from .workers import WorkerRegistry


def _last(timeline: list[JobEventRow], kind: str) -> dict:
    """Data of the newest event of type `kind` ({} if none)."""
    event = next((e for e in reversed(timeline) if e.type == kind), None)
    return (event.data or {}) if event else {}


async def explain(
    job: JobRecord, timeline: list[JobEventRow], queues: QueueState, workers: WorkerRegistry
) -> dict:
    """The `queue_position`, `eta_seconds`, `eta_range` and `waiting_reason` of a waiting job."""
    out = {"queue_position": None, "eta_seconds": None, "eta_range": None, "waiting_reason": None}
    q = job.queue
    if job.status == "queued" and job.outbox_at is not None:
        return {**out, "waiting_reason": publishing_reason(job.outbox_at)}
    if job.status == "retrying":
        reason = retry_reason(job.attempt, job.max_attempts, _last(timeline, "retrying"), time.time())
        return {**out, "waiting_reason": reason}
    if job.status == "scheduled" and job.run_at is not None:
        now = time.time()
        # Its ETA is at least its time: what the queue adds then is not known yet.
        return {
            **out,
            "eta_seconds": round(max(0.0, job.run_at - now), 1),
            "waiting_reason": scheduled_reason(job.run_at, now),
        }
    if job.status == "needs_approval" and job.approval is not None:
        ck_id = approvals.checkpoint_id(job)
        return {**out, "waiting_reason": approval_reason(job.approval, ck_id, time.time())}
    if job.status == "waiting":
        return {**out, "waiting_reason": checkpoint_reason(_last(timeline, "waiting").get("checkpoint", {}))}
    if job.status != "queued" or job.stream_seq is None:
        return out

    pos = await queues.position(q, job.priority, job.stream_seq)
    serving = await workers.serving(q)
    out_60, _ = queues.rates(q)
    out_10, _ = queues.rates(q, SHORT_WINDOW_S)
    return queued_reason(q, pos, pos.paused, serving, out_60, out_10)

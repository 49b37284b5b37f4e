"""Why is this job not running yet? Position, ETA and a reason in plain words, with evidence."""

import time

from .lifecycle import JobRecord
from .models import JobEventRow
from .queue_state import SHORT_WINDOW_S, QueueState
from .schemas import iso
from .workers import WorkerRegistry


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"


def _reason(code: str, message: str, **evidence) -> dict:
    return {"code": code, "message": message, "evidence": evidence}


def _eta(position: int, rates: list[float], free_slots: int) -> tuple[float | None, list[float] | None]:
    """Seconds until this job starts: (position + 1) / recent start rate, as a range over windows."""
    live = [r for r in rates if r > 0]
    if not live:
        return (0.0, [0.0, 0.0]) if free_slots > position else (None, None)
    ahead = position + 1
    lo, hi = ahead / max(live), ahead / min(live)
    return round(ahead / live[-1], 1), [round(lo, 1), round(hi, 1)]


async def explain(
    job: JobRecord, timeline: list[JobEventRow], queues: QueueState, workers: WorkerRegistry
) -> dict:
    """The `queue_position`, `eta_seconds`, `eta_range` and `waiting_reason` of a waiting job."""
    out = {"queue_position": None, "eta_seconds": None, "eta_range": None, "waiting_reason": None}
    q = job.queue
    if job.status == "queued" and job.outbox_at is not None:
        out["waiting_reason"] = _reason(
            "publishing",
            "Accepted and stored; being handed to NATS (the outbox publishes it if the first try failed).",
            since=iso(job.outbox_at),
        )
        return out
    if job.status == "retrying":
        last = next((e for e in reversed(timeline) if e.type == "retrying"), None)
        data = last.data if last else {}
        next_at = data.get("next_at")
        error = (data.get("error") or {}).get("message", "an error")
        when = (
            f"next try at {iso(next_at)} (in {max(0, next_at - time.time()):.0f}s)"
            if next_at
            else "next try soon"
        )
        out["waiting_reason"] = _reason(
            "retry_backoff",
            f"Attempt {job.attempt} of {job.max_attempts} failed ({error}); {when}.",
            attempt=job.attempt,
            next_at=iso(next_at),
            error=error,
        )
        return out
    if job.status == "waiting":
        parked = next((e for e in reversed(timeline) if e.type == "waiting"), None)
        ck = (parked.data or {}).get("checkpoint", {}) if parked else {}
        question = ck.get("kind") == "question"
        who = ", ".join(ck.get("approvers") or ["admin"])
        what = f"an answer to {ck.get('message')!r}" if question else f"approval of `{ck.get('name')}`"
        out["waiting_reason"] = _reason(
            "waiting_answer" if question else "waiting_approval",
            f"Waiting for {what} by {who} (expires at {iso(ck.get('expires_at'))}); it holds no worker slot.",
            checkpoint_id=ck.get("id"),
            name=ck.get("name"),
            approvers=ck.get("approvers"),
            expires_at=iso(ck.get("expires_at")),
        )
        return out
    if job.status != "queued" or job.stream_seq is None:
        return out

    pos = await queues.position(q, job.priority, job.stream_seq)
    serving = await workers.serving(q)
    live = [w for w in serving if w.live]
    slots = sum(w.heartbeat.slots for w in live)
    busy = sum(len(w.heartbeat.running) for w in live)
    out_60, _ = queues.rates(q)
    out_10, _ = queues.rates(q, SHORT_WINDOW_S)
    out["queue_position"] = pos.position
    if pos.position is not None:
        out["eta_seconds"], out["eta_range"] = _eta(pos.position, [out_60, out_10], slots - busy)

    if pos.paused:
        out["waiting_reason"] = _reason(
            "queue_paused", f"Queue `{q}` is paused by an admin; resume it to continue."
        )
    elif pos.state == "in_flight":
        out["waiting_reason"] = _reason("starting", "Delivered to a worker; it is starting now.")
    elif not live:
        gone = [w for w in serving if not w.live]
        if gone:
            last = min(gone, key=lambda w: w.age_s)
            msg = (
                f"No live worker serves queue `{q}`; the last one ({last.heartbeat.id}) was {last.state}, "
                f"last seen {last.age_s:.0f}s ago. Start one: python -m taskyard_executor --queues {q}"
            )
            evidence = {"last_worker": last.heartbeat.id, "last_seen_s": round(last.age_s, 1)}
        else:
            msg = f"No worker is serving queue `{q}`. Start one: python -m taskyard_executor --queues {q}"
            evidence = {}
        out["waiting_reason"] = _reason("no_workers", msg, **evidence)
    elif busy >= slots:
        next_free = f"; next free slot expected in ~{_seconds(1 / out_60)}" if out_60 > 0 else ""
        out["waiting_reason"] = _reason(
            "all_busy",
            f"All {slots} slots on {len(live)} worker(s) serving `{q}` are busy; position {pos.position}{next_free}.",
            slots=slots,
            busy=busy,
            workers=len(live),
            position=pos.position,
        )
    elif pos.position:
        eta = f"; ETA ~{_seconds(out['eta_seconds'])}" if out["eta_seconds"] is not None else ""
        out["waiting_reason"] = _reason(
            "behind_others",
            f"{pos.position} job(s) will start before it ({pos.higher} of higher priority){eta}.",
            position=pos.position,
            higher_priority=pos.higher,
            slots=slots,
            busy=busy,
        )
    else:
        out["waiting_reason"] = _reason("next", f"Next in line; {slots - busy} free slot(s) on queue `{q}`.")
    return out

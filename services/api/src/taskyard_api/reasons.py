"""Why a job is not running yet, decided from plain values: no NATS, no database, no clock.

waiting.explain gathers the inputs (events, queue position, consumers, workers, rates); every
conclusion it draws from them is made here, so each reason code can be checked by hand.
"""

from collections.abc import Sequence
from typing import Any

from .position import Position
from .schemas import iso
from .workers import WorkerView


def seconds_text(value: float) -> str:
    return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"


def reason(code: str, message: str, **evidence: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "evidence": evidence}


def eta(position: int, rates: Sequence[float], free_slots: int) -> tuple[float | None, list[float] | None]:
    """Seconds until this job starts: (position + 1) / recent start rate, as a range over windows.

    `rates` are start rates over the long then the short window; the estimate uses the last one.
    Without any start lately it is 0 when a slot is free for it, else unknown.
    """
    live = [r for r in rates if r > 0]
    if not live:
        return (0.0, [0.0, 0.0]) if free_slots > position else (None, None)
    ahead = position + 1
    lo, hi = ahead / max(live), ahead / min(live)
    return round(ahead / live[-1], 1), [round(lo, 1), round(hi, 1)]


def publishing_reason(outbox_at: float) -> dict:
    """Stored but not yet in NATS: the outbox holds it since `outbox_at`."""
    return reason(
        "publishing",
        "Accepted and stored; being handed to NATS (the outbox publishes it if the first try failed).",
        since=iso(outbox_at),
    )


def retry_reason(attempt: int, max_attempts: int, retrying: dict, now: float) -> dict:
    """A failed attempt waits out its backoff; `retrying` is the data of the last `retrying` event."""
    next_at = retrying.get("next_at")
    error = (retrying.get("error") or {}).get("message", "an error")
    when = f"next try at {iso(next_at)} (in {max(0, next_at - now):.0f}s)" if next_at else "next try soon"
    return reason(
        "retry_backoff",
        f"Attempt {attempt} of {max_attempts} failed ({error}); {when}.",
        attempt=attempt,
        next_at=iso(next_at),
        error=error,
    )


def duration_text(seconds: float) -> str:
    """3.2s, 42s, 3 min, 2 h 5 min, 3 d 4 h: how long, as a person says it."""
    if seconds < 60:
        return seconds_text(max(0.0, seconds))
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def scheduled_reason(run_at: float, now: float) -> dict:
    """Waits for its time (`run_at`, `delay_s`, a retry with a delay): not in NATS until then."""
    left = max(0.0, run_at - now)
    return reason(
        "scheduled",
        f"Scheduled for {iso(run_at)} (in {duration_text(left)}); it is not queued before then.",
        run_at=iso(run_at),
        seconds_left=round(left, 3),
    )


def checkpoint_reason(ck: dict) -> dict:
    """Parked at a checkpoint; `ck` is the `checkpoint` of the last `waiting` event."""
    question = ck.get("kind") == "question"
    who = ", ".join(ck.get("approvers") or ["admin"])
    what = f"an answer to {ck.get('message')!r}" if question else f"approval of `{ck.get('name')}`"
    return reason(
        "waiting_answer" if question else "waiting_approval",
        f"Waiting for {what} by {who} (expires at {iso(ck.get('expires_at'))}); it holds no worker slot.",
        checkpoint_id=ck.get("id"),
        name=ck.get("name"),
        approvers=ck.get("approvers"),
        expires_at=iso(ck.get("expires_at")),
    )


def approval_reason(approval: dict[str, Any], checkpoint_id: str, now: float) -> dict:
    """Waits for a person's yes before its start (`approval` is the job's column): who may give it,
    until when, and the checkpoint to decide in the inbox. Not in NATS, no slot held."""
    approvers = list(approval.get("approvers") or ["admin"])
    expires_at = approval.get("expires_at")
    who = ", ".join(f"`{a}`" for a in approvers)
    until = ""
    if expires_at is not None:
        until = f" (expires at {iso(expires_at)}, in {duration_text(expires_at - now)})"
    return reason(
        "needs_approval",
        f"Needs approval by {who} before it may start{until}; rejected or expired, it is cancelled.",
        checkpoint_id=checkpoint_id,
        approvers=approvers,
        expires_at=iso(expires_at),
    )


def queued_reason(
    queue: str,
    pos: Position,
    paused: bool,
    serving: Sequence[WorkerView],
    rate_long: float,
    rate_short: float,
) -> dict:
    """Position, ETA and reason of a job in NATS: `serving` are the workers listed for its queue
    (live or not), `rate_long`/`rate_short` the queue's start rates over the long/short window.

    The first that applies wins: queue_paused, starting, no_workers, all_busy, behind_others, next.
    """
    live = [w for w in serving if w.live]
    slots = sum(w.heartbeat.slots for w in live)
    busy = sum(len(w.heartbeat.running) for w in live)
    out: dict[str, Any] = {
        "queue_position": pos.position,
        "eta_seconds": None,
        "eta_range": None,
        "waiting_reason": None,
    }
    # A paused queue starts nothing: no rate says when it will be resumed, so no ETA.
    if pos.position is not None and not paused:
        out["eta_seconds"], out["eta_range"] = eta(pos.position, [rate_long, rate_short], slots - busy)

    if paused:
        out["waiting_reason"] = reason(
            "queue_paused", f"Queue `{queue}` is paused by an admin; resume it to continue."
        )
    elif pos.state == "in_flight":
        out["waiting_reason"] = reason("starting", "Delivered to a worker; it is starting now.")
    elif not live:
        out["waiting_reason"] = _no_workers(queue, [w for w in serving if not w.live])
    elif busy >= slots:
        next_free = f"; next free slot expected in ~{seconds_text(1 / rate_long)}" if rate_long > 0 else ""
        out["waiting_reason"] = reason(
            "all_busy",
            f"All {slots} slots on {len(live)} worker(s) serving `{queue}` are busy; position {pos.position}{next_free}.",
            slots=slots,
            busy=busy,
            workers=len(live),
            position=pos.position,
        )
    elif pos.position:
        eta_s = out["eta_seconds"]
        eta_text = f"; ETA ~{seconds_text(eta_s)}" if eta_s is not None else ""
        out["waiting_reason"] = reason(
            "behind_others",
            f"{pos.position} job(s) will start before it ({pos.higher} of higher priority){eta_text}.",
            position=pos.position,
            higher_priority=pos.higher,
            slots=slots,
            busy=busy,
        )
    else:
        out["waiting_reason"] = reason(
            "next", f"Next in line; {slots - busy} free slot(s) on queue `{queue}`."
        )
    return out


def _no_workers(queue: str, not_live: Sequence[WorkerView]) -> dict:
    """Nobody live serves the queue; name the most recently seen worker (gone or draining) if any."""
    start = f"Start one: python -m taskyard_executor --queues {queue}"
    if not not_live:
        return reason("no_workers", f"No worker is serving queue `{queue}`. {start}")
    last = min(not_live, key=lambda w: w.age_s)
    return reason(
        "no_workers",
        f"No live worker serves queue `{queue}`; the last one ({last.heartbeat.id}) was {last.state}, "
        f"last seen {last.age_s:.0f}s ago. {start}",
        last_worker=last.heartbeat.id,
        last_seen_s=round(last.age_s, 1),
    )


def blocked_reason(parents: Sequence[tuple[str, str | None, str, dict[str, Any]]]) -> dict[str, Any]:
    """Why a `blocked` job waits: each open parent (id, name, status, its own position/ETA).
    The job's ETA is its slowest parent's, when every parent has one."""
    if not parents:
        return {
            "queue_position": None,
            "eta_seconds": None,
            "eta_range": None,
            "waiting_reason": reason("blocked", "Its parents have ended; it is being released."),
        }
    words, evidence, etas = [], [], []
    for job_id, name, status, seen in parents:
        label = name or job_id
        detail = status
        if seen.get("queue_position") is not None:
            detail += f", position {seen['queue_position']}"
        if seen.get("eta_seconds") is not None:
            detail += f", ETA ~{seconds_text(seen['eta_seconds'])}"
        etas.append(seen.get("eta_seconds"))
        words.append(f"{label} ({detail})")
        evidence.append(
            {"id": job_id, "name": name, "status": status, "queue_position": seen.get("queue_position"),
             "eta_seconds": seen.get("eta_seconds")}
        )  # fmt: skip
    known = None if any(e is None for e in etas) else max(e for e in etas if e is not None)
    return {
        "queue_position": None,
        "eta_seconds": known,
        "eta_range": None,
        "waiting_reason": reason(
            "blocked", f"Waiting for {len(parents)} parent(s): {', '.join(words)}.", parents=evidence
        ),
    }


def throttled_reason(facts: dict[str, Any], now: float) -> dict[str, Any]:
    """Why a `throttled` job waits: its concurrency key is full (how many hold a place, how many
    wait before it), else its rate key's next token is not due (when it is). `facts` is
    admission.facts: {"concurrency": {key, group, limit, holding, ahead, strategy}} and/or
    {"rate": {key, per_s, burst, next_at, ahead}}."""
    out: dict[str, Any] = {"queue_position": None, "eta_seconds": None, "eta_range": None}
    c, r = facts.get("concurrency"), facts.get("rate")
    if c and c["holding"] >= c["limit"]:
        where = f"group `{c['group']}` (key `{c['key']}`)" if c.get("group") else f"key `{c['key']}`"
        out["waiting_reason"] = reason(
            "throttled",
            f"{c['holding']}/{c['limit']} running for {where}; {c['ahead']} ahead of you for this key.",
            **{k: c[k] for k in ("key", "limit", "holding", "ahead")},
            group=c.get("group"),
            kind="concurrency",
        )
        return out
    if r:
        next_in = max(0.0, r["next_at"] - now)
        rate = f"{r['per_s']:g}/s" if r["per_s"] >= 1 else f"{r['per_s'] * 60:g}/min"
        out["eta_seconds"] = round(next_in + r["ahead"] / r["per_s"], 1)
        out["waiting_reason"] = reason(
            "throttled",
            f"rate `{r['key']}` {rate}; next release in {next_in:.1f} s; {r['ahead']} ahead of you for this key.",
            key=r["key"],
            per_s=r["per_s"],
            burst=r["burst"],
            next_release_at=iso(r["next_at"]),
            ahead=r["ahead"],
            kind="rate",
        )
        return out
    out["waiting_reason"] = reason("throttled", "Its key has room; it is being admitted.", kind="concurrency")
    return out

"""A job's `started` carried inside its outcome: one EVENTS message instead of two.

An executor holds a job's `started` for a short window; a job that ends within it reports one
event, its outcome, with the held start in `data["started"]` (DESIGN.md, "Data ownership and
flow"). Readers (the API's projector, the metrics service) split it back with `parts`, so a
coalesced job looks exactly like one that reported twice: same times, attempt and worker.
"""

from typing import Any

from .schemas import JobEvent

KEY = "started"


def carry(outcome: JobEvent, started: JobEvent) -> JobEvent:
    """`outcome` with `started` embedded: its time and data (e.g. wait_s), and its attempt and
    worker where they differ from the outcome's (`started_of` reads the outcome's otherwise; one
    run's start and outcome share both, so ~40 bytes a job less in EVENTS)."""
    held: dict[str, Any] = {"at": started.at}
    if started.attempt != outcome.attempt:
        held["attempt"] = started.attempt
    if started.worker_id != outcome.worker_id:
        held["worker_id"] = started.worker_id
    held.update(started.data)
    outcome.data[KEY] = held
    return outcome


def carried(event: JobEvent) -> dict[str, Any] | None:
    """What `carry` embedded (the start's `at`, its data, and its attempt and worker where they
    differ), or None when the event carries no start. For readers that need no event of it."""
    held = event.data.get(KEY) if event.type != "started" else None
    if not isinstance(held, dict) or not isinstance(held.get("at"), int | float):
        return None
    return held


def started_of(event: JobEvent) -> JobEvent | None:
    """The `started` an outcome carries, as the event it was; None when it carries none."""
    held = carried(event)
    if held is None:
        return None
    data = {k: v for k, v in held.items() if k not in ("at", "attempt", "worker_id")}
    return event.model_copy(
        update={
            "type": "started",
            "at": float(held["at"]),
            "attempt": int(held.get("attempt", event.attempt)),
            "worker_id": held.get("worker_id", event.worker_id),
            "data": data,
        }
    )


def parts(event: JobEvent) -> list[JobEvent]:
    """The events one message stands for, in order: [started, outcome] or [event]."""
    started = started_of(event)
    if started is None:
        return [event]
    outcome = event.model_copy(update={"data": {k: v for k, v in event.data.items() if k != KEY}})
    return [started, outcome]

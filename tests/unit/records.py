"""A job record as submit builds it, for the lifecycle tests of the fast tier."""

from dataclasses import replace

from taskyard_api.lifecycle import JobRecord, new_job
from taskyard_common.schemas import JobEvent

T0 = 1_700_000_000.0
SPEC = {
    "type": "noop",
    "queue": "default",
    "priority": "normal",
    "payload": {},
    "labels": {},
    "timeout_s": 60.0,
    "max_attempts": 3,
    "backoff": {"base_s": 1.0, "factor": 2.0, "max_s": 300.0},
    "idempotency_key": None,
}


def record(job_id: str = "J1", **fields) -> JobRecord:
    """A new job (`SPEC`, created at `T0`) with `fields` changed; `type=` and the other SPEC keys too."""
    spec = {**SPEC, **{k: v for k, v in fields.items() if k in SPEC}}
    job = new_job(id=job_id, owner_id="k1", now=T0, traceparent=None, **spec)
    return replace(job, **{k: v for k, v in fields.items() if k not in SPEC})


def event(
    kind: str, at: float, attempt: int = 1, worker: str | None = "w1", job_id: str = "J1", **data
) -> JobEvent:
    """What an executor reports about a `SPEC` job (`J1` unless said)."""
    return JobEvent(
        job_id=job_id,
        type=kind,
        at=at,
        attempt=attempt,
        worker_id=worker,
        queue="default",
        priority="normal",
        job_type="noop",
        data=data,
    )

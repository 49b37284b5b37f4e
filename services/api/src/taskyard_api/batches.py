"""Batches: jobs submitted together, their progress, and callbacks run once when the last ends."""

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskyard_common.schemas import FINAL_STATES

from .auth import Principal
from .failures import Invalid, TooLarge
from .gates import as_dict
from .http_metrics import WORK_CREATED
from .ids import new_id
from .job_store import JobStore, record_of
from .lifecycle import JobRecord, new_job
from .models import JobEventRow, batches_table, jobs_table
from .plan import Item, as_items, with_notify
from .schemas import BatchCreate, ConcurrencySpec, JobBatch, JobFields, iso

if TYPE_CHECKING:
    from .gates import Opened
    from .jobs import JobService

# Failures grouped by error type, each with at most this many examples.
EXAMPLES = 5


def batch_row(owner_id: str, name: str | None, callbacks: dict[str, Any], now: float) -> dict[str, Any]:
    """The `batches` row. How many members it has is not stored: its jobs say (a member whose
    idempotency key names a stored job is that job, which stays where it was)."""
    return {
        "id": new_id(now),
        "owner_id": owner_id,
        "name": name,
        "callbacks": callbacks,
        "created_at": now,
        "completed_at": None,
    }


async def counts(session: AsyncSession, batch_id: str) -> dict[str, int]:
    """Members by status: one indexed GROUP BY over (batch_id, status)."""
    j = jobs_table.c
    rows = await session.execute(
        select(j.status, func.count()).where(j.batch_id == batch_id).group_by(j.status)
    )
    return dict(rows.all())


async def failures(session: AsyncSession, batch_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Members that did not succeed, grouped by error type, with examples."""
    j = jobs_table.c
    rows = await session.execute(
        select(j.id, j.node, j.status, j.error)
        .where(j.batch_id == batch_id, j.status.in_(["failed", "dead", "cancelled", "skipped"]))
        .order_by(j.id)
        .limit(limit)
    )
    groups: dict[str, dict[str, Any]] = {}
    for job_id, node, status, error in rows:
        kind = (error or {}).get("type") or status
        group = groups.setdefault(kind, {"error": kind, "count": 0, "examples": []})
        group["count"] += 1
        if len(group["examples"]) < EXAMPLES:
            message = (error or {}).get("message")
            group["examples"].append({"id": job_id, "name": node, "status": status, "message": message})
    return sorted(groups.values(), key=lambda g: -g["count"])


def summary(batch: Any, by_status: dict[str, int], failed: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(by_status.values())
    done = sum(n for status, n in by_status.items() if status in FINAL_STATES)
    return {
        "id": batch.id,
        "name": batch.name,
        "total": total,
        "done": done,
        "succeeded": by_status.get("succeeded", 0),
        "percent": round(100 * done / total, 1) if total else 100.0,
        "counts": by_status,
        "failures": failed,
        "created_at": iso(batch.created_at),
        "completed_at": iso(batch.completed_at),
    }


async def complete_batch(session: AsyncSession, batch_id: str, now: float, out: "Opened") -> list[JobRecord]:
    """Claim the batch's completion (once: a conditional UPDATE) and store its callback jobs, due
    for publishing. Returns them; none if another writer completed it first."""
    won = await session.execute(
        update(batches_table)
        .where(batches_table.c.id == batch_id, batches_table.c.completed_at.is_(None))
        .values(completed_at=now)
        .returning(batches_table)
    )
    batch = won.first()
    if batch is None:
        return []
    out.batches.append((batch.created_at, now))
    if not batch.callbacks:
        return []
    by_status = await counts(session, batch_id)
    failed = await failures(session, batch_id)
    info = summary(batch, by_status, failed)
    all_ok = by_status.get("succeeded", 0) == info["total"]
    wanted = ["on_complete", "on_success" if all_ok else "on_failure"]
    jobs = []
    for kind in wanted:
        if (spec := batch.callbacks.get(kind)) is not None:
            jobs.append(_callback(JobFields.model_validate(spec), batch.owner_id, kind, info, now))
    await JobStore.add(session, jobs)
    return jobs


def _callback(spec: JobFields, owner_id: str, kind: str, info: dict[str, Any], now: float) -> JobRecord:
    payload = as_dict(spec.payload)
    payload["batch"] = info
    # Its own webhook: not yet. An idempotency key: none (it runs once per completion; a key
    # that names a stored job would make its insert fail).
    fields = spec.record_fields(now) | {"payload": payload, "idempotency_key": None}
    return new_job(id=new_id(now), owner_id=owner_id, now=now, traceparent=None, node=kind, **fields)


async def members(session: AsyncSession, batch_id: str, statuses: list[str]) -> list[JobRecord]:
    j = jobs_table.c
    rows = await session.execute(
        select(jobs_table).where(j.batch_id == batch_id, j.status.in_(statuses)).order_by(j.id)
    )
    return [record_of(row) for row in rows]


async def member_timelines(session: AsyncSession, batch_id: str) -> list[tuple[JobRecord, list[Any]]]:
    """Every member (by id) with its timeline, in two queries: what a batch's artifact listing reads."""
    j, e = jobs_table.c, JobEventRow.__table__.c
    rows = await session.execute(select(jobs_table).where(j.batch_id == batch_id).order_by(j.id))
    jobs = [record_of(row) for row in rows]
    member_ids = select(j.id).where(j.batch_id == batch_id).scalar_subquery()
    events = await session.execute(
        select(JobEventRow.__table__).where(e.job_id.in_(member_ids)).order_by(e.at, e.id)
    )
    by_job: dict[str, list[Any]] = {job.id: [] for job in jobs}
    for event in events:
        by_job.setdefault(event.job_id, []).append(event)
    return [(job, by_job[job.id]) for job in jobs]


def with_parallel(items: list[Item], batch_id: str, parallel: int) -> list[Item]:
    """A batch's `parallel`: each member gets the concurrency key `batch:<id>` with that limit."""
    for item in items:
        if item.spec.concurrency is not None:
            raise Invalid(
                f"{item.field('concurrency')}: a batch with `parallel` sets each member's concurrency key"
            )
    key = ConcurrencySpec(key=f"batch:{batch_id}", limit=parallel)
    return [replace(item, spec=item.spec.model_copy(update={"concurrency": key})) for item in items]


async def submit_batch_of(
    svc: "JobService", request: Any, body: JobBatch, who: Principal
) -> tuple[dict[str, Any], list[tuple[JobRecord, bool]]]:
    """Store `body`'s jobs as one batch (with its callbacks, if a BatchCreate), in one transaction."""
    limit = request.app.state.settings.max_batch
    if len(body.jobs) > limit:
        raise TooLarge(f"jobs: {len(body.jobs)} items exceeds the batch limit of {limit}")
    callbacks: dict[str, Any] = {}
    name = None
    if isinstance(body, BatchCreate):
        name = body.name
        for kind in ("on_success", "on_failure", "on_complete"):
            if (spec := getattr(body, kind)) is not None:
                problems = await svc.known_types.problems(spec, f"{kind}.")
                if problems:
                    raise Invalid("; ".join(problems))
                callbacks[kind] = spec.model_dump(mode="json")
    row = batch_row(who.id, name, callbacks, time.time())
    items = with_notify(as_items(body.jobs, many=True), getattr(body, "notify", None))
    if parallel := getattr(body, "parallel", None):
        items = with_parallel(items, row["id"], parallel)
    results = await svc.submit(items, who, (batches_table, row), batch_id=row["id"])
    WORK_CREATED.labels("batch").inc()
    return row, results

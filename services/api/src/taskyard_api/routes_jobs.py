"""/api/v1/jobs: submit, batch, list, get, cancel, retry, logs."""

import time
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from nats.errors import Error as NatsError
from pydantic import StringConstraints
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import State

from taskyard_common.schemas import FINAL_STATES, JobState

from . import admission, audit, gates
from .api_doc import answers
from .auth import Principal, require
from .batches import submit_batch_of
from .checkpoints import checkpoint_out
from .failures import NotFound, Unavailable
from .ids import JOB_ID
from .input_checks import CheckedRoute
from .job_search import (
    ID_PREFIX,
    LABEL_FILTER,
    MAX_ERROR_TEXT,
    MAX_PAYLOAD_FILTER,
    PAYLOAD_DOC,
    SORT_PATTERN,
    SORTS,
    TIME_DOC,
    TIMESTAMP,
    JobFilter,
    encode_cursor,
    read_page,
)
from .job_store import JobStore, record_of
from .jobs import JobService
from .lifecycle import WAITING_STATES, JobRecord
from .logs import follow_logs, read_logs
from .models import Checkpoint, Job, JobEventRow
from .plan import as_items
from .ratelimit import too_many
from .reasons import blocked_reason, throttled_reason
from .schemas import QUEUE, JobBatch, JobCreate
from .views import JsonAnswer, job_out
from .waiting import explain

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)
QUEUE_OR_NOTHING = "^(" + QUEUE.removeprefix("^").removesuffix("$") + ")?$"


def _admit(request: Request, who: Principal, jobs: int) -> None:
    wait = request.app.state.submit_limit.take(who.id, jobs)
    if wait:
        raise too_many(wait, f"key {who.name!r} submits too fast")


def job_service(request: Request) -> JobService:
    """The job service, refusing before anything is written while NATS is away."""
    state = request.app.state
    if not state.nc.is_connected:
        raise Unavailable(
            f"NATS unavailable: reconnecting to {state.nc.connected_url or 'server'}; retry shortly"
        )
    return state.jobs


# The hot routes answer with a JsonAnswer of plain JSON values: returning the dict would make
# FastAPI walk every value through jsonable_encoder, 45 % of the api's CPU on batch submits.


@router.post(
    "/jobs",
    status_code=201,
    responses={
        200: {"description": "Submitted before with this idempotency_key: that job"},
        **answers(409, 413),
    },
)
async def submit_job(body: JobCreate, request: Request, who: Principal = require("submitter")):
    _admit(request, who, 1)
    await request.app.state.artifacts.check_inputs([body])
    [(job, created)] = await job_service(request).submit(as_items([body], many=False), who)
    return JsonAnswer(job_out(job), 201 if created else 200)


@router.post("/jobs:batch", status_code=201, responses=answers(409, 413))
async def submit_batch(body: JobBatch, request: Request, who: Principal = require("submitter")):
    """The jobs as one batch (its id in `batch_id`; `GET /api/v1/batches/{id}` for its progress)."""
    _admit(request, who, len(body.jobs))
    await request.app.state.artifacts.check_inputs(body.jobs, "jobs")
    batch, results = await submit_batch_of(job_service(request), request, body, who)
    return JsonAnswer({"batch_id": batch["id"], "jobs": [job_out(job) for job, _ in results]}, 201)


@router.get("/jobs", responses=answers())
async def list_jobs(
    request: Request,
    status: list[JobState] = Query(default=[]),
    queue: str | None = Query(None, pattern=QUEUE_OR_NOTHING, description="A queue name (empty: any queue)"),
    type: str | None = None,
    label: list[Annotated[str, StringConstraints(pattern=LABEL_FILTER)]] = Query(
        default=[], description="`name=value`: jobs with that label (all must match)"
    ),
    id_prefix: str | None = Query(None, pattern=ID_PREFIX, description="The id's first characters"),
    error: str | None = Query(
        None, min_length=1, max_length=MAX_ERROR_TEXT, description="Error text contains"
    ),
    payload: str | None = Query(None, max_length=MAX_PAYLOAD_FILTER, description=PAYLOAD_DOC),
    created_after: str | None = Query(None, pattern=TIMESTAMP, description=TIME_DOC),
    created_before: str | None = Query(None, pattern=TIMESTAMP, description=TIME_DOC),
    finished_after: str | None = Query(None, pattern=TIMESTAMP, description=TIME_DOC),
    finished_before: str | None = Query(None, pattern=TIMESTAMP, description=TIME_DOC),
    sort: str = Query(
        "-created_at",
        pattern=SORT_PATTERN,
        description=f"One of {', '.join(SORTS)}; `-` first for descending. Sorting by a time "
        "lists only the jobs that have it.",
    ),
    cursor: str | None = Query(None, max_length=200),
    limit: int = Query(50, ge=1, le=500),
    who: Principal = require("viewer"),
):
    found = JobFilter.checked(
        status=status,
        queue=queue,
        type=type,
        label=label,
        id_prefix=id_prefix,
        error=error,
        payload=payload,
        created_after=created_after,
        created_before=created_before,
        finished_after=finished_after,
        finished_before=finished_before,
    )
    async with request.app.state.sessions() as session:
        dialect = session.get_bind().dialect.name
        # Core rows, as in _load: listing 500 jobs built 500 ORM instances to read them once.
        rows = await read_page(session, found, dialect, sort, cursor, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return JsonAnswer(
        {
            "jobs": [job_out(record_of(j)) for j in rows],
            "next_cursor": encode_cursor(sort, rows[-1]) if more else None,
        }
    )


_TIMELINE = (
    select(JobEventRow.__table__)
    .where(JobEventRow.__table__.c.job_id == bindparam("job_id"))
    .order_by(JobEventRow.__table__.c.at, JobEventRow.__table__.c.id)
)


async def _read(session: AsyncSession, job_id: str) -> tuple[JobRecord, list[JobEventRow]]:
    """The job and its timeline as Core rows (read-only, same attribute names as the models):
    no ORM identity map or instance state for a read, the most frequent request there is."""
    if not JOB_ID.fullmatch(job_id):
        raise HTTPException(404, f"job {job_id[:40]!r} not found (ids are 26-character ULIDs)")
    job = await JobStore.get(session, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    # Core rows read by attribute like the model's instances (`e.type`, `e.at`, …).
    timeline = cast(list[JobEventRow], list(await session.execute(_TIMELINE, {"job_id": job_id})))
    return job, timeline


async def _load(request: Request, job_id: str) -> tuple[JobRecord, list[JobEventRow]]:
    async with request.app.state.sessions() as session:
        return await _read(session, job_id)


@router.get("/jobs/{job_id}", responses=answers(404))
async def get_job(job_id: str, request: Request, who: Principal = require("viewer")):
    state = request.app.state
    # One session, one snapshot: the row, its timeline, its inbox item, its family and what holds
    # it (open parents, its key's places) agree. The answer is built once it is closed: SQLite's
    # one connection is not held for that (nor for NATS, asked below for positions).
    ck: Checkpoint | None = None
    parents: list[tuple[JobRecord, str]] = []
    facts: dict[str, Any] = {}
    now = time.time()
    async with state.sessions() as session:
        job, timeline = await _read(session, job_id)
        asks = job.status in ("waiting", "needs_approval")  # a person decides: the inbox item
        if asks:
            ck = await session.scalar(
                select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.status == "pending")
            )
        if job.status == "blocked":
            parents = await gates.open_parents(session, job.id)
        elif job.status == "throttled":
            facts = await admission.facts(session, job, now)
        family = await gates.family(session, job.id)
    out = job_out(job, timeline)
    out.update(queue_position=None, eta_seconds=None, eta_range=None, waiting_reason=None)
    if asks:
        out["checkpoint"] = checkpoint_out(ck) if ck else None
    out["parents"], out["children"] = family
    if job.status in WAITING_STATES:
        try:
            if job.status == "blocked":
                out.update(await _blocked(state, parents))
            elif job.status == "throttled":
                out.update(throttled_reason(facts, now))
            else:
                out.update(await explain(job, timeline, state.queues, state.workers))
        except NatsError as exc:
            out["waiting_reason"] = {"code": "unknown", "message": f"NATS unavailable: {exc}", "evidence": {}}
    return JsonAnswer(out)


async def _blocked(state: State, parents: list[tuple[JobRecord, str]]) -> dict:
    """A blocked job's reason: its open parents, each with its own state, position and ETA."""
    seen = []
    for parent, _on in parents:
        about: dict = {}
        if parent.status == "queued":
            about = await explain(parent, [], state.queues, state.workers)
        seen.append((parent.id, parent.node, parent.status, about))
    return blocked_reason(seen)


@router.post("/jobs/{job_id}/cancel", responses=answers(404, 409))
async def cancel_job(
    job_id: str,
    request: Request,
    descendants: Literal["cascade", "leave"] = Query(
        "cascade", description="cascade: cancel what waits for it too; leave: let their edges decide"
    ),
    who: Principal = require("submitter"),
):
    job = await job_service(request).cancel(job_id, who, descendants)
    if who.at_least("admin"):  # an admin may act on anyone's job: that is on the record
        await audit.record(request, who, "job.cancel", job_id, owner=job.owner_id)
    return job_out(job)


@router.post("/jobs/{job_id}/retry", responses=answers(404, 409))
async def retry_job(
    job_id: str,
    request: Request,
    delay_s: float | None = Query(
        None, gt=0, le=366 * 86400, description="Run again no earlier than this many seconds from now"
    ),
    who: Principal = require("submitter"),
):
    job = await job_service(request).retry(job_id, who, delay_s)
    if who.at_least("admin"):
        await audit.record(request, who, "job.retry", job_id, owner=job.owner_id)
    return job_out(job)


@router.get("/jobs/{job_id}/logs", responses=answers(404))
async def job_logs(
    job_id: str,
    request: Request,
    after: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=10_000),
    who: Principal = require("viewer"),
):
    await _load(request, job_id)
    state = request.app.state
    lines = await read_logs(state.nc, state.topo, job_id, after, limit)
    return {"lines": lines, "next": lines[-1]["seq"] if lines else after}


@router.get(
    "/jobs/{job_id}/logs/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **answers(404)},
)
async def job_logs_stream(
    job_id: str, request: Request, after: int = Query(0, ge=0), who: Principal = require("viewer")
):
    await _load(request, job_id)
    state = request.app.state

    async def final_status() -> str | None:
        async with state.sessions() as session:
            status = await session.scalar(select(Job.status).where(Job.id == job_id))
        return status if status in FINAL_STATES else None

    return StreamingResponse(
        follow_logs(state.nc, state.topo, job_id, after, final_status),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

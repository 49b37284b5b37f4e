"""/api/v1/batches and /api/v1/workflows: work made of many jobs."""

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from taskyard_common.schemas import FINAL_STATES, JobState

from . import batches, workflows
from .api_doc import answers
from .auth import Principal, require
from .bulk import PAGE
from .failures import NotFound, Refused
from .ids import JOB_ID
from .input_checks import CheckedRoute
from .lifecycle import RETRYABLE_STATES
from .models import batches_table, jobs_table
from .routes_jobs import job_service
from .schemas import NODE_NAME, BatchCreate, WorkflowCreate
from .views import JsonAnswer, job_out

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)
_UNFINISHED = sorted(str(s) for s in set(JobState) - FINAL_STATES)


async def _batch(request: Request, batch_id: str) -> Any:
    row = None
    if JOB_ID.fullmatch(batch_id):
        async with request.app.state.sessions() as session:
            query = select(batches_table).where(batches_table.c.id == batch_id)
            row = (await session.execute(query)).first()
    if row is None:
        raise NotFound(f"batch {batch_id[:40]} not found")
    return row


async def _progress(request: Request, batch: Any) -> dict[str, Any]:
    state = request.app.state
    async with state.sessions() as session:
        by_status = await batches.counts(session, batch.id)
        failed = await batches.failures(session, batch.id)
        queue = await session.scalar(
            select(jobs_table.c.queue).where(jobs_table.c.batch_id == batch.id).limit(1)
        )
    out = batches.summary(batch, by_status, failed)
    left = out["total"] - out["done"]
    rate, _ = state.queues.rates(queue) if queue else (0.0, 0.0)
    out["eta_seconds"] = 0.0 if left == 0 else (round(left / rate, 1) if rate > 0 else None)
    return out


@router.post("/batches", status_code=201, responses=answers(409, 413))
async def create_batch(body: BatchCreate, request: Request, who: Principal = require("submitter")):
    """Submit jobs as a batch, with callbacks run once when the last member has ended."""
    batch, results = await batches.submit_batch_of(job_service(request), request, body, who)
    return JsonAnswer({"batch_id": batch["id"], "jobs": [job_out(job) for job, _ in results]}, 201)


@router.get("/batches/{batch_id}", responses=answers(404))
async def get_batch(batch_id: str, request: Request, who: Principal = require("viewer")):
    """Progress: counts by status, percent done, ETA, failures grouped by error with examples."""
    return JsonAnswer(await _progress(request, await _batch(request, batch_id)))


async def _each(request: Request, who: Principal, ids: list[str], action: str) -> dict[str, Any]:
    """Retry or cancel (`leave`: what waits for them follows its edges) many jobs, a page per
    transaction and one publish burst each (as bulk actions do), not one job at a time."""
    svc = job_service(request)
    moved: set[str] = set()
    for start in range(0, len(ids), PAGE):
        page = ids[start : start + PAGE]
        done = await (svc.retry_many(page, who) if action == "retry" else svc.cancel_many(page, who))
        moved.update(job.id for job in done)
    why = f"not {'retried' if action == 'retry' else 'cancelled'}: it moved meanwhile, or it is not yours"
    refused = [{"id": job_id, "reason": why} for job_id in ids if job_id not in moved]
    return {{"retry": "retried", "cancel": "cancelled"}[action]: len(moved), "refused": refused[:100]}


@router.post("/batches/{batch_id}/retry", responses=answers(403, 404))
async def retry_batch(batch_id: str, request: Request, who: Principal = require("submitter")):
    """Run the members that failed, died or were cancelled again (succeeded ones stay)."""
    batch = await _batch(request, batch_id)
    async with request.app.state.sessions() as session:
        failed = await batches.members(session, batch.id, sorted(RETRYABLE_STATES))
    return await _each(request, who, [job.id for job in failed], "retry")


@router.post("/batches/{batch_id}/cancel", responses=answers(403, 404))
async def cancel_batch(batch_id: str, request: Request, who: Principal = require("submitter")):
    batch = await _batch(request, batch_id)
    async with request.app.state.sessions() as session:
        open_ = await batches.members(session, batch.id, _UNFINISHED)
    return await _each(request, who, [job.id for job in open_], "cancel")


@router.post("/workflows", status_code=201, responses=answers(409, 413))
async def create_workflow(body: WorkflowCreate, request: Request, who: Principal = require("submitter")):
    """Store a DAG of jobs; nodes run as their `needs` succeed, with `inputs` from their results."""
    workflow_id = await workflows.create(job_service(request), body, who)
    async with request.app.state.sessions() as session:
        loaded = await workflows.load(session, workflow_id)
    return JsonAnswer(workflows.view(*loaded), 201)


@router.get("/workflows/{workflow_id}", responses=answers(404))
async def get_workflow(workflow_id: str, request: Request, who: Principal = require("viewer")):
    """Its status (derived from its nodes), counts, nodes with their state, and edges."""
    async with request.app.state.sessions() as session:
        loaded = await workflows.load(session, workflow_id)
    return JsonAnswer(workflows.view(*loaded))


@router.post("/workflows/{workflow_id}/cancel", responses=answers(403, 404))
async def cancel_workflow(workflow_id: str, request: Request, who: Principal = require("submitter")):
    async with request.app.state.sessions() as session:
        _, nodes, _ = await workflows.load(session, workflow_id)
    ids = [job.id for job in nodes if job.status not in FINAL_STATES]
    return await _each(request, who, ids, "cancel")


class NodeRetry(BaseModel):
    model_config = {"extra": "forbid"}
    node: str = Field(pattern=NODE_NAME, description="The node to run again (and what depends on it).")


@router.post("/workflows/{workflow_id}/retry", responses=answers(403, 404, 409))
async def retry_workflow_node(
    workflow_id: str, body: NodeRetry, request: Request, who: Principal = require("submitter")
):
    """Run a failed node again, and the nodes that depend on it; finished siblings stay. A map
    node runs its failed items again, and joins their results once they have ended."""
    async with request.app.state.sessions() as session:
        _, nodes, _ = await workflows.load(session, workflow_id)
    job = next((n for n in nodes if n.node == body.node), None)
    if job is None:
        raise NotFound(f"node: {body.node!r} is not a node of workflow {workflow_id}")
    if not job.is_map_node:
        return job_out(await job_service(request).retry(job.id, who))
    items = [n.id for n in nodes if (n.map or {}).get("of") == job.id and n.status in RETRYABLE_STATES]
    if not items:
        raise Refused(f"node: map node {body.node!r} has no failed, dead or cancelled item to retry")
    svc = job_service(request)
    async with request.app.state.sessions() as session:
        await svc.get_owned(session, job.id, who)  # 403 for another key's workflow
    await svc.retry_many(items, who)
    async with request.app.state.sessions() as session:
        return job_out(await svc.get_owned(session, job.id, who))

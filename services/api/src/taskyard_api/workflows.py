"""Workflows: a DAG of jobs (its nodes) stored in one transaction; its status derives from theirs."""

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskyard_common.schemas import FINAL_STATES

from .auth import Principal
from .failures import NotFound
from .http_metrics import WORK_CREATED
from .ids import JOB_ID, new_id
from .job_store import record_of
from .jobs import JobService
from .lifecycle import JobRecord
from .models import edges_table, jobs_table, workflows_table
from .plan import with_notify, workflow_items
from .schemas import WorkflowCreate, iso


async def create(svc: JobService, body: WorkflowCreate, who: Principal) -> str:
    """Check the whole DAG, then store the workflow and every node; returns its id."""
    now = time.time()
    row = {
        "id": new_id(now),
        "owner_id": who.id,
        "name": body.name,
        "on_failure": body.on_failure,
        "created_at": now,
        "finished_at": None,
    }
    items = with_notify(workflow_items(body.nodes), body.notify)
    await svc.submit(items, who, (workflows_table, row), workflow_id=row["id"])
    WORK_CREATED.labels("workflow").inc()
    return str(row["id"])


def status_of(nodes: list[JobRecord]) -> str:
    """running while any node may still run; else failed (a node failed), cancelled, succeeded
    (all did), or completed (the rest were skipped by `finished` edges' choices)."""
    statuses = {job.status for job in nodes}
    if statuses - FINAL_STATES:
        return "running"
    for outcome in ("failed", "dead", "cancelled"):
        if outcome in statuses:
            return "failed" if outcome == "dead" else outcome
    return "succeeded" if statuses == {"succeeded"} else "completed"


async def load(session: AsyncSession, workflow_id: str) -> tuple[Any, list[JobRecord], list[Any]]:
    row = None
    if JOB_ID.fullmatch(workflow_id):
        row = (
            await session.execute(select(workflows_table).where(workflows_table.c.id == workflow_id))
        ).first()
    if row is None:
        raise NotFound(f"workflow {workflow_id[:40]} not found")
    j, e = jobs_table.c, edges_table.c
    nodes = [
        record_of(r) for r in await session.execute(select(jobs_table).where(j.workflow_id == workflow_id))
    ]
    ids = [job.id for job in nodes]
    edges = list(await session.execute(select(edges_table).where(e.child_id.in_(ids)))) if ids else []
    return row, nodes, edges


def view(row: Any, nodes: list[JobRecord], edges: list[Any]) -> dict[str, Any]:
    name_of = {job.id: job.node for job in nodes}
    counts: dict[str, int] = {}
    for job in nodes:
        counts[job.status] = counts.get(job.status, 0) + 1
    return {
        "id": row.id,
        "name": row.name,
        "on_failure": row.on_failure,
        "status": status_of(nodes),
        "counts": counts,
        "created_at": iso(row.created_at),
        "nodes": [
            {
                "id": job.node,
                "job_id": job.id,
                "type": job.type,
                "status": job.status,
                "attempt": job.attempt,
                "error": job.error,
                "result": job.result,
                "started_at": iso(job.started_at),
                "finished_at": iso(job.finished_at),
                **({"map": job.map} if job.map else {}),
            }
            for job in sorted(nodes, key=lambda n: n.id)
        ],
        "edges": [
            {"from": name_of.get(edge.parent_id), "to": name_of.get(edge.child_id), "state": edge.state}
            for edge in edges
        ],
    }

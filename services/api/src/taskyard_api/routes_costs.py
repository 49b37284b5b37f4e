"""/api/v1/costs: what attempts used and spent, totalled by label, queue, type, batch or workflow;
the estimate of a batch before it runs; one job's attempts (docs/costs.md)."""

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from . import costs
from .api_doc import answers
from .auth import Principal, require
from .input_checks import CheckedRoute
from .models import costs_table, spend_table
from .schemas import JOB_TYPE, QUEUE, iso

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)


@router.get("/costs", responses=answers())
async def cost_totals(
    request: Request,
    since: str = Query(
        "7d",
        pattern=costs.SINCE,
        description="How far back: 30m, 24h, 7d, 2w; more than 0 and at most 400d (else a 422 `since: …`)",
    ),
    by: str = Query("queue", pattern=costs.BY, description=f"Group by {costs.BY_HELP}"),
    who: Principal = require("viewer"),
):
    """Totals over the attempts that ended within `since`, per group: attempts, jobs, CPU and wall
    seconds, the largest peak RSS, and the costs handlers reported (per unit and kind). A bad
    `since` or `by` is a 422 naming it."""
    seconds, grouping = costs.parse_since(since), costs.parse_by(by)
    async with request.app.state.sessions() as session:
        return await costs.totals(session, grouping, seconds)


@router.get("/costs/estimate", responses=answers())
async def cost_estimate(
    request: Request,
    type: str = Query(..., pattern=JOB_TYPE, description="The job type to estimate"),  # noqa: A002
    count: int = Query(1, ge=1, le=1_000_000, description="How many jobs"),
    queue: str | None = Query(None, pattern=QUEUE, description="Learn only from this queue's jobs"),
    who: Principal = require("viewer"),
):
    """What `count` jobs of `type` will likely use and cost, from the type's most recent jobs
    (every attempt counts, so retries are in it). No history: `basis.jobs` 0, figures null."""
    async with request.app.state.sessions() as session:
        return await costs.estimate(session, type, count, queue)


@router.get("/jobs/{job_id}/costs", responses=answers())
async def job_costs(job_id: str, request: Request, who: Principal = require("viewer")):
    """Each recorded attempt of the job (every generation): its outcome, usage and costs."""
    c, s = costs_table.c, spend_table.c
    async with request.app.state.sessions() as session:
        rows = (
            await session.execute(select(costs_table).where(c.job_id == job_id).order_by(c.at, c.key))
        ).all()
        spend = (
            await session.execute(
                select(spend_table).where(s.key.in_([row.key for row in rows])).order_by(s.unit, s.kind)
            )
        ).all()
    by_key: dict[int, list[dict]] = {}
    for item in spend:
        by_key.setdefault(item.key, []).append({"unit": item.unit, "kind": item.kind, "amount": item.amount})
    return {
        "job_id": job_id,
        "attempts": [
            {
                "generation": row.generation,
                "attempt": row.attempt,
                "outcome": row.outcome,
                "at": iso(row.at),
                "cpu_s": row.cpu_s,
                "wall_s": row.wall_s,
                "peak_rss_bytes": row.peak_rss_bytes,
                "measured": row.measured,
                "costs": by_key.get(row.key, []),
            }
            for row in rows
        ],
    }

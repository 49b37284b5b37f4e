"""The operator's console: one queue in detail, chart series from the rollups, bulk actions."""

from fastapi import APIRouter, Query, Request

from taskyard_common.topology import PRIORITIES, QUEUE_NAME

from . import audit, rollups
from .api_doc import answers
from .auth import Principal, require
from .bulk import BulkRequest, BulkService
from .failures import NotFound
from .input_checks import CheckedRoute
from .routes_jobs import job_service
from .routes_queues import QueueName, queue_rows
from .schemas import iso

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)
WINDOW = Query("1h", pattern=r"^(1h|24h|7d)$", description="1h (per minute), 24h (per 15 min), 7d (per 2 h)")


@router.get("/queues/{queue}", responses=answers(404))
async def get_queue(
    queue: str = QueueName,
    *,
    minutes: int = Query(60, ge=1, le=1440),
    request: Request,
    who: Principal = require("viewer"),
):
    """One queue as in GET /queues, plus its depth by priority per minute (`minutes` back)."""
    rows = await queue_rows(request, only=queue)
    if not rows:
        raise NotFound(f"queue {queue} not found (no job was ever submitted to it)")
    history = request.app.state.queues.history.of(queue, minutes)
    rows[0]["depth_history"] = [
        {"at": iso(minute * 60), **{p: depths.get(p, 0) for p in PRIORITIES}} for minute, depths in history
    ]
    return rows[0]


@router.get("/stats", responses=answers())
async def stats(
    request: Request,
    window: str = WINDOW,
    queue: str | None = Query(None, pattern=QUEUE_NAME.pattern),
    who: Principal = require("viewer"),
):
    """Throughput by outcome, queue wait p50/p95 and failures by error class, per bucket of the
    window, from the per-minute rollups the api keeps (all queues, or one)."""
    return await rollups.series(request.app.state.sessions, window, queue)


@router.post("/jobs:bulk", responses=answers(503))
async def bulk_action(body: BulkRequest, request: Request, who: Principal = require("admin")):
    """Retry, cancel or discard every job the filter matches (in the states the action applies
    to), in pages; `dry_run` only counts. The answer says how many matched and changed."""
    state = request.app.state
    if not body.dry_run and body.action != "discard":
        job_service(request)  # refuses while NATS is away: retry and cancel publish
    answer = await BulkService(state.sessions, state.jobs).run(body, who)
    if not body.dry_run:
        # Beside the `bulk_<action>` entry on each changed job's timeline: one line in the audit log.
        await audit.record(
            request,
            who,
            f"jobs.bulk_{body.action}",
            matched=answer["matched"],
            changed=answer["changed"],
            filter=body.filter.model_dump(mode="json", exclude_defaults=True),
        )
    return answer

"""/api/v1/queues, /api/v1/workers, /api/v1/doctor."""

from fastapi import APIRouter, HTTPException, Path, Request

from taskyard_common.topology import PRIORITIES, QUEUE_NAME

from . import audit, rollups
from .api_doc import answers
from .auth import Principal, require
from .doctor import run_checks
from .input_checks import CheckedRoute

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)
QueueName = Path(pattern=QUEUE_NAME.pattern, description="A queue name, as in a job's `queue`")
PAUSE_FOREVER = "2999-01-01T00:00:00Z"


async def queue_rows(request: Request, only: str | None = None) -> list[dict]:
    """What GET /queues says of each queue (or of `only`): depth, rates, workers, recent counts."""
    state = request.app.state
    if only is None:
        snaps = await state.queues.snapshot()  # one listing of every consumer, cached for ttl_s
    else:
        # Read after the request arrived: a queue whose first job came within the listing's ttl_s
        # is not in the cached listing yet, and "not found" would be false.
        one = await state.queues.queue_snapshot(only)
        snaps = {(only, priority): snap for priority, snap in one.items()}
    workers = await state.workers.workers()
    ages = dict(zip(snaps, await state.queues.oldest_ages_s(list(snaps.values())), strict=True))
    counts = await rollups.recent_counts(state.sessions)
    out = []
    for queue in sorted({q for q, _ in snaps}):
        out_rate, in_rate = state.queues.rates(queue)
        serving = [w for w in workers if queue in w.heartbeat.queues and w.live]
        priorities = {}
        for p in PRIORITIES:
            snap = snaps.get((queue, p))
            if snap is None:
                continue
            priorities[p] = {
                "depth": snap.num_pending,
                "running": snap.num_ack_pending,
                "oldest_waiting_s": round(ages[(queue, p)], 3),
                "live_pulls": snap.num_waiting,
                "redelivered": snap.num_redelivered,
            }
        out.append(
            {
                "queue": queue,
                "paused": any(s.paused for (q, _), s in snaps.items() if q == queue),
                "depth": sum(p["depth"] for p in priorities.values()),
                "running": sum(p["running"] for p in priorities.values()),
                "oldest_waiting_s": max((p["oldest_waiting_s"] for p in priorities.values()), default=0.0),
                "jobs_per_s_in": round(in_rate, 3),
                "jobs_per_s_out": round(out_rate, 3),
                "workers": [w.heartbeat.id for w in serving],
                "slots": sum(w.heartbeat.slots for w in serving),
                "slots_used": sum(len(w.heartbeat.running) for w in serving),
                "priorities": priorities,
                "counts": counts.get(queue) or rollups.empty_counts(),
            }
        )
    return out


@router.get("/queues", responses=answers())
async def list_queues(request: Request, who: Principal = require("viewer")):
    return {"queues": await queue_rows(request)}


async def set_paused(request: Request, queue: str, paused: bool) -> dict:
    state = request.app.state
    if not await state.queues.queue_snapshot(queue):
        raise HTTPException(404, f"queue {queue} not found (no job was ever submitted to it)")
    for p in PRIORITIES:
        durable = state.topo.exec_durable(queue, p)
        if paused:
            await state.js.pause_consumer(state.topo.jobs_stream, durable, PAUSE_FOREVER)
        else:
            await state.js.resume_consumer(state.topo.jobs_stream, durable)
    state.queues.invalidate()
    return {"queue": queue, "paused": paused}


# The pattern is checked before any NATS lookup: a non-name is never a consumer name NATS accepts.
@router.post("/queues/{queue}/pause", responses=answers(404))
async def pause_queue(queue: str = QueueName, *, request: Request, who: Principal = require("admin")):
    out = await set_paused(request, queue, True)
    await audit.record(request, who, "queue.pause", queue)
    return out


@router.post("/queues/{queue}/resume", responses=answers(404))
async def resume_queue(queue: str = QueueName, *, request: Request, who: Principal = require("admin")):
    out = await set_paused(request, queue, False)
    await audit.record(request, who, "queue.resume", queue)
    return out


@router.get("/workers", responses=answers())
async def list_workers(request: Request, who: Principal = require("viewer")):
    return {"workers": [w.to_dict() for w in await request.app.state.workers.workers()]}


@router.get("/doctor", responses=answers())
async def doctor(request: Request, who: Principal = require("admin")):
    checks = await run_checks(request.app.state)
    return {"ok": all(c["ok"] for c in checks), "checks": checks}

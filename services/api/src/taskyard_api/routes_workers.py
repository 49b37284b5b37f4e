"""Worker control and whole-install pauses (admin): drain or stop a worker, pause or resume every
queue. Each action is audited (audit.py)."""

from fastapi import APIRouter, Path, Request

from taskyard_common.topology import executor_consumers

from . import audit
from .api_doc import answers
from .auth import Principal, require
from .failures import NotFound, Refused
from .input_checks import CheckedRoute
from .routes_queues import set_paused

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)
# Worker ids become a NATS subject's tail: no spaces or wildcards (dots are a hostname's).
WorkerId = Path(pattern=r"^[A-Za-z0-9_.:-]{1,200}$", description="A worker id, as GET /workers lists it")


async def _control(request: Request, worker_id: str, mode: str, who: Principal) -> dict:
    """Tell a live worker to drain or stop (core NATS: only a live worker listens, so check first)."""
    state = request.app.state
    views = {w.heartbeat.id: w for w in await state.workers.workers(0)}
    view = views.get(worker_id)
    if view is None or view.state == "gone":
        raise NotFound(f"worker {worker_id} not found (or gone): GET /api/v1/workers lists the live ones")
    if view.state == "stale":
        raise Refused(
            f"worker {worker_id} is stale (no heartbeat for {view.age_s:.0f}s); it may not hear this"
        )
    await state.nc.publish(state.topo.drain_subject(worker_id), mode.encode())
    await state.nc.flush()
    await audit.record(request, who, f"worker.{mode}", worker_id, running=len(view.heartbeat.running))
    return {"worker": worker_id, "action": mode, "state_before": view.state}


@router.post(
    "/workers/{worker_id}/drain",
    status_code=202,
    responses=answers(404, 409),
    description="The worker stops pulling, lets running jobs finish within its drain grace "
    "(TASKYARD_EXECUTOR_DRAIN_GRACE_S), hands the rest back to their queues without spending an "
    "attempt, and exits. It shows `draining`, then `gone`.",
)
async def drain_worker(worker_id: str = WorkerId, *, request: Request, who: Principal = require("admin")):
    return await _control(request, worker_id, "drain", who)


@router.post(
    "/workers/{worker_id}/stop",
    status_code=202,
    responses=answers(404, 409),
    description="Like drain with no grace: running jobs are handed back at once (no attempt "
    "spent) and the worker exits.",
)
async def stop_worker(worker_id: str = WorkerId, *, request: Request, who: Principal = require("admin")):
    return await _control(request, worker_id, "stop", who)


async def _set_all(request: Request, paused: bool, who: Principal) -> dict:
    state = request.app.state
    queues = sorted({snap.queue for snap in await executor_consumers(state.js, state.topo)})
    for queue in queues:
        await set_paused(request, queue, paused)
    await audit.record(
        request, who, "queues.pause_all" if paused else "queues.resume_all", None, queues=queues
    )
    return {"queues": queues, "paused": paused}


@router.post(
    "/queues:pause",
    responses=answers(),
    description="Pause every existing queue (running jobs go on; none start). A queue created "
    "afterwards by its first submit is not paused.",
)
async def pause_all(request: Request, who: Principal = require("admin")):
    return await _set_all(request, True, who)


@router.post("/queues:resume", responses=answers(), description="Resume every queue.")
async def resume_all(request: Request, who: Principal = require("admin")):
    return await _set_all(request, False, who)

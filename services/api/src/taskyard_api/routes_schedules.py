"""/api/v1/schedules: create, list, read, change, pause/resume, trigger, delete, history."""

from fastapi import APIRouter, Query, Request, Response

from . import audit
from .api_doc import answers
from .auth import Principal, require
from .failures import Invalid, NotFound, TooLarge
from .input_checks import CheckedRoute
from .routes_jobs import job_service
from .schedule_schemas import ScheduleCreate, SchedulePatch
from .schedules import ScheduleService, schedule_out, valid_id
from .schemas import JobCreate
from .views import JsonAnswer, job_out

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)
HISTORY_DOC = "Fires in the answer's `recent_jobs`, newest first"


def _service(request: Request, schedule_id: str | None = None) -> ScheduleService:
    if schedule_id is not None and not valid_id(schedule_id):
        raise NotFound(f"schedule {schedule_id[:40]!r} not found (ids are 26-character ULIDs)")
    return request.app.state.schedules


async def _check_template(request: Request, template: JobCreate) -> None:
    """What a submit of the template would refuse, refused now (a 4xx naming `template.…`)."""
    state = request.app.state
    if template.notify and not state.settings.webhook_secret:
        raise Invalid("template.notify: this api has no TASKYARD_API_WEBHOOK_SECRET to sign webhooks with")
    if (size := template.payload_size()) > (limit := state.settings.max_payload_bytes):
        raise TooLarge(f"template.payload: {size} bytes exceeds the limit of {limit}")
    await state.artifacts.check_inputs([template], "template")
    if problems := await state.jobs.known_types.problems(template, "template."):
        raise Invalid("; ".join(problems))


async def _answer(svc: ScheduleService, row, history: int = 0) -> JsonAnswer:
    recent = await svc.history(row.id, history) if history else None
    return JsonAnswer(schedule_out(row, svc.clock(), recent))


async def _audit_if_admin(request: Request, who: Principal, action: str, row) -> None:
    if who.at_least("admin") and row.owner_id != who.id:  # someone else's schedule: on the record
        await audit.record(request, who, action, row.id, owner=row.owner_id)


@router.post("/schedules", status_code=201, responses=answers(413))
async def create_schedule(body: ScheduleCreate, request: Request, who: Principal = require("submitter")):
    """A schedule; the answer has its next 5 fire times (`next_fires`, in its time zone)."""
    svc = _service(request)
    await _check_template(request, body.template)
    row = await svc.create(body, who)
    answer = await _answer(svc, row)
    answer.status_code = 201
    return answer


@router.get("/schedules", responses=answers())
async def list_schedules(
    request: Request, limit: int = Query(200, ge=1, le=1000), who: Principal = require("viewer")
):
    svc = _service(request)
    now = svc.clock()
    return JsonAnswer({"schedules": [schedule_out(row, now) for row in await svc.listing(limit)]})


@router.get("/schedules/{schedule_id}", responses=answers(404))
async def get_schedule(
    schedule_id: str,
    request: Request,
    history: int = Query(20, ge=0, le=500, description=HISTORY_DOC),
    who: Principal = require("viewer"),
):
    svc = _service(request, schedule_id)
    return await _answer(svc, await svc.get(schedule_id), history)


@router.get("/schedules/{schedule_id}/jobs", responses=answers(404))
async def schedule_jobs(
    schedule_id: str,
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    who: Principal = require("viewer"),
):
    """The schedule's fires, newest first: fire time, outcome, the job it created and its status."""
    svc = _service(request, schedule_id)
    await svc.get(schedule_id)
    return JsonAnswer({"fires": await svc.history(schedule_id, limit)})


@router.patch("/schedules/{schedule_id}", responses=answers(404, 413))
async def patch_schedule(
    schedule_id: str, body: SchedulePatch, request: Request, who: Principal = require("submitter")
):
    svc = _service(request, schedule_id)
    if body.template is not None:
        await _check_template(request, body.template)
    row = await svc.update(schedule_id, who, body)
    await _audit_if_admin(request, who, "schedule.update", row)
    return await _answer(svc, row)


@router.post("/schedules/{schedule_id}/pause", responses=answers(404))
async def pause_schedule(schedule_id: str, request: Request, who: Principal = require("submitter")):
    svc = _service(request, schedule_id)
    row = await svc.pause(schedule_id, who, True)
    await _audit_if_admin(request, who, "schedule.pause", row)
    return await _answer(svc, row)


@router.post("/schedules/{schedule_id}/resume", responses=answers(404))
async def resume_schedule(schedule_id: str, request: Request, who: Principal = require("submitter")):
    """From the next fire time on: fire times that passed while paused are not caught up."""
    svc = _service(request, schedule_id)
    row = await svc.pause(schedule_id, who, False)
    await _audit_if_admin(request, who, "schedule.resume", row)
    return await _answer(svc, row)


@router.post("/schedules/{schedule_id}/trigger", status_code=201, responses=answers(404))
async def trigger_schedule(schedule_id: str, request: Request, who: Principal = require("submitter")):
    """Fire now (paused or not); the overlap policy applies. `job` is null when it skipped."""
    svc = _service(request, schedule_id)
    job_service(request)  # NATS away: refuse before anything is written
    fired = await svc.trigger(schedule_id, who)
    job = fired.pop("job")
    fired["job"] = job_out(job) if job is not None else None
    return JsonAnswer(fired, 201)


@router.delete("/schedules/{schedule_id}", status_code=204, responses=answers(404))
async def delete_schedule(schedule_id: str, request: Request, who: Principal = require("submitter")):
    """The schedule and its fire history; the jobs it created stay."""
    svc = _service(request, schedule_id)
    row = await svc.get(schedule_id)
    await svc.delete(schedule_id, who)
    await _audit_if_admin(request, who, "schedule.delete", row)
    return Response(status_code=204)

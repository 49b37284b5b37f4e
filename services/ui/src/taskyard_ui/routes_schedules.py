"""Schedules: the list with their next fire times, one schedule with its history, and the
pause / resume / trigger buttons (plain forms, no script needed)."""

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError
from .web import JOB_ID, api_for, render, whoami

router = APIRouter()
ACTIONS = ("pause", "resume", "trigger")
NOTICES = {
    "pause": "Paused: it does not fire until resumed.",
    "resume": "Resumed: it fires again from its next fire time.",
    "trigger": "Fired.",
}


def _check(schedule_id: str) -> None:
    if not JOB_ID.match(schedule_id):
        raise ApiError(404, f"no schedule {schedule_id[:40]!r}")


def _notice(request: Request) -> str | None:
    done = request.query_params.get("done", "")
    if done == "skipped":
        return "Not fired: " + request.query_params.get("why", "the overlap policy skipped it")[:300]
    return NOTICES.get(done)


@router.get("/schedules", response_class=HTMLResponse)
async def schedules(request: Request, api: ApiClient = Depends(api_for)):
    who = await whoami(request, api)
    found = await api.schedules()
    return render(
        request, "schedules.html", active="schedules", schedules=found, who=who, notice=_notice(request)
    )


@router.get("/schedules/{schedule_id}", response_class=HTMLResponse)
async def schedule(request: Request, schedule_id: str, api: ApiClient = Depends(api_for)):
    _check(schedule_id)
    who = await whoami(request, api)
    s = await api.schedule(schedule_id)
    return render(request, "schedule.html", active="schedules", s=s, who=who, notice=_notice(request))


@router.post("/schedules/{schedule_id}/{action}")
async def act(
    request: Request, schedule_id: str, action: str, back: str = Form(""), api: ApiClient = Depends(api_for)
) -> Response:
    """Pause, resume or fire now; back to the page the button was on, saying what happened."""
    _check(schedule_id)
    if action not in ACTIONS:
        raise ApiError(404, f"no such action {action!r}")
    answer = await api.schedule_action(schedule_id, action)
    page = f"/schedules/{schedule_id}" if back == "detail" else "/schedules"
    if action == "trigger" and answer.get("outcome") != "created":
        return RedirectResponse(
            f"{page}?{urlencode({'done': 'skipped', 'why': answer.get('reason') or ''})}", 303
        )
    return RedirectResponse(f"{page}?done={action}", status_code=303)

"""Admin controls: drain or stop a worker, pause or resume every queue (each behind a
confirmation page, no script needed), and the audit log page."""

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError
from .web import api_for, render, whoami

router = APIRouter()
WORKER_ACTIONS = {
    "drain": "Drain: it takes no new jobs, lets running ones finish within its grace period, hands "
    "back the rest to their queues (no attempt is spent) and exits.",
    "stop": "Stop: its running jobs go back to their queues at once (no attempt is spent) and it exits.",
}
QUEUE_ACTIONS = {
    "pause": "Pause every queue: running jobs go on, no new job starts until the queues are resumed.",
    "resume": "Resume every queue: jobs start again.",
}


def _refused(request: Request, title: str, err: ApiError) -> HTMLResponse:
    return render(request, "error.html", err.status, title=title, detail=err.detail)


@router.get("/workers/{worker_id}/{action}", response_class=HTMLResponse)
async def confirm_worker(request: Request, worker_id: str, action: str, api: ApiClient = Depends(api_for)):
    if action not in WORKER_ACTIONS:
        return render(request, "error.html", 404, title="Not found", detail=f"no worker action {action!r}")
    await whoami(request, api)
    worker = next((w for w in await api.workers() if w["id"] == worker_id), None)
    return render(
        request,
        "confirm.html",
        active="workers",
        title=f"{action.capitalize()} worker {worker_id}?",
        explain=WORKER_ACTIONS[action],
        running=(worker or {}).get("running") or [],
        action_url=f"/workers/{worker_id}/{action}",
        button=f"{action.capitalize()} {worker_id}",
        back="/workers",
    )


@router.post("/workers/{worker_id}/{action}")
async def control_worker(
    request: Request, worker_id: str, action: str, confirm: str = Form(""), api: ApiClient = Depends(api_for)
) -> Response:
    if action not in WORKER_ACTIONS or confirm != "yes":
        return RedirectResponse(f"/workers/{worker_id}/{action}", status_code=303)
    try:
        await api.control_worker(worker_id, action)
    except ApiError as err:
        return _refused(request, f"Could not {action} worker {worker_id}", err)
    return RedirectResponse(f"/workers?done={action}", status_code=303)


@router.get("/control/queues/{action}", response_class=HTMLResponse)
async def confirm_queues(request: Request, action: str, api: ApiClient = Depends(api_for)):
    if action not in QUEUE_ACTIONS:
        return render(request, "error.html", 404, title="Not found", detail=f"no queue action {action!r}")
    await whoami(request, api)
    return render(
        request,
        "confirm.html",
        active="workers",
        title=f"{action.capitalize()} all queues?",
        explain=QUEUE_ACTIONS[action],
        running=[],
        action_url=f"/control/queues/{action}",
        button=f"{action.capitalize()} all queues",
        back="/workers",
    )


@router.post("/control/queues/{action}")
async def control_queues(
    request: Request, action: str, confirm: str = Form(""), api: ApiClient = Depends(api_for)
) -> Response:
    if action not in QUEUE_ACTIONS or confirm != "yes":
        return RedirectResponse(f"/control/queues/{action}", status_code=303)
    try:
        done = await api.pause_all(action == "pause")
    except ApiError as err:
        return _refused(request, f"Could not {action} the queues", err)
    return RedirectResponse(f"/workers?done={action}d-{len(done['queues'])}", status_code=303)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request,
    actor: str = Query("", max_length=100),
    action: str = Query("", max_length=64),
    outcome: str = Query("", pattern="^(|ok|refused)$"),
    cursor: str = Query("", pattern="^[0-9]{0,18}$"),
    api: ApiClient = Depends(api_for),
):
    await whoami(request, api)
    params: list[tuple[str, str]] = [("limit", "100")]
    params += [
        (k, v)
        for k, v in (("actor", actor), ("action", action), ("outcome", outcome), ("cursor", cursor))
        if v
    ]
    try:
        page: dict[str, Any] = await api.audit(params)
    except ApiError as err:
        return _refused(request, "The audit log is for admins", err)
    return render(
        request,
        "audit.html",
        active="audit",
        events=page["events"],
        filters={"actor": actor, "action": action, "outcome": outcome},
        older=urlencode({"actor": actor, "action": action, "outcome": outcome, "cursor": page["next_cursor"]})
        if page.get("next_cursor")
        else None,
    )

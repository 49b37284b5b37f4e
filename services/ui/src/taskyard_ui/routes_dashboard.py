"""The dashboard (charts, queues, workers, approvals, failures), its live parts, and queue pause/resume."""

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError
from .charts import hour_charts
from .live import live_client, live_response
from .web import api_for, digest, iso_utc, parse_ts, render, render_fragment, safe_next, whoami

router = APIRouter()

LATEST = 10
FAILURES = 8
APPROVALS = 8
# The charts read finished jobs of the last hour from the jobs list, newest first, at most this many
# (CHART_PAGES × CHART_PAGE_SIZE): on a very busy install they cover a shorter span, and say so.
CHART_PAGE_SIZE = 500
CHART_PAGES = 2
HOUR = 3600
# What the "run an example job" button submits (the executor's shell payload: `command` as argv).
EXAMPLE_JOB = {
    "type": "shell",
    "payload": {"command": ["echo", "hello from taskyard"]},
    "labels": {"source": "ui-example"},
}
NOTICES = {
    "paused": "Queue paused: its jobs stay queued until it is resumed.",
    "resumed": "Queue resumed.",
}


async def _chart_jobs(api: ApiClient, since: float) -> tuple[list[dict], bool]:
    """Finished jobs created since `since`, newest first, capped; True when the cap cut it short."""
    params = [
        ("status", "succeeded"),
        ("status", "failed"),
        ("status", "dead"),
        ("created_after", iso_utc(since)),
        ("limit", str(CHART_PAGE_SIZE)),
    ]
    jobs: list[dict] = []
    cursor = None
    for _ in range(CHART_PAGES):
        page = await api.list_jobs(params + ([("cursor", cursor)] if cursor else []))
        jobs.extend(page["jobs"])
        cursor = page.get("next_cursor")
        if not cursor:
            return jobs, False
    return jobs, True


async def _live_parts(api: ApiClient) -> dict[str, Any]:
    """Queues, workers and pending approvals: the parts of the dashboard that refresh live."""
    queues, workers, checkpoints = await asyncio.gather(
        api.queues(), api.workers(), api.checkpoints([("status", "pending"), ("limit", str(APPROVALS))])
    )
    return {"queues": queues, "workers": workers, "checkpoints": checkpoints}


def _fragments(parts: dict[str, Any], who: dict) -> dict[str, str]:
    ctx = {**parts, "who": who}
    return {
        "dash-queues": render_fragment("_dash_queues.html", **ctx),
        "dash-workers": render_fragment("_dash_workers.html", **ctx),
        "dash-approvals": render_fragment("_dash_approvals.html", **ctx),
    }


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, api: ApiClient = Depends(api_for)):
    """Throughput and failures over the last hour, queues, workers, approvals, recent failures."""
    now = time.time()
    who, latest, failures, parts, (chart_jobs, capped) = await asyncio.gather(
        whoami(request, api),
        api.list_jobs([("limit", str(LATEST))]),
        api.list_jobs([("status", "failed"), ("status", "dead"), ("limit", str(FAILURES))]),
        _live_parts(api),
        _chart_jobs(api, now - HOUR),
    )
    # Whole minutes: 60 bars, the last one the minute now running.
    end = (now // 60 + 1) * 60
    start = end - HOUR
    if capped and chart_jobs:
        # Only the newest jobs were read: start the charts at the oldest of them, not an hour ago.
        oldest = parse_ts(min(j["created_at"] for j in chart_jobs)) or start
        start = max(start, oldest // 60 * 60)
    throughput, failed = hour_charts(chart_jobs, start, end)
    fragments = _fragments(parts, who)
    return render(
        request,
        "dashboard.html",
        active="dashboard",
        latest=latest["jobs"],
        failures=failures["jobs"],
        charts=(throughput, failed),
        capped=capped,
        chart_cap=CHART_PAGES * CHART_PAGE_SIZE,
        fragments=fragments,
        live_hash=digest(fragments),
        notice=NOTICES.get(request.query_params.get("done", "")),
        example=EXAMPLE_JOB,
    )


@router.get("/live/dashboard")
async def dashboard_live(request: Request) -> Response:
    api = live_client(request)
    if isinstance(api, Response):
        return api

    async def produce() -> dict[str, Any]:
        who = await whoami(request, api)
        return {"fragments": _fragments(await _live_parts(api), who)}

    return live_response(request, produce)


@router.post("/examples/shell")
async def submit_example(request: Request, api: ApiClient = Depends(api_for)) -> Response:
    """Submit the example shell job and show it."""
    try:
        job = await api.submit(EXAMPLE_JOB)
    except ApiError as err:
        return render(
            request, "error.html", err.status, title="Could not submit the example job", detail=err.detail
        )
    return RedirectResponse(f"/jobs/{job['id']}?done=submitted", status_code=303)


@router.post("/queues/{queue}/{action}")
async def pause_resume(
    request: Request, queue: str, action: str, back: str = Form("/"), api: ApiClient = Depends(api_for)
) -> Response:
    """Pause or resume a queue (admin); back to the page the button was on."""
    if action not in ("pause", "resume"):
        raise ApiError(404, f"no such queue action {action!r}")
    try:
        await api.set_paused(queue, action == "pause")
    except ApiError as err:
        title = f"Could not {action} queue {queue}"
        return render(request, "error.html", err.status, title=title, detail=err.detail)
    target = safe_next(back).split("?", 1)[0]
    return RedirectResponse(f"{target}?done={action}d", status_code=303)

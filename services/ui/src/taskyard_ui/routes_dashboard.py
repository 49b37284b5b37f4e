"""The dashboard (charts, queues, workers, approvals, failures), its live parts, and queue pause/resume."""

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError
from .charts import stats_charts
from .costs_view import COST_BY, DEFAULT_BY, cached, cost_by, cost_view
from .live import live_client, live_response
from .web import api_for, digest, render, render_fragment, safe_next, whoami

router = APIRouter()

LATEST = 10
FAILURES = 8
APPROVALS = 8
# Chart windows (the API's rollups): label of each.
WINDOWS = {"1h": "1 hour", "24h": "24 hours", "7d": "7 days"}
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


def _window(value: str) -> str:
    return value if value in WINDOWS else "1h"


async def _live_parts(api: ApiClient, window: str, by: str = DEFAULT_BY) -> dict[str, Any]:
    """Charts, queues, workers, pending approvals and costs: the parts of the dashboard that refresh live."""
    queues, workers, checkpoints, stats, costs = await asyncio.gather(
        api.queues(),
        api.workers(),
        api.checkpoints([("status", "pending"), ("limit", str(APPROVALS))]),
        api.stats(window),
        cached(window, by, api.costs),  # the chart windows (1h, 24h, 7d) are valid `since` values
    )
    return {
        "queues": queues,
        "workers": workers,
        "checkpoints": checkpoints,
        "stats": stats,
        "cost": cost_view(costs, by),
        "window": window,
    }


def _fragments(parts: dict[str, Any], who: dict) -> dict[str, str]:
    ctx = {**parts, "who": who}
    charts = stats_charts(parts["stats"])
    return {
        "dash-charts": render_fragment("_charts.html", charts=charts, stats=parts["stats"], chart_id="chart"),
        "dash-queues": render_fragment("_dash_queues.html", **ctx),
        "dash-workers": render_fragment("_dash_workers.html", **ctx),
        "dash-approvals": render_fragment("_dash_approvals.html", **ctx),
        "dash-cost": render_fragment("_dash_cost.html", **ctx),
    }


@router.get("/", response_class=HTMLResponse)
async def dashboard(
    request: Request, window: str = "1h", cost: str = DEFAULT_BY, api: ApiClient = Depends(api_for)
):
    """Live charts (1 h / 24 h / 7 d), queues, workers, approvals, costs, recent failures."""
    window, by = _window(window), cost_by(cost)
    who, latest, failures, parts = await asyncio.gather(
        whoami(request, api),
        api.list_jobs([("limit", str(LATEST))]),
        api.list_jobs([("status", "failed"), ("status", "dead"), ("limit", str(FAILURES))]),
        _live_parts(api, window, by),
    )
    fragments = _fragments(parts, who)
    return render(
        request,
        "dashboard.html",
        active="dashboard",
        latest=latest["jobs"],
        failures=failures["jobs"],
        window=window,
        windows=WINDOWS,
        cost_by=by,
        cost_choices=COST_BY,
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

    window = _window(request.query_params.get("window", "1h"))
    by = cost_by(request.query_params.get("cost"))

    async def produce() -> dict[str, Any]:
        who = await whoami(request, api)
        return {"fragments": _fragments(await _live_parts(api, window, by), who)}

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

"""Operator pages: one queue (live), API keys, and bulk actions by filter (count, confirm, run)."""

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError
from .charts import add_layer, counts_chart, stats_charts
from .live import live_client, live_response
from .web import api_for, digest, parse_ts, render, render_fragment, whoami

router = APIRouter()
DEAD_SHOWN = 20
ROLES = ("viewer", "submitter", "admin")
BULK_ACTIONS = {"retry": "Retry", "cancel": "Cancel", "discard": "Discard"}
# The filter fields a bulk action carries from the jobs page (the API checks each of them).
FILTER_FIELDS = (
    "status",
    "queue",
    "type",
    "label",
    "id_prefix",
    "error",
    "payload",
    "created_after",
    "created_before",
    "finished_after",
    "finished_before",
)
LIST_FIELDS = ("status", "label")


def _depth_chart(queue: dict) -> Any:
    """Depth per minute stacked by priority (high on top); the table gives each one's latest depth."""
    points = queue.get("depth_history") or []
    counts = [p["high"] + p["normal"] + p["low"] for p in points]
    start = parse_ts(points[0]["at"]) if points else 0.0
    chart = counts_chart("Waiting jobs", ("job", "jobs"), counts, start or 0.0, 60, "bar-high")
    chart.name = "high"
    add_layer(chart, "normal", [p["normal"] + p["low"] for p in points], "bar-normal", says="normal + low")
    add_layer(chart, "low", [p["low"] for p in points], "bar-low")
    chart.total = counts[-1] if counts else 0
    chart.summary = (
        f"Depth each minute for the last {len(points)} min, all priorities; peak {max(counts):,}."
        if counts
        else "No depth samples yet (the API samples each queue every few seconds)."
    )
    return chart


async def _queue_parts(api: ApiClient, name: str, window: str) -> dict[str, Any]:
    queue, stats, dead = await asyncio.gather(
        api.queue(name, 60),
        api.stats(window, name),
        api.list_jobs([("queue", name), ("status", "dead"), ("limit", str(DEAD_SHOWN))]),
    )
    return {"q": queue, "stats": stats, "dead": dead["jobs"], "window": window}


def _queue_fragments(parts: dict[str, Any], who: dict) -> dict[str, str]:
    ctx = {**parts, "who": who, "admin": who.get("role") == "admin"}
    return {
        "queue-summary": render_fragment("_queue_summary.html", **ctx, depth=_depth_chart(parts["q"])),
        "queue-charts": render_fragment(
            "_charts.html", charts=stats_charts(parts["stats"]), stats=parts["stats"], chart_id="qchart"
        ),
        "queue-dead": render_fragment("_queue_dead.html", **ctx),
    }


def _window(value: str) -> str:
    return value if value in ("1h", "24h", "7d") else "1h"


@router.get("/queues", response_class=HTMLResponse)
async def queues_page(request: Request, api: ApiClient = Depends(api_for)):
    who = await whoami(request, api)
    queues = await api.queues()
    return render(request, "queues.html", active="queues", queues=queues, who=who)


@router.get("/queues/{name}", response_class=HTMLResponse)
async def queue_page(request: Request, name: str, window: str = "1h", api: ApiClient = Depends(api_for)):
    """One queue: depth over time, rates, counts, workers and slots, charts, its dead jobs, controls."""
    who = await whoami(request, api)
    window = _window(window)
    fragments = _queue_fragments(await _queue_parts(api, name, window), who)
    return render(
        request,
        "queue.html",
        active="queues",
        queue_name=name,
        window=window,
        fragments=fragments,
        live_hash=digest(fragments),
        admin=who.get("role") == "admin",
        notice={"paused": "Queue paused.", "resumed": "Queue resumed."}.get(
            request.query_params.get("done", "")
        ),
    )


@router.get("/live/queues/{name}")
async def queue_live(request: Request, name: str) -> Response:
    api = live_client(request)
    if isinstance(api, Response):
        return api
    window = _window(request.query_params.get("window", "1h"))

    async def produce() -> dict[str, Any]:
        who = await whoami(request, api)
        return {"fragments": _queue_fragments(await _queue_parts(api, name, window), who)}

    return live_response(request, produce)


# --- keys ---------------------------------------------------------------------------------------


@router.get("/keys", response_class=HTMLResponse)
async def keys_page(request: Request, api: ApiClient = Depends(api_for)):
    """API keys (admins): create one (shown once), list, revoke."""
    await whoami(request, api)
    keys = await api.keys()
    done = request.query_params.get("done", "")
    notice = {"revoked": "Key revoked: requests with it are refused from now on."}.get(done)
    return render(request, "keys.html", active="keys", keys=keys, roles=ROLES, notice=notice, created=None)


@router.post("/keys", response_class=HTMLResponse)
async def keys_create(
    request: Request, name: str = Form(""), role: str = Form("viewer"), api: ApiClient = Depends(api_for)
):
    await whoami(request, api)
    error = None
    created = None
    try:
        created = await api.create_key(name.strip(), role)
    except ApiError as err:
        if err.status != 422:
            raise
        error = err.detail
    keys = await api.keys()
    return render(
        request,
        "keys.html",
        422 if error else 201,
        active="keys",
        keys=keys,
        roles=ROLES,
        created=created,
        error=error,
        form={"name": name, "role": role},
    )


@router.post("/keys/{key_id}/revoke")
async def keys_revoke(request: Request, key_id: str, api: ApiClient = Depends(api_for)) -> Response:
    await api.revoke_key(key_id)
    return RedirectResponse("/keys?done=revoked", status_code=303)


# --- bulk actions by filter ---------------------------------------------------------------------


def filter_of(form: dict[str, list[str]]) -> dict[str, Any]:
    """The API filter from form fields (f_<name>), empty ones left out."""
    out: dict[str, Any] = {}
    for name in FILTER_FIELDS:
        values = [v for v in form.get(f"f_{name}", []) if v.strip()]
        if values:
            out[name] = values if name in LIST_FIELDS else values[0]
    return out


def describe_filter(flt: dict[str, Any]) -> str:
    words = {
        "status": "status",
        "queue": "queue",
        "type": "type",
        "label": "label",
        "id_prefix": "id starting",
        "error": "error containing",
        "payload": "payload containing",
        "created_after": "created after",
        "created_before": "created before",
        "finished_after": "finished after",
        "finished_before": "finished before",
    }
    parts = []
    for key, value in flt.items():
        shown = " or ".join(value) if isinstance(value, list) else value
        parts.append(f"{words.get(key, key)} {shown}")
    return ", ".join(parts) or "every job"


@router.post("/bulk", response_class=HTMLResponse)
async def bulk_by_filter(request: Request, api: ApiClient = Depends(api_for)) -> Response:
    """Step 1 (`confirm` absent): count with a dry run and ask. Step 2: run it, show what changed."""
    await whoami(request, api)
    form = await request.form()
    fields = {k: [str(v) for v in form.getlist(k)] for k in form.keys()}
    action = (fields.get("action") or [""])[0]
    back = (fields.get("back") or ["/jobs"])[0]
    back = back if back.startswith("/") and not back.startswith("//") else "/jobs"
    if action not in BULK_ACTIONS:
        raise ApiError(422, f"action: one of {', '.join(BULK_ACTIONS)}, not {action!r}")
    flt = filter_of(fields)
    confirmed = (fields.get("confirm") or [""])[0] == "yes"
    try:
        answer = await api.bulk(action, flt, dry_run=not confirmed)
    except ApiError as err:
        if err.status != 422:
            raise
        return render(request, "error.html", 422, title="Bulk action refused", detail=err.detail)
    return render(
        request,
        "bulk.html",
        active="jobs",
        action=action,
        verb=BULK_ACTIONS[action],
        answer=answer,
        confirmed=confirmed,
        flt=flt,
        described=describe_filter(flt),
        back=back,
        list_url=back,
    )

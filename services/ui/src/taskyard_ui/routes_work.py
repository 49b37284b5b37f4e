"""Work made of many jobs: the workflow page (its DAG drawn live) and the batch page (progress,
failures grouped by error, retry of the failed). The API has no list of workflows or batches yet:
these pages are reached from a member job's page (or by their URL, which the CLI prints)."""

from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError
from .dag import layout
from .live import live_client, live_response
from .web import JOB_ID, api_for, digest, render, render_fragment, whoami

router = APIRouter()

WORKFLOW_FINAL = frozenset({"succeeded", "failed", "cancelled", "completed"})
RETRYABLE = ("failed", "dead", "cancelled")
NOT_SUCCEEDED = ("failed", "dead", "cancelled", "skipped")
# Counts shown in this order (then any other status the API may add).
COUNT_ORDER = ("succeeded", *NOT_SUCCEEDED, "running", "retrying", "waiting", "queued", "blocked")
# Fixed notices after a redirect: chosen by code, so a crafted link cannot put text on the page.
NOTICES = {
    "retried": "The failed jobs were queued again.",
    "cancelled": "Cancellation requested.",
    "node": "The node was queued again, with the nodes that depend on it.",
}


def may_act(who: dict | None) -> bool:
    """Retry and cancel need a submitter key (the API checks again, and owns the final word)."""
    return who is not None and who.get("role") in ("submitter", "admin")


def ordered_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    known = [(s, counts[s]) for s in COUNT_ORDER if counts.get(s)]
    return known + sorted((s, n) for s, n in counts.items() if s not in COUNT_ORDER and n)


def _check(item_id: str, what: str) -> None:
    if not JOB_ID.match(item_id):
        raise ApiError(404, f"no {what} {item_id!r}")


# Workflows


def workflow_fragments(workflow: dict, who: dict | None) -> dict[str, str]:
    ctx = {
        "wf": workflow,
        "dag": layout(workflow),
        "counts": ordered_counts(workflow.get("counts") or {}),
        "may_act": may_act(who),
        "final": workflow.get("status") in WORKFLOW_FINAL,
        "RETRYABLE": RETRYABLE,
    }
    return {
        "wf-badge": render_fragment("_wf_badge.html", **ctx),
        "wf-live": render_fragment("_workflow_live.html", **ctx),
    }


async def _workflow_page(
    request: Request, api: ApiClient, workflow_id: str, status: int = 200, error: str | None = None
) -> Response:
    _check(workflow_id, "workflow")
    who = await whoami(request, api)
    workflow = await api.workflow(workflow_id)
    fragments = workflow_fragments(workflow, who)
    notice = NOTICES.get(request.query_params.get("done", "")) if error is None else None
    return render(
        request,
        "workflow.html",
        status,
        active="jobs",
        wf=workflow,
        fragments=fragments,
        live_hash=digest(fragments),
        final=workflow.get("status") in WORKFLOW_FINAL,
        notice=notice,
        error=error,
    )


@router.get("/workflows/{workflow_id}", response_class=HTMLResponse)
async def workflow_page(request: Request, workflow_id: str, api: ApiClient = Depends(api_for)):
    """A workflow: its status, counts, and its DAG with every node coloured by state."""
    return await _workflow_page(request, api, workflow_id)


@router.get("/workflows/{workflow_id}/live")
async def workflow_live(request: Request, workflow_id: str) -> Response:
    api = live_client(request)
    if isinstance(api, Response):
        return api
    _check(workflow_id, "workflow")
    seen: dict[str, Any] = {"status": None}

    async def produce() -> dict[str, Any]:
        workflow = await api.workflow(workflow_id)
        who = await whoami(request, api)
        status = workflow.get("status")
        update: dict[str, Any] = {
            "fragments": workflow_fragments(workflow, who),
            "done": status in WORKFLOW_FINAL,
        }
        if seen["status"] is not None and status != seen["status"]:
            update["announce"] = f"Workflow is {status}."
        seen["status"] = status
        return update

    return live_response(request, produce)


@router.post("/workflows/{workflow_id}/cancel")
async def workflow_cancel(request: Request, workflow_id: str, api: ApiClient = Depends(api_for)):
    _check(workflow_id, "workflow")
    await api.cancel_workflow(workflow_id)
    return RedirectResponse(f"/workflows/{workflow_id}?done=cancelled", status_code=303)


@router.post("/workflows/{workflow_id}/retry")
async def workflow_retry(
    request: Request, workflow_id: str, node: str = Form(""), api: ApiClient = Depends(api_for)
) -> Response:
    _check(workflow_id, "workflow")
    try:
        await api.retry_node(workflow_id, node)
    except ApiError as err:
        if err.status == 404 and not node:
            raise
        return await _workflow_page(request, api, workflow_id, err.status, f"Could not retry: {err.detail}")
    return RedirectResponse(f"/workflows/{workflow_id}?done=node", status_code=303)


# Batches


def batch_fragments(batch: dict, who: dict | None) -> dict[str, str]:
    counts = batch.get("counts") or {}
    total = max(1, int(batch.get("total") or 0))
    # The bar's segments, as percentages of the whole: succeeded, did not succeed, still running.
    segments = [
        ("succeeded", counts.get("succeeded", 0)),
        ("failed", sum(counts.get(s, 0) for s in NOT_SUCCEEDED)),
        ("running", counts.get("running", 0) + counts.get("retrying", 0) + counts.get("waiting", 0)),
    ]
    bar, left = [], 0.0
    for kind, n in segments:
        width = 100.0 * n / total
        bar.append({"kind": kind, "x": round(left, 3), "w": round(width, 3), "n": n})
        left += width
    ctx = {
        "batch": batch,
        "bar": bar,
        "counts": ordered_counts(counts),
        "retryable": sum(counts.get(s, 0) for s in RETRYABLE),
        "may_act": may_act(who),
        "final": batch.get("done", 0) >= batch.get("total", 0),
    }
    return {
        "batch-badge": render_fragment("_batch_badge.html", **ctx),
        "batch-live": render_fragment("_batch_live.html", **ctx),
    }


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
async def batch_page(request: Request, batch_id: str, api: ApiClient = Depends(api_for)):
    """A batch: a progress bar, counts by status, failures grouped by error, retry of the failed."""
    _check(batch_id, "batch")
    who = await whoami(request, api)
    batch = await api.batch(batch_id)
    fragments = batch_fragments(batch, who)
    return render(
        request,
        "batch.html",
        active="jobs",
        batch=batch,
        fragments=fragments,
        live_hash=digest(fragments),
        final=batch.get("done", 0) >= batch.get("total", 0),
        notice=NOTICES.get(request.query_params.get("done", "")),
    )


@router.get("/batches/{batch_id}/live")
async def batch_live(request: Request, batch_id: str) -> Response:
    api = live_client(request)
    if isinstance(api, Response):
        return api
    _check(batch_id, "batch")

    async def produce() -> dict[str, Any]:
        batch = await api.batch(batch_id)
        who = await whoami(request, api)
        done = batch.get("done", 0) >= batch.get("total", 0)
        update: dict[str, Any] = {"fragments": batch_fragments(batch, who), "done": done}
        if done:
            update["announce"] = "Every job of the batch has ended."
        return update

    return live_response(request, produce)


@router.post("/batches/{batch_id}/retry")
async def batch_retry(request: Request, batch_id: str, api: ApiClient = Depends(api_for)) -> Response:
    """Run the batch's failed, dead and cancelled jobs again (a 403 for viewers comes from the API)."""
    _check(batch_id, "batch")
    await api.retry_batch(batch_id)
    return RedirectResponse(f"/batches/{batch_id}?done=retried", status_code=303)

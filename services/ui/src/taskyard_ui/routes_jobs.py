"""The job pages: list (filters, id search, cursor pages, bulk actions) and detail (live)."""

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError, job_path
from .live import live_client, live_response
from .web import (
    FINAL,
    JOB_ID,
    STATUSES,
    api_for,
    digest,
    iso_utc,
    render,
    render_fragment,
    safe_next,
    whoami,
)

router = APIRouter()

PAGE_SIZE = 50
BULK_MAX = 500
BULK_PARALLEL = 8
# "Created within" presets of the time filter.
SINCE = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}
SINCE_LABELS = {
    "15m": "last 15 minutes",
    "1h": "last hour",
    "6h": "last 6 hours",
    "24h": "last 24 hours",
    "7d": "last 7 days",
}
ULID_CHARS = re.compile(r"^[0-9A-Z]{1,26}$")
ULID_LEN = 26
# Fixed notices after a redirect, chosen by code so a crafted link cannot put arbitrary text on the page.
NOTICES = {
    "cancel": "Cancellation requested.",
    "retry": "The job was queued again.",
    "submitted": "Job submitted.",
    "said": "Message sent.",
}
BULK_VERBS = {"cancel": ("Cancelled", "cancelled"), "retry": ("Queued again", "retried")}
BULK_REASONS = {
    "conflict": "not in a state that allows it",
    "forbidden": "not allowed for your key",
    "missing": "no longer exist",
    "failed": "failed for another reason",
}
STATUS_WORDS = {
    "queued": "Job is queued.",
    "running": "Job is running.",
    "retrying": "Job failed and will be retried.",
    "waiting": "Job is waiting for a decision.",
    "succeeded": "Job succeeded.",
    "failed": "Job failed.",
    "cancelled": "Job was cancelled.",
    "dead": "Job is dead: it failed on every attempt.",
    "blocked": "Job waits for its parents.",
    "scheduled": "Job waits for its time.",
    "needs_approval": "Job waits for a person's approval before it may start.",
    "throttled": "Job waits for a place under its concurrency or rate key.",
    "skipped": "Job was skipped: a parent did not end as it needed.",
}


def _utc_input(value: str, name: str) -> tuple[str | None, str | None]:
    """A datetime-local value (read as UTC) → ISO 8601 for the API, or an error naming the field."""
    if not value:
        return None, None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None, f"{name}: expected a date and time like 2026-11-23T10:00, got {value!r}"
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat().replace("+00:00", "Z"), None


def _bulk_message(query: dict[str, str]) -> tuple[str | None, str | None]:
    """(notice, error) describing a bulk action's outcome from the redirect's counts."""
    action = query.get("bulk", "")
    if action == "none":
        return None, "Select at least one job first (the checkboxes in the first column)."
    if action not in BULK_VERBS:
        return None, None
    done_word, verb = BULK_VERBS[action]

    def count(name: str) -> int:
        raw = query.get(name, "0")
        return int(raw) if raw.isdigit() else 0

    ok = count("ok")
    notice = f"{done_word}: {ok} job{'s' if ok != 1 else ''}."
    skipped = [(count(k), why) for k, why in BULK_REASONS.items() if count(k)]
    error = None
    if skipped:
        total = sum(n for n, _ in skipped)
        parts = ", ".join(f"{n} {why}" for n, why in skipped)
        error = f"{total} job{'s were' if total != 1 else ' was'} not {verb}: {parts}."
    return notice, error


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_list(
    request: Request,
    status: str = "",
    queue: str = "",
    type: str = "",
    label: str = "",
    since: str = "",
    created_from: str = "",
    created_to: str = "",
    finished_from: str = "",
    finished_to: str = "",
    error: str = "",
    payload: str = "",
    sort: str = "",
    id: str = "",
    cursor: str = "",
    page: str = "1",
    api: ApiClient = Depends(api_for),
):
    """Newest first, filtered, one page at a time (cursor from the API); never more than PAGE_SIZE."""
    who = await whoami(request, api)
    page_no = int(page) if page.isdigit() and 0 < int(page) < 1_000_000 else 1
    raw = {
        "status": status,
        "queue": queue,
        "type": type,
        "label": label,
        "since": since,
        "created_from": created_from,
        "created_to": created_to,
        "finished_from": finished_from,
        "finished_to": finished_to,
        "error": error,
        "payload": payload,
        "sort": sort,
    }
    filters = {k: v.strip() for k, v in raw.items() if v.strip()}
    errors: list[str] = []
    params: list[tuple[str, str]] = [
        (k, filters[k])
        for k in ("status", "queue", "type", "label", "error", "payload", "sort")
        if k in filters
    ]
    if "since" in filters:
        if filters["since"] in SINCE:
            params.append(("created_after", iso_utc(time.time() - SINCE[filters["since"]])))
        else:
            errors.append(f"Created within: unknown choice {filters['since']!r}")
    for name, api_name, label_text in (
        ("created_from", "created_after", "Created from"),
        ("created_to", "created_before", "Created before"),
        ("finished_from", "finished_after", "Finished from"),
        ("finished_to", "finished_before", "Finished before"),
    ):
        value, err = _utc_input(filters.get(name, ""), label_text)
        if err:
            errors.append(err)
        elif value:
            params.append((api_name, value))

    search = id.strip()
    prefix = None
    if search:
        if JOB_ID.match(search) and len(search) == ULID_LEN:
            try:
                found = await api.get_job(search)
            except ApiError as err:
                if err.status != 404:
                    raise
            else:
                return RedirectResponse(f"/jobs/{found['id']}", status_code=303)
        prefix = search.upper()
        if not ULID_CHARS.match(prefix):
            errors.append("Job id: job ids are made of letters and digits only (26 of them).")
            prefix = None
        elif len(prefix) == ULID_LEN:
            errors.append(f"Job id: no job has the id {search}.")
            prefix = None
        else:
            params.append(("id_prefix", prefix))

    notice, bulk_error = _bulk_message(dict(request.query_params))
    jobs: list[dict] = []
    next_url = None
    if not errors:
        try:
            page_params = [*params, ("limit", str(PAGE_SIZE))] + ([("cursor", cursor)] if cursor else [])
            result = await api.list_jobs(page_params)
        except ApiError as err:
            if err.status != 422:
                raise
            errors.append(f"The API rejected these filters: {err.detail}")
        else:
            jobs = result["jobs"]
            more = result.get("next_cursor")
            if more:
                query = {**filters, **({"id": search} if prefix else {})}
                next_url = "/jobs?" + urlencode({**query, "cursor": more, "page": str(page_no + 1)})
    here_query = {**filters, **({"id": search} if search else {})}
    first_url = ("/jobs?" + urlencode(here_query)) if request.query_params.get("cursor") else None
    current = "/jobs" + (f"?{request.url.query}" if request.url.query else "")
    return render(
        request,
        "jobs.html",
        active="jobs",
        jobs=jobs,
        filters=filters,
        search=search,
        prefix=prefix,
        errors=errors,
        notice=notice,
        bulk_error=bulk_error,
        next_url=next_url,
        first_url=first_url,
        page=page_no,
        page_size=PAGE_SIZE,
        since_labels=SINCE_LABELS,
        admin=who.get("role") == "admin",
        back=_strip_bulk(current),
        sort=filters.get("sort", ""),
        sort_url=lambda field: (
            "/jobs?" + urlencode({**here_query, "sort": _next_sort(filters.get("sort", ""), field)})
        ),
        api_filter=[(k, v) for k, v in params if k != "sort"],
    )


def _next_sort(current: str, field: str) -> str:
    """Clicking a column sorts by it, newest/highest first; clicking again turns the order round."""
    return field if current == f"-{field}" else f"-{field}"


def _strip_bulk(url: str) -> str:
    """The list URL without a previous bulk outcome (so the next one does not pile up)."""
    path, _, query = url.partition("?")
    keep = [
        (k, v)
        for k, v in (p.split("=", 1) if "=" in p else (p, "") for p in query.split("&") if p)
        if k not in ("bulk", "ok", *BULK_REASONS)
    ]
    return path + ("?" + "&".join(f"{k}={v}" for k, v in keep) if keep else "")


@router.post("/jobs/bulk")
async def bulk(
    request: Request,
    action: str = Form(""),
    ids: list[str] = Form([]),
    back: str = Form("/jobs"),
    api: ApiClient = Depends(api_for),
) -> Response:
    """Cancel or retry the selected jobs (admins), then back to the same list with the counts."""
    target = safe_next(back)
    if not target.startswith("/jobs"):
        target = "/jobs"
    who = await whoami(request, api)
    if who.get("role") != "admin":
        raise ApiError(403, "bulk cancel and retry are for admin keys")
    if action not in BULK_VERBS:
        raise ApiError(422, f"action: must be cancel or retry, not {action!r}")
    chosen = list(dict.fromkeys(i for i in ids if JOB_ID.match(i)))[:BULK_MAX]
    sep = "&" if "?" in target else "?"
    if not chosen:
        return RedirectResponse(f"{target}{sep}bulk=none", status_code=303)
    gate = asyncio.Semaphore(BULK_PARALLEL)
    outcome: dict[str, int] = {"ok": 0, **dict.fromkeys(BULK_REASONS, 0)}

    async def one(job_id: str) -> None:
        async with gate:
            try:
                await (api.cancel(job_id) if action == "cancel" else api.retry(job_id))
            except ApiError as err:
                kind = {409: "conflict", 403: "forbidden", 404: "missing"}.get(err.status, "failed")
                outcome[kind] += 1
            else:
                outcome["ok"] += 1

    await asyncio.gather(*(one(i) for i in chosen))
    counts = urlencode({"bulk": action, **{k: str(v) for k, v in outcome.items() if v or k == "ok"}})
    return RedirectResponse(f"{target}{sep}{counts}", status_code=303)


def _check_id(job_id: str) -> None:
    if not JOB_ID.match(job_id):
        raise ApiError(404, f"no job {job_id!r}")


async def _job_checkpoints(api: ApiClient, job_id: str) -> list[dict]:
    return await api.checkpoints([("job_id", job_id), ("limit", "20")])


def job_fragments(
    job: dict, checkpoints: list[dict], who: dict | None, thread: dict | None = None
) -> dict[str, str]:
    """The parts of the job page that change while the job moves on (see live.py)."""
    ctx = {"job": job, "checkpoints": checkpoints, "who": who, "FINAL": FINAL, "STATUSES": STATUSES}
    return {
        "job-badge": render_fragment("_job_badge.html", **ctx),
        "job-live": render_fragment("_job_live.html", **ctx),
        "job-timeline": render_fragment("_job_timeline.html", **ctx),
        "job-thread": render_fragment("_job_thread.html", thread=thread, FINAL=FINAL),
    }


async def _detail(
    request: Request,
    api: ApiClient,
    job_id: str,
    status_code: int = 200,
    error: str | None = None,
    thread_error: str | None = None,
    thread_text: str = "",
) -> Response:
    job, checkpoints, who, webhook, files, thread = await asyncio.gather(
        api.get_job(job_id),
        _job_checkpoints(api, job_id),
        whoami(request, api),
        api.notifications(job_id),
        api.call("GET", job_path(job_id, "/artifacts")),
        api.messages(job_id),
    )
    notice = NOTICES.get(request.query_params.get("done", "")) if error is None else None
    fragments = job_fragments(job, checkpoints, who, thread)
    return render(
        request,
        "job.html",
        status_code,
        active="jobs",
        job=job,
        files=files,
        notice=notice,
        error=error,
        fragments=fragments,
        live_hash=digest(fragments),
        webhook=webhook,
        thread_error=thread_error,
        thread_text=thread_text,
        can_act=who.get("role") != "viewer",
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_detail(request: Request, job_id: str, api: ApiClient = Depends(api_for)):
    """One job: fields, waiting banner, timeline, payload, result/error, actions and the live log."""
    _check_id(job_id)
    return await _detail(request, api, job_id)


@router.get("/jobs/{job_id}/live")
async def job_live(request: Request, job_id: str) -> Response:
    """SSE: the job page's changing parts (banner with position/ETA/reason, fields, timeline)."""
    api = live_client(request)
    if isinstance(api, Response):
        return api
    _check_id(job_id)
    state: dict[str, Any] = {"status": None, "checkpoints": None}

    async def produce() -> dict[str, Any]:
        job = await api.get_job(job_id)
        who = await whoami(request, api)
        status = job["status"]
        if state["checkpoints"] is None or status == "waiting" or status != state["status"]:
            state["checkpoints"] = await _job_checkpoints(api, job_id)
        thread = await api.messages(job_id)
        update: dict[str, Any] = {
            "fragments": job_fragments(job, state["checkpoints"], who, thread),
            "done": status in FINAL,
        }
        if state["status"] is not None and status != state["status"]:
            update["announce"] = STATUS_WORDS.get(status, f"Job is {status}.")
        state["status"] = status
        return update

    return live_response(request, produce)


async def _act(request: Request, api: ApiClient, job_id: str, action: str) -> Response:
    _check_id(job_id)
    try:
        await (api.cancel(job_id) if action == "cancel" else api.retry(job_id))
    except ApiError as err:
        if err.status == 404:
            raise
        # 409 (wrong state) or 403 (role): show the job as it is now, with the API's reason.
        return await _detail(request, api, job_id, err.status, error=f"Could not {action}: {err.detail}")
    return RedirectResponse(f"/jobs/{job_id}?done={action}", status_code=303)


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str, api: ApiClient = Depends(api_for)) -> Response:
    """Cancel, then back to the job page."""
    return await _act(request, api, job_id, "cancel")


@router.post("/jobs/{job_id}/retry")
async def retry(request: Request, job_id: str, api: ApiClient = Depends(api_for)) -> Response:
    """Retry, then back to the job page."""
    return await _act(request, api, job_id, "retry")


@router.post("/jobs/{job_id}/messages")
async def reply(
    request: Request, job_id: str, text: str = Form(""), api: ApiClient = Depends(api_for)
) -> Response:
    """Write to the job's thread (answers its open question); errors come back next to the box."""
    _check_id(job_id)
    if not text.strip():
        return await _detail(request, api, job_id, 422, thread_error="Message: write something first.")
    try:
        await api.post_message(job_id, text.strip())
    except ApiError as err:
        if err.status == 404:
            raise
        # 403 (may not answer), 409 (job ended, answered meanwhile), 413 (too long), 422 (choices).
        return await _detail(request, api, job_id, err.status, thread_error=err.detail, thread_text=text)
    return RedirectResponse(f"/jobs/{job_id}?done=said#thread", status_code=303)

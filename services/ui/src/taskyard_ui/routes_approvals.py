"""The approvals inbox: pending checkpoints (approvals and questions) and deciding them."""

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError
from .live import live_client, live_response
from .web import FINAL, JOB_ID, api_for, digest, render, render_fragment, whoami

router = APIRouter()

INBOX_LIMIT = 100
# The inbox shows the conversation of this many cards (the newest), live.
THREADS_SHOWN = 20
NOTICES = {
    "approved": "Approved: the job continues.",
    "rejected": "Rejected.",
    "answered": "Answer sent: the job continues.",
}


async def _inbox(
    request: Request,
    api: ApiClient,
    status_code: int = 200,
    errors: dict | None = None,
    form: dict | None = None,
) -> Response:
    who = await whoami(request, api)
    checkpoints = await api.checkpoints([("status", "pending"), ("limit", str(INBOX_LIMIT))])
    notice = NOTICES.get(request.query_params.get("done", "")) if not errors else None
    fragments = await thread_fragments(api, in_run(checkpoints))
    return render(
        request,
        "approvals.html",
        status_code,
        active="approvals",
        checkpoints=checkpoints,
        limit=INBOX_LIMIT,
        notice=notice,
        errors=errors or {},
        form=form or {},
        who=who,
        fragments=fragments,
        live_hash=digest(fragments),
    )


def in_run(checkpoints: list[dict]) -> dict[str, str]:
    """{checkpoint id: job id} of the cards that show a conversation (not approvals before a start)."""
    shown = [ck for ck in checkpoints if ck.get("on_reject") != "cancel"][:THREADS_SHOWN]
    return {ck["id"]: ck["job_id"] for ck in shown}


async def thread_fragments(api: ApiClient, cards: dict[str, str]) -> dict[str, str]:
    """`thread-<checkpoint id>`: the conversation of each card's job (one read per job)."""
    job_ids = list(dict.fromkeys(cards.values()))

    async def one(job_id: str) -> dict | None:
        try:
            return await api.messages(job_id)
        except ApiError:
            return None  # pruned or gone meanwhile: the card says nothing

    threads = dict(zip(job_ids, await asyncio.gather(*(one(j) for j in job_ids)), strict=True))
    return {
        f"thread-{ck_id}": render_fragment("_job_thread.html", thread=threads[job_id], FINAL=FINAL)
        for ck_id, job_id in cards.items()
    }


@router.get("/approvals/live")
async def approvals_live(request: Request) -> Response:
    """SSE: each card's conversation as it goes on (a decided card's fragment is simply unused)."""
    api = live_client(request)
    if isinstance(api, Response):
        return api

    # The cards on the page stay there once answered (until a reload): their conversation goes
    # on too (the job says what it did with the answer, asks its next question).
    cards: dict[str, str] = {}

    async def produce() -> dict[str, Any]:
        checkpoints = await api.checkpoints([("status", "pending"), ("limit", str(INBOX_LIMIT))])
        for ck_id, job_id in in_run(checkpoints).items():
            if len(cards) < THREADS_SHOWN:
                cards.setdefault(ck_id, job_id)
        return {"fragments": await thread_fragments(api, cards)}

    return live_response(request, produce)


@router.get("/approvals", response_class=HTMLResponse)
async def approvals(request: Request, api: ApiClient = Depends(api_for)):
    return await _inbox(request, api)


def _check(ck_id: str) -> None:
    if not JOB_ID.match(ck_id):
        raise ApiError(404, f"no checkpoint {ck_id!r}")


def _choice(checkpoint: dict, raw: str) -> tuple[object, str | None]:
    """The answer to send: the chosen item of `choices` (by index), or the free text."""
    choices = checkpoint.get("choices")
    if choices:
        if not raw.isdigit() or int(raw) >= len(choices):
            return None, "Answer: choose one of the options."
        return choices[int(raw)], None
    if not raw.strip():
        return None, "Answer: write an answer."
    return raw.strip(), None


@router.post("/approvals/{ck_id}/{action}")
async def decide(
    request: Request,
    ck_id: str,
    action: str,
    reason: str = Form(""),
    answer: str = Form(""),
    api: ApiClient = Depends(api_for),
) -> Response:
    """Approve, reject (a reason is required) or answer; errors come back next to that checkpoint."""
    _check(ck_id)
    if action not in ("approve", "reject", "answer"):
        raise ApiError(404, f"no such action {action!r}")
    form = {"id": ck_id, "action": action, "reason": reason, "answer": answer}
    reason = reason.strip()
    body: dict = {}
    if action == "reject":
        if not reason:
            errors = {ck_id: {"reason": "Reason: say why you reject it (the job's owner will see it)."}}
            return await _inbox(request, api, 422, errors, form)
        body["reason"] = reason
    elif reason:
        body["reason"] = reason
    if action == "answer":
        value, problem = _choice(await api.checkpoint(ck_id), answer)
        if problem:
            return await _inbox(request, api, 422, {ck_id: {"answer": problem}}, form)
        body["answer"] = value
    try:
        await api.decide(ck_id, action, body)
    except ApiError as err:
        # 403 (not an approver), 404 (gone), 409 (decided or expired meanwhile), 422: say so in place.
        field = (
            "answer" if err.detail.startswith("answer") else "reason" if "reason" in err.detail else "form"
        )
        return await _inbox(request, api, err.status, {ck_id: {field: err.detail}}, form)
    done = {"approve": "approved", "reject": "rejected", "answer": "answered"}[action]
    return RedirectResponse(f"/approvals?done={done}", status_code=303)

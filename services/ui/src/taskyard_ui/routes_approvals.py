"""The approvals inbox: pending checkpoints (approvals and questions) and deciding them."""

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .api import ApiClient, ApiError
from .web import JOB_ID, api_for, render, whoami

router = APIRouter()

INBOX_LIMIT = 100
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
    )


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

"""/api/v1/jobs/{id}/messages: a job's thread (messages.py)."""

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from . import audit
from .api_doc import answers
from .auth import Principal, require
from .failures import NotFound
from .ids import JOB_ID
from .input_checks import CheckedRoute
from .messages import TAKE_LIMIT

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)


class MessageIn(BaseModel):
    model_config = {"extra": "forbid"}
    # The limit is the setting TASKYARD_API_MESSAGE_MAX_CHARS (413 above it); this bound only
    # stops a body far beyond any setting before it is read further.
    text: str = Field(min_length=1, max_length=1_000_000)
    reply_to: str | None = Field(
        None, max_length=40, description="The question (checkpoint id) answered; default: the open one"
    )


def _known(job_id: str) -> None:
    if not JOB_ID.fullmatch(job_id):
        raise NotFound(f"job {job_id[:40]!r} not found (ids are 26-character ULIDs)")


@router.get(
    "/jobs/{job_id}/messages",
    responses=answers(404),
    description="The job's thread, oldest first; `after` = the last message id you have (follow by polling).",
)
async def list_messages(
    job_id: str,
    request: Request,
    after: int = Query(0, ge=0),
    limit: int = Query(500, ge=1, le=TAKE_LIMIT),
    who: Principal = require("viewer"),
):
    _known(job_id)
    return await request.app.state.messages.thread(job_id, after, limit)


@router.post(
    "/jobs/{job_id}/messages",
    status_code=201,
    responses=answers(403, 404, 409, 413),
    description=(
        "While the job waits on a question, the text answers it (the checkpoint rules decide who may:"
        " its approvers); otherwise it is a plain message (the job's owner or an admin)."
        " 409 once the job has ended; 413 over TASKYARD_API_MESSAGE_MAX_CHARS."
    ),
)
async def post_message(job_id: str, body: MessageIn, request: Request, who: Principal = require("viewer")):
    _known(job_id)
    out = await request.app.state.messages.post(job_id, who, body.text, body.reply_to)
    if out["checkpoint_id"]:
        await audit.record(request, who, "checkpoint.answer", out["checkpoint_id"], job_id=job_id)
    return out

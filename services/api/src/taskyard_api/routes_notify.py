"""GET /api/v1/jobs/{job_id}/notifications: a job's webhook and every delivery with its answers."""

from fastapi import APIRouter, Request

from .api_doc import answers
from .auth import Principal, require
from .failures import NotFound
from .ids import JOB_ID
from .input_checks import CheckedRoute
from .job_store import JobStore
from .notify import job_notifications

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)


@router.get("/jobs/{job_id}/notifications", responses=answers(404))
async def notifications(job_id: str, request: Request, who: Principal = require("viewer")):
    async with request.app.state.sessions() as session:
        if not JOB_ID.fullmatch(job_id) or await JobStore.get(session, job_id) is None:
            raise NotFound(f"job {job_id[:40]} not found")
        return await job_notifications(session, job_id)

"""GET /api/v1/audit: the audit log of admin actions (admin only)."""

from typing import Literal

from fastapi import APIRouter, Query, Request

from .api_doc import answers
from .audit import event_out, list_events
from .auth import Principal, require
from .input_checks import CheckedRoute
from .job_search import TIME_DOC, TIMESTAMP, epoch

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)


@router.get("/audit", responses=answers())
async def read_audit(
    request: Request,
    actor: str | None = Query(None, max_length=100, description="A key's name or id"),
    action: str | None = Query(
        None, max_length=64, description="An action (`worker.drain`), or a prefix ending in `.` (`key.`)"
    ),
    since: str | None = Query(None, pattern=TIMESTAMP, description=TIME_DOC),
    outcome: Literal["ok", "refused"] | None = None,
    cursor: int | None = Query(None, ge=1, le=2**62, description="`next_cursor` of the previous page"),
    limit: int = Query(100, ge=1, le=500),
    who: Principal = require("admin"),
):
    async with request.app.state.sessions() as session:
        rows, next_cursor = await list_events(
            session,
            actor=actor,
            action=action,
            since=epoch(since),
            outcome=outcome,
            before_id=cursor,
            limit=limit,
        )
        return {"events": [event_out(r) for r in rows], "next_cursor": next_cursor}

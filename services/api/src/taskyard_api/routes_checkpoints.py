"""/api/v1/checkpoints: the approvals inbox."""

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from . import audit
from .api_doc import answers
from .auth import Principal, require
from .checkpoints import checkpoint_out
from .input_checks import CheckedRoute
from .models import Checkpoint
from .schemas import JSON_VALUE

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)
CheckpointStatus = Literal["pending", "approved", "rejected", "answered", "expired"]


class Approve(BaseModel):
    model_config = {"extra": "forbid"}
    reason: str | None = Field(None, max_length=2000)


class Reject(BaseModel):
    model_config = {"extra": "forbid"}
    reason: str = Field(min_length=1, max_length=2000)


class Answer(BaseModel):
    model_config = {"extra": "forbid"}
    answer: Any = Field(json_schema_extra=JSON_VALUE)
    reason: str | None = Field(None, max_length=2000)


@router.get("/checkpoints", responses=answers())
async def list_checkpoints(
    request: Request,
    status: CheckpointStatus | None = None,
    job_id: str | None = None,
    limit: int = Query(100, ge=1, le=500),
    who: Principal = require("viewer"),
):
    query = select(Checkpoint).order_by(Checkpoint.created_at.desc()).limit(limit)
    if status:
        query = query.where(Checkpoint.status == status)
    if job_id:
        query = query.where(Checkpoint.job_id == job_id)
    async with request.app.state.sessions() as session:
        return {"checkpoints": [checkpoint_out(c) for c in await session.scalars(query)]}


@router.get("/checkpoints/{ck_id}", responses=answers(404))
async def get_checkpoint(ck_id: str, request: Request, who: Principal = require("viewer")):
    async with request.app.state.sessions() as session:
        ck = await session.get(Checkpoint, ck_id)
    if ck is None:
        raise HTTPException(404, f"checkpoint {ck_id} not found")
    return checkpoint_out(ck)


@router.post("/checkpoints/{ck_id}/approve", responses=answers(404, 409))
async def approve(
    ck_id: str, request: Request, body: Approve | None = None, who: Principal = require("viewer")
):
    ck = await request.app.state.checkpoints.decide(
        ck_id, who, "approved", reason=body.reason if body else None
    )
    await audit.record(request, who, "checkpoint.approve", ck_id, job_id=ck.job_id, name=ck.name)
    return checkpoint_out(ck)


@router.post("/checkpoints/{ck_id}/reject", responses=answers(404, 409))
async def reject(ck_id: str, body: Reject, request: Request, who: Principal = require("viewer")):
    ck = await request.app.state.checkpoints.decide(ck_id, who, "rejected", reason=body.reason)
    await audit.record(request, who, "checkpoint.reject", ck_id, job_id=ck.job_id, name=ck.name)
    return checkpoint_out(ck)


@router.post(
    "/checkpoints/{ck_id}/answer",
    responses=answers(404, 409),
    description="`answer` must be one of the checkpoint's `choices` when it has any, else a 422.",
)
async def answer(ck_id: str, body: Answer, request: Request, who: Principal = require("viewer")):
    ck = await request.app.state.checkpoints.decide(
        ck_id, who, "answered", reason=body.reason, answer=body.answer
    )
    await audit.record(request, who, "checkpoint.answer", ck_id, job_id=ck.job_id, name=ck.name)
    return checkpoint_out(ck)

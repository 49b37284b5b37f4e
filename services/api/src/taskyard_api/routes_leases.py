"""Workers in any language over REST: claim a job, then heartbeat, log, ask, complete or fail its
lease (leases.py). docs/rest-workers.md has a worker in bash + curl.

A call on a lease runs in the api process that holds it, and a claim in the one serving its worker:
here, or forwarded there (lease_relay.py); `CALLS` is what runs it there, for a caller of this process
or of another alike."""

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from taskyard_common.topology import QUEUE_NAME
from taskyard_common.usage import NAME as COST_NAME

from .api_doc import NO_NUL, answers
from .auth import Principal, require
from .failures import NotFound
from .input_checks import CheckedRoute
from .lease_relay import Call, LeaseRelay
from .lease_usage import Reported
from .leases import Lease, LeaseService
from .schemas import JOB_TYPE, JSON_VALUE

router = APIRouter(prefix="/api/v1", route_class=CheckedRoute)
QueueName = Path(pattern=QUEUE_NAME.pattern, description="A queue name, as in a job's `queue`")
LeaseId = Path(pattern=r"^ls_[A-Za-z0-9_-]{1,40}$", description="A lease id, as the claim answered it")


class ClaimIn(BaseModel):
    model_config = {"extra": "forbid"}
    worker: str = Field(
        "rest",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The worker's name; its id in GET /workers is `rest-<key name>-<worker>`",
    )
    slots: int = Field(1, ge=1, le=1000, description="Jobs this worker may hold at once (its leases)")
    wait_s: float = Field(20.0, ge=0, le=60, description="Long-poll: how long to wait for a job")
    types: list[Annotated[str, Field(pattern=JOB_TYPE)]] = Field(
        [],
        max_length=100,
        description="Job types this worker runs: submits of them are accepted (as an executor's handlers)",
    )
    create: bool = Field(
        False, description="Serve the queue even if no job was ever submitted to it (an executor does)"
    )
    lease_s: float = Field(
        30.0,
        ge=2,
        le=3600,
        description="The lease's TTL: without a call on the lease for this long it expires",
    )


class HeartbeatIn(BaseModel):
    model_config = {"extra": "forbid"}
    pct: float | None = Field(None, ge=0, le=100, description="Progress in percent (a `progress` event)")
    message: str = Field("", max_length=2000, pattern=NO_NUL)


class UsageIn(BaseModel):
    """What the worker measured of its attempt (the api measures the wall time itself)."""

    model_config = {"extra": "forbid"}
    cpu_s: float | None = Field(
        None, ge=0, le=10**9, allow_inf_nan=False, description="CPU seconds the attempt used"
    )
    peak_rss_bytes: int | None = Field(None, ge=0, le=2**53, description="Its peak resident memory")


class CostIn(BaseModel):
    """What the attempt spent, as a handler reports it with `ctx.cost` (docs/costs.md)."""

    model_config = {"extra": "forbid"}
    amount: float = Field(ge=0, le=1e15, allow_inf_nan=False)
    unit: str = Field("usd", pattern=COST_NAME.pattern)
    kind: str = Field("llm_tokens", pattern=COST_NAME.pattern)


class Spent(BaseModel):
    """The optional figures a complete or fail carries: GET /costs counts them per attempt."""

    usage: UsageIn | None = Field(None, description="Unreported: CPU 0, `measured: lease`")
    costs: list[CostIn] = Field([], max_length=100, description="Summed per (unit, kind)")

    def reported(self) -> Reported:
        usage = self.usage or UsageIn()
        costs = [(c.amount, c.unit, c.kind) for c in self.costs]
        return Reported(usage.cpu_s, usage.peak_rss_bytes, costs)


class CompleteIn(Spent):
    model_config = {"extra": "forbid"}
    result: Any = Field(None, json_schema_extra=JSON_VALUE)


class ErrorIn(BaseModel):
    model_config = {"extra": "forbid"}
    type: str = Field("RestWorkerError", min_length=1, max_length=200, pattern=NO_NUL)
    message: str = Field(min_length=1, max_length=10_000, pattern=NO_NUL)


class FailIn(Spent):
    model_config = {"extra": "forbid"}
    error: ErrorIn
    retry: bool = Field(True, description="false: fail at once (no retry), like a PermanentError")
    delay_s: float | None = Field(
        None, ge=0, le=86400, description="Retry after this long instead of the backoff"
    )


class LogIn(BaseModel):
    model_config = {"extra": "forbid"}
    lines: list[str] = Field(min_length=1, max_length=1000)
    stream: Literal["stdout", "stderr", "log"] = "log"


class AskIn(BaseModel):
    model_config = {"extra": "forbid"}
    question: str = Field(min_length=1, max_length=2000, pattern=NO_NUL)
    name: str | None = Field(
        None, min_length=1, max_length=200, pattern=NO_NUL, description="Defaults to the question"
    )
    choices: list[str] | None = Field(None, min_length=1, max_length=100)
    approvers: list[str] = Field(["admin"], min_length=1, max_length=20, description="Roles or key names")
    timeout_s: float = Field(86400.0, gt=0, le=30 * 86400, description="Unanswered this long: `expired`")
    wait_s: float = Field(20.0, ge=0, le=60, description="Long-poll: how long to wait for the answer")


def _relay(request: Request) -> LeaseRelay:
    return request.app.state.lease_relay


def _lease_out(lease: Lease, **extra: Any) -> dict:
    return {"lease": lease.out(), **extra}


# -- the calls, as the api process holding the lease (serving the worker, for a claim) runs them -----
async def _claim(leases: LeaseService, who: Principal, queue: str, body: ClaimIn) -> dict | Response:
    lease = await leases.claim(who, queue, body.worker, body.slots, body.wait_s, body.lease_s, body.types)
    if lease is None:
        return Response(status_code=204)
    spec = lease.spec
    job = {
        "id": spec.id,
        "type": spec.type,
        "payload": spec.payload,
        "queue": spec.queue,
        "priority": spec.priority,
        "attempt": lease.attempt,
        "max_attempts": spec.max_attempts,
        "timeout_s": spec.timeout_s,
        "labels": spec.labels,
        "generation": spec.generation,
        "answers": {name: d.answer for name, d in lease.journal.decisions.items() if d.status == "answered"},
    }
    return {"lease": lease.out(), "job": job}


async def _heartbeat(leases: LeaseService, who: Principal, lease_id: str, body: HeartbeatIn) -> dict:
    return _lease_out(await leases.heartbeat(who, lease_id, body.pct, body.message))


async def _log(leases: LeaseService, who: Principal, lease_id: str, body: LogIn) -> dict:
    return {"stored": await leases.log_lines(who, lease_id, body.lines, body.stream)}


async def _complete(leases: LeaseService, who: Principal, lease_id: str, body: CompleteIn) -> dict:
    size = len(json.dumps(body.result))
    lease = await leases.complete(who, lease_id, body.result, size, body.reported())
    return _lease_out(lease, outcome="succeeded")


async def _fail(leases: LeaseService, who: Principal, lease_id: str, body: FailIn) -> dict:
    error = {**body.error.model_dump(), "retryable": body.retry}
    lease, decision = await leases.fail(who, lease_id, error, body.retry, body.delay_s, body.reported())
    return _lease_out(lease, **decision)


async def _ask(leases: LeaseService, who: Principal, lease_id: str, body: AskIn) -> dict:
    return await leases.ask(
        who,
        lease_id,
        name=body.name or body.question,
        question=body.question,
        choices=body.choices,
        approvers=body.approvers,
        timeout_s=body.timeout_s,
        wait_s=body.wait_s,
    )


CALLS: dict[str, Call] = {
    "claim": Call(ClaimIn, _claim, wait_s=lambda body: body.wait_s),
    "heartbeat": Call(HeartbeatIn, _heartbeat),
    "log": Call(LogIn, _log),
    "complete": Call(CompleteIn, _complete),
    "fail": Call(FailIn, _fail),
    "ask": Call(AskIn, _ask, wait_s=lambda body: body.wait_s),
}


@router.post(
    "/queues/{queue}/claim",
    responses={**answers(404, 409), 204: {"description": "No job came within `wait_s`"}},
    description="The next job of the queue for a REST worker, in strict priority (a high job before "
    "older normal ones), as a lease. Long-polls up to `wait_s`; 204 if none came. The lease lives "
    "while any call is made on it within `lease_s`; then the job goes back to the queue with its "
    "attempt counted, as when a worker is lost.",
)
async def claim(
    body: ClaimIn, queue: str = QueueName, *, request: Request, who: Principal = require("submitter")
):
    state = request.app.state
    if body.create:
        await state.jobs.publisher.ensure_queue(queue)
    elif not await state.queues.queue_snapshot(queue):
        raise NotFound(
            f"queue {queue!r} not found: no job was ever submitted to it and no executor serves it "
            '(claim with "create": true to serve a new queue)'
        )
    state.jobs.known_types.advertise(body.types)
    return await _relay(request).claim(who, queue, body)


@router.post("/leases/{lease_id}/heartbeat", responses=answers(404, 409))
async def heartbeat(
    body: HeartbeatIn | None = None,
    lease_id: str = LeaseId,
    *,
    request: Request,
    who: Principal = require("submitter"),
):
    return await _relay(request).call(who, "heartbeat", lease_id, body or HeartbeatIn())


@router.post("/leases/{lease_id}/log", responses=answers(404, 409))
async def log_lines(
    body: LogIn, lease_id: str = LeaseId, *, request: Request, who: Principal = require("submitter")
):
    return await _relay(request).call(who, "log", lease_id, body)


@router.post("/leases/{lease_id}/complete", responses=answers(404, 409, 413))
async def complete(
    body: CompleteIn, lease_id: str = LeaseId, *, request: Request, who: Principal = require("submitter")
):
    return await _relay(request).call(who, "complete", lease_id, body)


@router.post("/leases/{lease_id}/fail", responses=answers(404, 409))
async def fail(
    body: FailIn, lease_id: str = LeaseId, *, request: Request, who: Principal = require("submitter")
):
    return await _relay(request).call(who, "fail", lease_id, body)


@router.post(
    "/leases/{lease_id}/ask",
    responses=answers(404, 409),
    description="Ask people a question through the approvals inbox (a checkpoint of kind `question`) "
    "and long-poll up to `wait_s` for the answer; ask again with the same name to keep waiting. "
    "The job stays running and the lease alive while it waits. A question answered in an earlier "
    "attempt is answered at once from the job's journal.",
)
async def ask(
    body: AskIn, lease_id: str = LeaseId, *, request: Request, who: Principal = require("submitter")
):
    return await _relay(request).call(who, "ask", lease_id, body)

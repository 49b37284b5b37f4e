"""Deciding checkpoints: approve, reject, answer, expire — then resume or fail the job."""

import logging
import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.schemas import JobEvent
from taskyard_common.telemetry import context_from, ns, tracer

from . import approvals, messages
from .auth import ROLES, Principal
from .failures import DomainError, Forbidden, Invalid, NotFound, Refused
from .http_metrics import CHECKPOINTS_PENDING
from .job_store import JobStore
from .jobs import JobService
from .leases import LEASE_ON_REJECT
from .lifecycle import Approved, Decided, JobRecord, transition
from .models import Checkpoint
from .schemas import iso

log = logging.getLogger("taskyard.api.checkpoints")


def checkpoint_out(ck: Checkpoint) -> dict:
    return {
        "id": ck.id,
        "job_id": ck.job_id,
        "kind": ck.kind,
        "name": ck.name,
        "message": ck.message,
        "data": ck.data,
        "choices": ck.choices,
        "approvers": ck.approvers,
        "on_reject": ck.on_reject,
        "status": ck.status,
        "created_at": iso(ck.created_at),
        "expires_at": iso(ck.expires_at),
        "decided_at": iso(ck.decided_at),
        "decided_by": ck.decided_by,
        "reason": ck.reason,
        "answer": ck.answer,
    }


def may_decide(ck: Checkpoint, who: Principal) -> bool:
    """Approvers name roles (that role or higher) or key names."""
    return any(who.at_least(a) if a in ROLES else who.name == a for a in ck.approvers)


def decision_error(ck: Checkpoint, status: str, by: str, reason: str | None) -> dict | None:
    """The error an in-run checkpoint's decision fails its job with (None: the job goes on)."""
    if status in ("rejected", "expired") and (ck.on_reject == "fail" or ck.kind == "question"):
        return {"type": "CheckpointRejected", "message": f"checkpoint {ck.name!r} {status} by {by}: {reason}"}
    return None


def decided_msg_id(ck_id: str) -> str:
    """The `decided` event's Nats-Msg-Id: one per checkpoint, so the reconciler's resend of a
    decision the stream lost is a no-op where the first one is still there (within the window)."""
    return f"{ck_id}:decided"


def decided_event(ck: Checkpoint, job: JobRecord | None) -> JobEvent:
    """What the job's journal (its EVENTS subject) holds of a decision, from its row."""
    decided_at = ck.decided_at if ck.decided_at is not None else time.time()
    decision = {
        "status": ck.status,
        "by": ck.decided_by,
        "reason": ck.reason,
        "answer": ck.answer,
        "waited_s": decided_at - ck.created_at,
    }
    return JobEvent(
        job_id=ck.job_id,
        type="decided",
        generation=ck.generation,
        at=decided_at,
        queue=job.queue if job else None,
        priority=job.priority if job else None,
        job_type=job.type if job else None,
        data={"checkpoint_id": ck.id, "name": ck.name, "kind": ck.kind, "decision": decision},
    )


def _after(
    job: JobRecord, ck: Checkpoint, status: str, who: Principal | None, now: float, reason: str | None
) -> JobRecord:
    """The job once this decision applies: an approval before its start releases or cancels it
    (its expiry too: `who` None); an in-run checkpoint resumes the job or fails it."""
    if approvals.is_gate(ck):
        if job.status != "needs_approval" or job.generation != ck.generation:
            return job  # the job moved on (cancelled meanwhile): the decision is only recorded
        if who is None:  # its expiry
            return transition(job, Approved(now, False, None))
        return transition(job, Approved(now, status == "approved", who.name, reason))
    if ck.on_reject == LEASE_ON_REJECT:
        return job  # a REST worker's question: the worker holds the job and reads the decision
    error = decision_error(ck, status, who.name if who is not None else "system", reason)
    return transition(job, Decided(ck.generation, now, error))


class _Expired(Exception):
    def __init__(self, at: float) -> None:
        self.at = at


class CheckpointService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], jobs: JobService) -> None:
        self.sessions, self.jobs = sessions, jobs

    async def decide(
        self, ck_id: str, who: Principal | None, status: str, reason: str | None = None, answer=None
    ) -> Checkpoint:
        """Record a decision once; 409 if it was already decided or has expired."""
        now = time.time()
        by = who.name if who else "system"
        try:
            return await self._decide(ck_id, who, status, by, now, reason, answer)
        except _Expired as expired:
            # Recorded after _decide's session is closed: the SQLite engine has one connection.
            await self._expire(ck_id)
            raise Refused(f"checkpoint {ck_id} expired at {iso(expired.at)}") from None

    async def _decide(
        self,
        ck_id: str,
        who: Principal | None,
        status: str,
        by: str,
        now: float,
        reason: str | None,
        answer: Any,
    ) -> Checkpoint:
        async with self.sessions() as session:
            ck = await session.get(Checkpoint, ck_id)
            if ck is None:
                raise NotFound(f"checkpoint {ck_id} not found")
            if who is not None and not may_decide(ck, who):
                allowed = ", ".join(ck.approvers)
                raise Forbidden(
                    f"checkpoint {ck.name!r} may be decided by {allowed}; you are {who.name} ({who.role})",
                )
            if ck.status != "pending":
                raise Refused(
                    f"checkpoint {ck_id} was already {ck.status} by {ck.decided_by} at {iso(ck.decided_at)}",
                )
            if who is not None and ck.expires_at <= now:
                raise _Expired(ck.expires_at)
            if status == "answered":
                if ck.kind != "question":
                    raise Refused(f"checkpoint {ck_id} is an approval: approve or reject it")
                if ck.choices and answer not in ck.choices:
                    raise Invalid(f"answer: must be one of {ck.choices}")
            elif status == "approved" and ck.kind == "question":
                raise Refused(f"checkpoint {ck_id} is a question: answer it")
            done = await session.execute(
                update(Checkpoint)
                .where(Checkpoint.id == ck_id, Checkpoint.status == "pending")
                .values(status=status, decided_at=now, decided_by=by, reason=reason, answer=answer)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
                raise Refused(f"checkpoint {ck_id} was decided concurrently")
            said = messages.decision_message(ck, status, by, reason, answer, now)
            if said is not None:  # a question's answer (or its expiry) joins the job's thread
                session.add(said)
            job = await JobStore.get(session, ck.job_id)
            after = _after(job, ck, status, who, now, reason) if job is not None else None
            if job is not None and after is not None and not await JobStore.save(session, job, after):
                raise Refused(f"job {job.id} changed while checkpoint {ck_id} was decided; retry")
            await session.commit()
            await session.refresh(ck)
        await self._publish(ck, job)
        if job is not None and job.traceparent:
            span = tracer("taskyard.api").start_span(
                "taskyard.checkpoint.wait",
                context=context_from(job.traceparent),
                start_time=ns(ck.created_at),
                attributes={
                    "taskyard.job.id": job.id,
                    "taskyard.checkpoint": ck.name,
                    "taskyard.decision": status,
                },
            )
            span.end(end_time=ns(now))
        if job is not None and after is not None and after is not job:
            if after.finished:  # failed at a checkpoint, or cancelled before its start
                if after.status == "cancelled":
                    data = {"error": after.error, "by": by}
                    event = JobEvent.of(after, "cancelled", data, attempt=after.attempt)
                else:
                    event = JobEvent.of(after, "failed", {"error": after.error}, attempt=after.attempt)
                await self.jobs.publisher.publish_events([event])
                await self.jobs.settle([after])  # what waits for it is skipped
            elif after.status == "queued":
                await self.jobs.publish([after])
            else:  # approved before its start onto its next gate (a concurrency or rate key)
                await self.jobs.after_gates([after])
        return ck

    async def _publish(self, ck: Checkpoint, job: JobRecord | None) -> None:
        """The decision into the job's journal. Answered 2xx even if this publish fails: the row
        is the record, and the reconciler sends a decision its journal lacks (reconcile.py)."""
        await self.jobs.publisher.publish_events_once([(decided_event(ck, job), decided_msg_id(ck.id))])

    async def _expire(self, ck_id: str) -> None:
        try:
            await self.decide(ck_id, None, "expired", reason="expired")
        except DomainError as exc:
            log.debug("checkpoint %s not expired: %s", ck_id, exc.message)  # decided first

    async def _count_pending(self) -> None:
        async with self.sessions() as session:
            rows = dict(
                (
                    await session.execute(
                        select(Checkpoint.kind, func.count())
                        .where(Checkpoint.status == "pending")
                        .group_by(Checkpoint.kind)
                    )
                ).all()
            )
        for kind in ("approval", "question"):
            CHECKPOINTS_PENDING.labels(kind).set(rows.get(kind, 0))

    async def expire_due(self) -> None:
        """Checkpoints past their deadline are rejected with reason `expired` (a round of the
        api's Supervisor, every checkpoint_expiry_interval_s)."""
        async with self.sessions() as session:
            due = list(
                await session.scalars(
                    select(Checkpoint.id)
                    .where(Checkpoint.status == "pending", Checkpoint.expires_at <= time.time())
                    .limit(100)
                )
            )
        for ck_id in due:
            await self._expire(ck_id)
        await self._count_pending()

"""Approval before start: which jobs need a person's yes, and the checkpoint that asks for it.

Pure (no database, no clock): the job store writes the checkpoint row whenever a job moves into
`needs_approval`, so the same inbox, CLI and UI that decide in-run checkpoints decide this gate
(checkpoints.CheckpointService tells the two apart by `on_reject`).
"""

from typing import Any

from .lifecycle import JobRecord
from .schemas import ApprovalPolicies, ApprovalPolicy

# The name of the gate's checkpoint, and its `on_reject`: a no (or expiry) cancels the job before
# it starts, where an in-run approval fails it ("fail") or hands the no to its handler ("return").
CHECKPOINT_NAME = "before_start"
ON_REJECT = "cancel"
# A stored approval without a deadline (none is written so; a safety net) waits this long.
DEFAULT_EXPIRES_S = 86400.0


def policy_for(policies: ApprovalPolicies, job_type: str, queue: str) -> ApprovalPolicy | None:
    """The policy that requires approval for a job of `job_type` on `queue`, if one does: the
    type's before the queue's; AUTO on one does not lift APPROVAL_REQUIRED on the other (the
    stricter wins, so a deploy type cannot be slipped through an AUTO queue)."""
    for policy in (policies.types.get(job_type), policies.queues.get(queue)):
        if policy is not None and policy.mode == "APPROVAL_REQUIRED":
            return policy
    return None


def approval_for(
    asked: dict[str, Any] | None, policy: ApprovalPolicy | None, now: float
) -> dict[str, Any] | None:
    """The job's `approval` column: the policy's when one requires it (its approvers, not the
    submitter's: a submitter must not name themselves to approve a job the policy guards), else
    what the job asked for."""
    return policy.record(now) if policy is not None else asked


def is_gate(ck: Any) -> bool:
    """A checkpoint (row or model) that holds a job before its start, not one of a running job."""
    return getattr(ck, "on_reject", None) == ON_REJECT


def checkpoint_id(job: JobRecord) -> str:
    """One per generation (a retry asks again), the same whoever writes it: `ap_<job>_<gen>`."""
    return f"ap_{job.id}_{job.generation}"


def checkpoint_row(job: JobRecord) -> dict[str, Any]:
    """The `checkpoints` row asking for `job`'s approval, as it moved into `needs_approval`."""
    approval = job.approval or {}
    approvers = list(approval.get("approvers") or ["admin"])
    return {
        "id": checkpoint_id(job),
        "job_id": job.id,
        "generation": job.generation,
        "name": CHECKPOINT_NAME,
        "kind": "approval",
        "message": f"May {job.type} job {job.node or job.id} on queue {job.queue} start?",
        "data": None,
        "choices": None,
        "approvers": approvers,
        "on_reject": ON_REJECT,
        "status": "pending",
        "created_at": job.updated_at,
        "expires_at": approval.get("expires_at") or job.updated_at + DEFAULT_EXPIRES_S,
        "decided_at": None,
        "decided_by": None,
        "reason": None,
        "answer": None,
    }


def entered(old: JobRecord | None, new: JobRecord) -> bool:
    """`new` just started waiting for approval (stored, released from a gate before, retried)."""
    return new.status == "needs_approval" and (
        old is None or old.status != "needs_approval" or old.generation != new.generation
    )


def left(old: JobRecord, new: JobRecord) -> bool:
    """`new` stopped waiting for approval without a decision (cancelled, its workflow stopped)."""
    return (
        old.status == "needs_approval"
        and new.status != "needs_approval"
        and (new.approval is None or (new.approval.get("decision") is None))
    )

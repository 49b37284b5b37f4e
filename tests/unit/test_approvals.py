"""Approval before start, the pure parts: which policy applies, the job's approval column, the
checkpoint that asks, when its window runs, what a retry asks again, and the reason shown."""

import pytest
from pydantic import ValidationError

from taskyard_api import approvals
from taskyard_api.lifecycle import (
    Approved,
    Cancel,
    Due,
    JobRecord,
    Released,
    Retry,
    new_job,
    transition,
)
from taskyard_api.reasons import approval_reason
from taskyard_api.schemas import ApprovalPolicies, ApprovalSpec, JobCreate

from .records import SPEC as BASE_SPEC
from .records import T0

SPEC = {**BASE_SPEC, "type": "deploy"}
POLICIES = ApprovalPolicies.model_validate(
    {
        "types": {
            "deploy": {"mode": "APPROVAL_REQUIRED", "approvers": ["admin"], "expires_s": 3600},
            "report": {"mode": "AUTO"},
        },
        "queues": {
            "prod": {"approvers": ["release-bot", "operator"]},  # mode defaults to APPROVAL_REQUIRED
            "dev": {"mode": "AUTO"},
        },
    }
)


def held(blocked: bool = False, **fields) -> JobRecord:
    approval = ApprovalSpec(approvers=["ops"], expires_s=600).record(T0)
    return new_job(
        id="J1",
        owner_id="k1",
        now=T0,
        traceparent=None,
        blocked=blocked,
        **{**SPEC, "approval": approval, **fields},
    )


# --- policy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_type", "queue", "approvers"),
    [
        ("deploy", "default", ["admin"]),  # the type's
        ("deploy", "prod", ["admin"]),  # the type's before the queue's
        ("noop", "prod", ["release-bot", "operator"]),  # the queue's
        ("report", "prod", ["release-bot", "operator"]),  # AUTO on the type does not lift the queue's
        ("deploy", "dev", ["admin"]),  # nor AUTO on the queue the type's
        ("noop", "dev", None),
        ("noop", "default", None),
    ],
)
def test_the_stricter_policy_of_type_and_queue_applies(job_type, queue, approvers):
    policy = approvals.policy_for(POLICIES, job_type, queue)
    assert (policy.approvers if policy else None) == approvers


def test_a_policy_replaces_what_the_submitter_asked_and_keeps_its_window():
    asked = ApprovalSpec(approvers=["sam"], expires_s=60).record(T0)
    forced = approvals.approval_for(asked, approvals.policy_for(POLICIES, "deploy", "default"), T0)
    assert forced == {"approvers": ["admin"], "expires_s": 3600, "expires_at": T0 + 3600, "decision": None}
    assert approvals.approval_for(asked, None, T0) is asked
    assert approvals.approval_for(None, None, T0) is None


def test_policies_refuse_unknown_modes_and_fields():
    with pytest.raises(ValidationError):
        ApprovalPolicies.model_validate({"types": {"deploy": {"mode": "MAYBE"}}})
    with pytest.raises(ValidationError):
        ApprovalPolicies.model_validate({"tpyes": {}})
    with pytest.raises(ValidationError):
        ApprovalPolicies.model_validate({"types": {"deploy": {"approvers": []}}})


def test_a_submit_stores_the_window_with_the_approval():
    spec = JobCreate.model_validate({"type": "deploy", "approval": {"before_start": True}})
    assert spec.record_fields(T0)["approval"] == {
        "approvers": ["admin"],
        "expires_s": 86400.0,
        "expires_at": T0 + 86400.0,
        "decision": None,
    }


# --- the checkpoint ------------------------------------------------------------------------------


def test_the_checkpoint_asks_the_jobs_approvers_until_its_deadline():
    job = held()
    row = approvals.checkpoint_row(job)
    assert row["id"] == "ap_J1_0" and len(row["id"]) <= 40
    assert (row["kind"], row["name"], row["on_reject"], row["status"]) == (
        "approval",
        "before_start",
        "cancel",
        "pending",
    )
    assert (row["approvers"], row["generation"], row["created_at"], row["expires_at"]) == (
        ["ops"],
        0,
        T0,
        T0 + 600,
    )
    assert approvals.is_gate(type("Ck", (), {"on_reject": "cancel"})())
    assert not approvals.is_gate(type("Ck", (), {"on_reject": "fail"})())


def test_entering_and_leaving_the_gate():
    job = held()
    assert approvals.entered(None, job)  # stored waiting
    assert not approvals.entered(job, job)  # written again
    cancelled = transition(job, Cancel(T0 + 1))
    assert approvals.left(job, cancelled)  # its question leaves the inbox
    yes = transition(job, Approved(T0 + 1, True, "ops"))
    no = transition(job, Approved(T0 + 1, False, "ops"))
    assert not approvals.left(job, yes) and not approvals.left(job, no)  # decided: recorded as such
    again = transition(no, Retry(T0 + 5))
    assert approvals.entered(no, again) and approvals.checkpoint_id(again) == "ap_J1_1"
    assert not approvals.entered(None, held(blocked=True))


# --- lifecycle: the window and a retry -----------------------------------------------------------


def test_the_window_runs_from_when_the_job_starts_waiting_for_approval():
    blocked = held(blocked=True)
    released = transition(blocked, Released(T0 + 100, payload={}))
    assert released.status == "needs_approval" and released.approval["expires_at"] == T0 + 700
    scheduled = held(run_at=T0 + 3600)
    due = transition(scheduled, Due(T0 + 3600))
    assert due.status == "needs_approval" and due.approval["expires_at"] == T0 + 4200


def test_a_retry_asks_again_after_a_no_but_a_yes_stands():
    job = held()
    no = transition(job, Approved(T0 + 10, False, None))
    again = transition(no, Retry(T0 + 50))
    assert (again.status, again.generation, again.outbox_at) == ("needs_approval", 1, None)
    assert again.approval["decision"] is None and again.approval["expires_at"] == T0 + 650
    yes = transition(job, Approved(T0 + 10, True, "ops"))
    failed = transition(transition(yes, Cancel(T0 + 20)), Retry(T0 + 30))
    assert (failed.status, failed.approval["decision"]["by"]) == ("queued", "ops")


# --- the reason ----------------------------------------------------------------------------------


def test_the_reason_names_who_may_approve_and_until_when():
    job = held()
    assert approval_reason(job.approval, "ap_J1_0", now=T0 + 60) == {
        "code": "needs_approval",
        "message": "Needs approval by `ops` before it may start (expires at 2023-11-14T22:23:20Z, "
        "in 9 min); rejected or expired, it is cancelled.",
        "evidence": {"checkpoint_id": "ap_J1_0", "approvers": ["ops"], "expires_at": "2023-11-14T22:23:20Z"},
    }
    two = approval_reason({"approvers": ["admin", "ops"], "expires_at": T0 + 5}, "ap_J1_0", now=T0 + 9)
    assert two["message"].startswith("Needs approval by `admin`, `ops` before it may start (expires at ")
    assert "in 0.0s" in two["message"]

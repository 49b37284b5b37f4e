"""Approval before start: a job that needs a person's yes waits as a gate (not in JOBS, no slot),
decided through the same checkpoint inbox, CLI and UI as in-run checkpoints; a no or expiry
cancels it with the decision on its timeline; a policy per job type forces the gate."""

import json
import os
import subprocess
import sys
import time

import httpx

from taskyard_common.settings import NatsSettings
from taskyard_common.topology import Topology

from .conftest import create_key
from .stack import run_async

# Every `echo` job needs an admin's yes, asked or not (TASKYARD_API_APPROVAL_POLICIES).
POLICY = json.dumps(
    {"types": {"echo": {"mode": "APPROVAL_REQUIRED", "approvers": ["admin"], "expires_s": 3600}}}
)


def jobs_in_stream(stack) -> int:
    """Messages ever published to this test's JOBS stream (its last sequence)."""
    import nats

    async def go() -> int:
        nc = await nats.connect(stack.nats.url)
        try:
            info = await nc.jetstream().stream_info(Topology(NatsSettings(prefix=stack.prefix)).jobs_stream)
            return info.state.last_seq
        finally:
            await nc.close()

    return run_async(go())


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKYARD_URL": stack.api.url, "TASKYARD_API_KEY": stack.admin_key}
    return subprocess.run(
        [sys.executable, "-m", "taskyard", *args], env=env, capture_output=True, text=True, timeout=60
    )


def types_of(job: dict) -> list[str]:
    return [e["type"] for e in job["timeline"]]


def test_a_policy_gated_job_is_not_in_jobs_until_an_admin_approves_it(stack):
    stack.start_api(TASKYARD_API_APPROVAL_POLICIES=POLICY)
    stack.start_executor(handlers="handlers_for_tests")
    sam = create_key(stack.db_url, "sam", "submitter")
    with stack.http(sam) as s, stack.http() as admin:
        # It did not ask for approval: the policy of its type gives it the gate.
        r = s.post("/api/v1/jobs", json={"type": "echo", "payload": {"x": 1}})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        assert r.json()["status"] == "needs_approval"
        free = s.post("/api/v1/jobs", json={"type": "noop", "payload": {}}).json()
        stack.wait_status(free["id"], "succeeded")  # other types run as before, on the same executor
        time.sleep(1.0)  # an executor would have started it by now, were it in JOBS
        job = s.get(f"/api/v1/jobs/{job_id}").json()
        assert job["status"] == "needs_approval" and job["started_at"] is None
        assert jobs_in_stream(stack) == 1  # the noop only
        why = job["waiting_reason"]
        assert why["code"] == "needs_approval"
        assert why["message"].startswith("Needs approval by `admin` before it may start (expires at ")
        ck_id = why["evidence"]["checkpoint_id"]
        assert why["evidence"]["approvers"] == ["admin"]
        assert job["checkpoint"]["id"] == ck_id and job["checkpoint"]["kind"] == "approval"

        # The same inbox as in-run checkpoints; a submitter key may not decide an admin's approval.
        pending = admin.get("/api/v1/checkpoints", params={"status": "pending"}).json()["checkpoints"]
        assert [(p["id"], p["job_id"], p["name"]) for p in pending] == [(ck_id, job_id, "before_start")]
        denied = s.post(f"/api/v1/checkpoints/{ck_id}/approve", json={})
        assert denied.status_code == 403, denied.text
        assert s.get(f"/api/v1/jobs/{job_id}").json()["status"] == "needs_approval"
        # Naming itself as the approver does not help: the policy's approvers stand.
        own = s.post("/api/v1/jobs", json={"type": "echo", "approval": {"approvers": ["sam"]}}).json()
        own_ck = stack.wait_status(own["id"], "needs_approval")["checkpoint"]
        assert own_ck["approvers"] == ["admin"]
        assert s.post(f"/api/v1/checkpoints/{own_ck['id']}/approve", json={}).status_code == 403
        assert s.post(f"/api/v1/jobs/{own['id']}/cancel").status_code == 200

        status = cli(stack, "status", job_id)
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[0] == f"{job_id} · needs_approval"
        assert f"approve with: taskyard approve {ck_id}" in status.stdout

        approved = cli(stack, "approve", ck_id, "--reason", "ship it")
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.strip() == f"approved {ck_id} (before_start) by admin: ship it"
        done = stack.wait_status(job_id, "succeeded")
    kinds = types_of(done)
    assert kinds.index("decided") < kinds.index("queued") < kinds.index("started")
    decided = next(e for e in done["timeline"] if e["type"] == "decided")
    assert (
        decided["data"]["decision"]["status"] == "approved" and decided["data"]["decision"]["by"] == "admin"
    )
    assert jobs_in_stream(stack) == 2


def test_rejection_cancels_with_the_reason_and_a_retry_asks_again(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    ui = stack.start_ui()
    with stack.http() as c:
        spec = {"type": "echo", "payload": {}, "approval": {"before_start": True, "expires_s": 600}}
        job_id = c.post("/api/v1/jobs", json=spec).json()["id"]
        first = stack.wait_status(job_id, "needs_approval")["checkpoint"]
        # The UI: the job page says what it waits for and links to the inbox, which decides it.
        with httpx.Client(base_url=ui.url, cookies={"taskyard_key": stack.admin_key}, timeout=30) as web:
            page = web.get(f"/jobs/{job_id}").text
            assert "Waiting for approval before it starts" in page
            assert f'href="/approvals#ck-{first["id"]}"' in page
            inbox = web.get("/approvals").text
            assert (
                f'id="ck-{first["id"]}-approve"' in inbox and "the job is cancelled before it starts" in inbox
            )
            r = web.post(f"/approvals/{first['id']}/reject", data={"reason": "not during the freeze"})
            assert r.status_code == 303, r.text
        gone = stack.wait_status(job_id, "cancelled")
        assert gone["error"] == {
            "type": "ApprovalRejected",
            "message": "rejected by admin: not during the freeze",
        }
        wait_for_timeline(c, job_id, "cancelled")
        kinds = types_of(c.get(f"/api/v1/jobs/{job_id}").json())
        assert "started" not in kinds and kinds.index("decided") < kinds.index("cancelled")
        assert jobs_in_stream(stack) == 0

        # A retry asks again: a fresh checkpoint, a fresh window.
        assert c.post(f"/api/v1/jobs/{job_id}/retry").status_code == 200
        again = stack.wait_status(job_id, "needs_approval")
        second = again["checkpoint"]
        assert second["id"] != first["id"] and second["status"] == "pending"
        assert second["expires_at"] > first["expires_at"]
        assert c.post(f"/api/v1/checkpoints/{second['id']}/approve", json={}).status_code == 200
        stack.wait_status(job_id, "succeeded")

        # Cancelled while it waits: its question leaves the inbox.
        other = c.post("/api/v1/jobs", json=spec).json()["id"]
        ck_id = stack.wait_status(other, "needs_approval")["checkpoint"]["id"]
        assert c.post(f"/api/v1/jobs/{other}/cancel").status_code == 200
        assert c.get(f"/api/v1/checkpoints/{ck_id}").json()["status"] == "expired"
        assert c.post(f"/api/v1/checkpoints/{ck_id}/approve", json={}).status_code == 409


def test_an_unanswered_approval_expires_and_cancels_the_job(stack):
    stack.start_api(TASKYARD_API_CHECKPOINT_EXPIRY_INTERVAL_S="0.3")
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        spec = {"type": "echo", "payload": {}, "approval": {"approvers": ["ops"], "expires_s": 1.5}}
        job_id = c.post("/api/v1/jobs", json=spec).json()["id"]
        ck_id = stack.wait_status(job_id, "needs_approval")["checkpoint"]["id"]
        gone = stack.wait_status(job_id, "cancelled", timeout=15)
        assert gone["error"] == {"type": "ApprovalRejected", "message": "approval expired"}
        ck = c.get(f"/api/v1/checkpoints/{ck_id}").json()
        assert (ck["status"], ck["decided_by"]) == ("expired", "system")
        assert "started" not in types_of(gone)
    assert jobs_in_stream(stack) == 0


def wait_for_timeline(c, job_id: str, kind: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while kind not in types_of(c.get(f"/api/v1/jobs/{job_id}").json()):
        assert time.monotonic() < deadline, f"no {kind} on the timeline of {job_id}"
        time.sleep(0.05)


def test_a_job_released_by_its_parent_then_waits_for_approval_with_its_window_from_then(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        parent = c.post("/api/v1/jobs", json={"type": "async_sleep", "payload": {"seconds": 1.5}}).json()
        child = {"type": "echo", "depends_on": [parent["id"]], "approval": {"expires_s": 60}}
        r = c.post("/api/v1/jobs", json=child)
        assert r.status_code == 201, r.text
        child_id = r.json()["id"]
        assert r.json()["status"] == "blocked"
        assert c.get("/api/v1/checkpoints", params={"job_id": child_id}).json()["checkpoints"] == []
        stack.wait_status(parent["id"], "succeeded")
        held = stack.wait_status(child_id, "needs_approval")
        assert held["waiting_reason"]["code"] == "needs_approval"
        ck = held["checkpoint"]
        released = time.time()
        assert abs(iso_s(ck["expires_at"]) - (iso_s(ck["created_at"]) + 60)) < 0.01
        assert iso_s(ck["created_at"]) >= iso_s(parent_finished(c, parent["id"])) - 0.01
        assert iso_s(ck["created_at"]) <= released
        time.sleep(0.5)
        assert c.get(f"/api/v1/jobs/{child_id}").json()["status"] == "needs_approval"
        assert jobs_in_stream(stack) == 1  # the parent only
        assert c.post(f"/api/v1/checkpoints/{ck['id']}/approve", json={}).status_code == 200
        stack.wait_status(child_id, "succeeded")


def iso_s(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parent_finished(c, job_id: str) -> str:
    return c.get(f"/api/v1/jobs/{job_id}").json()["finished_at"]


def test_a_delayed_job_asks_for_approval_when_its_time_comes(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        spec = {"type": "echo", "delay_s": 1.0, "approval": {"expires_s": 30}}
        job = c.post("/api/v1/jobs", json=spec).json()
        assert job["status"] == "scheduled"
        assert c.get("/api/v1/checkpoints", params={"job_id": job["id"]}).json()["checkpoints"] == []
        held = stack.wait_status(job["id"], "needs_approval")
        ck = held["checkpoint"]
        assert iso_s(ck["created_at"]) >= iso_s(job["created_at"]) + 1.0  # asked once its time came
        assert abs(iso_s(ck["expires_at"]) - (iso_s(ck["created_at"]) + 30)) < 0.01
        assert jobs_in_stream(stack) == 0
        assert c.post(f"/api/v1/checkpoints/{ck['id']}/approve", json={}).status_code == 200
        stack.wait_status(job["id"], "succeeded")

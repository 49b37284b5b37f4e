"""Human-in-the-loop: durable checkpoints, questions, memoized steps, decisions and expiry."""

import time

from .conftest import create_key
from .stack import metric


def submit(c, type_: str, payload: dict) -> dict:
    r = c.post("/api/v1/jobs", json={"type": type_, "payload": payload})
    assert r.status_code == 201, r.text
    return r.json()


def types_of(job: dict) -> list[str]:
    return [e["type"] for e in job["timeline"]]


def test_waiting_job_survives_losing_every_executor_and_resumes_without_repeating_steps(stack, tmp_path):
    counter = tmp_path / "builds.txt"
    stack.start_api()
    first = stack.start_executor(handlers="handlers_for_tests", slots=1)
    with stack.http() as c:
        job = submit(c, "deploy", {"counter_file": str(counter)})
        waiting = stack.wait_status(job["id"], "waiting")
        assert waiting["waiting_reason"]["code"] == "waiting_approval"
        assert "apply-migration" in waiting["waiting_reason"]["message"]
        ck = waiting["checkpoint"]
        assert ck["status"] == "pending" and ck["data"] == {"artifact": "app-v1"}
        # The waiting job holds no slot: another job runs on the single-slot executor meanwhile.
        other = submit(c, "noop", {})
        stack.wait_status(other["id"], "succeeded")
        first.kill9()
        pending = c.get("/api/v1/checkpoints", params={"status": "pending"}).json()["checkpoints"]
        assert [p["id"] for p in pending] == [ck["id"]]
        r = c.post(f"/api/v1/checkpoints/{ck['id']}/approve", json={"reason": "looks good"})
        assert r.status_code == 200 and r.json()["decided_by"] == "admin"
        assert c.post(f"/api/v1/checkpoints/{ck['id']}/approve").status_code == 409
        # Back in the queue with no executor left: once the dead worker's heartbeat expires, says so.
        deadline = time.monotonic() + 15
        while c.get(f"/api/v1/jobs/{job['id']}").json()["waiting_reason"]["code"] != "no_workers":
            assert time.monotonic() < deadline, "never reported no_workers"
            time.sleep(0.2)
        stack.start_executor(handlers="handlers_for_tests")
        done = stack.wait_status(job["id"], "succeeded")
    assert done["result"] == {"artifact": "app-v1", "approved": True, "by": "admin", "reason": "looks good"}
    assert counter.read_text().splitlines() == ["built on attempt 1"]  # the step ran exactly once
    kinds = types_of(done)
    assert kinds.count("step") == 1 and kinds.count("waiting") == 1 and kinds.count("decided") == 1
    assert kinds.count("started") == 2 and kinds[-1] == "succeeded"


def test_reject_fails_the_job_with_the_reason_or_returns_to_the_handler(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        failing = submit(c, "deploy", {"counter_file": str(tmp_path / "a")})
        handled = submit(c, "deploy", {"counter_file": str(tmp_path / "b"), "on_reject": "return"})
        for job in (failing, handled):
            ck = stack.wait_status(job["id"], "waiting")["checkpoint"]
            assert (
                c.post(f"/api/v1/checkpoints/{ck['id']}/reject", json={}).status_code == 422
            )  # reason needed
            r = c.post(f"/api/v1/checkpoints/{ck['id']}/reject", json={"reason": "not during business hours"})
            assert r.status_code == 200 and r.json()["status"] == "rejected"
            assert c.post(f"/api/v1/checkpoints/{ck['id']}/approve").status_code == 409
        failed = stack.wait_status(failing["id"], "failed")
        assert "not during business hours" in failed["error"]["message"]
        assert failed["error"]["type"] == "CheckpointRejected"
        ok = stack.wait_status(handled["id"], "succeeded")
        assert ok["result"]["approved"] is False and ok["result"]["reason"] == "not during business hours"


def test_only_allowed_approvers_decide_and_expired_checkpoints_reject_themselves(stack, tmp_path):
    stack.start_api(TASKYARD_API_CHECKPOINT_EXPIRY_INTERVAL_S="0.3")
    stack.start_executor(handlers="handlers_for_tests")
    viewer = create_key(stack.db_url, "vera", "viewer")
    with stack.http() as c:
        job = submit(c, "deploy", {"counter_file": str(tmp_path / "a"), "timeout": "2s"})
        ck = stack.wait_status(job["id"], "waiting")["checkpoint"]
        with stack.http(viewer) as v:
            r = v.post(f"/api/v1/checkpoints/{ck['id']}/approve")
            assert r.status_code == 403 and "admin" in r.json()["detail"]
        failed = stack.wait_status(job["id"], "failed", timeout=15)
        assert "expired" in failed["error"]["message"]
        r = c.post(f"/api/v1/checkpoints/{ck['id']}/approve")
        assert r.status_code == 409 and "expired" in r.json()["detail"]
        # A checkpoint naming a key (not a role) lets that key decide.
        job = submit(c, "deploy", {"counter_file": str(tmp_path / "b"), "approvers": ["vera"]})
        ck = stack.wait_status(job["id"], "waiting")["checkpoint"]
        with stack.http(viewer) as v:
            assert v.post(f"/api/v1/checkpoints/{ck['id']}/approve").status_code == 200
        assert stack.wait_status(job["id"], "succeeded")["result"]["by"] == "vera"


def test_questions_take_an_answer_from_the_choices(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    with stack.http() as c:
        job = submit(c, "pick_region", {})
        waiting = stack.wait_status(job["id"], "waiting")
        assert waiting["waiting_reason"]["code"] == "waiting_answer"
        ck = waiting["checkpoint"]
        assert ck["kind"] == "question" and ck["choices"] == ["eu-west", "us-east"]
        assert c.post(f"/api/v1/checkpoints/{ck['id']}/approve").status_code == 409
        r = c.post(f"/api/v1/checkpoints/{ck['id']}/answer", json={"answer": "mars"})
        assert r.status_code == 422 and "answer" in r.json()["detail"]
        assert c.post(f"/api/v1/checkpoints/{ck['id']}/answer", json={"answer": "us-east"}).status_code == 200
        done = stack.wait_status(job["id"], "succeeded")
    assert done["result"] == {"region": "us-east"}


def test_shell_script_asks_for_approval_with_the_helper_command(stack):
    stack.start_api()
    stack.start_executor()
    script = (
        "echo preparing; "
        '"$TASKYARD_PYTHON" -m taskyard_executor.checkpoint_cli go-live --message "Ship it?" --on-reject return; '
        'echo "decision exit $?"'
    )
    with stack.http() as c:
        job = submit(c, "shell", {"command": script, "shell": True})
        waiting = stack.wait_status(job["id"], "waiting")
        ck = waiting["checkpoint"]
        assert ck["name"] == "go-live" and ck["message"] == "Ship it?"
        assert c.post(f"/api/v1/checkpoints/{ck['id']}/approve").status_code == 200
        stack.wait_status(job["id"], "succeeded")
        lines = [x["line"] for x in c.get(f"/api/v1/jobs/{job['id']}/logs").json()["lines"]]
    assert lines == ["preparing", "preparing", "approved", "decision exit 0"]


def test_checkpoint_metrics_pending_and_decision_latency(stack, tmp_path):

    stack.start_api(TASKYARD_API_CHECKPOINT_EXPIRY_INTERVAL_S="0.2")
    stack.start_executor(handlers="handlers_for_tests")
    metrics = stack.spawn("metrics", "taskyard_metrics", [], "TASKYARD_METRICS_PORT")
    stack.wait_ready(metrics)

    with stack.http() as c:
        job = submit(c, "deploy", {"counter_file": str(tmp_path / "a")})
        ck = stack.wait_status(job["id"], "waiting")["checkpoint"]
        deadline = time.monotonic() + 10
        while metric(stack.api.url, "taskyard_checkpoints_pending", kind="approval") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        c.post(f"/api/v1/checkpoints/{ck['id']}/approve")
        stack.wait_status(job["id"], "succeeded")
    deadline = time.monotonic() + 10
    while metric(metrics.url, "taskyard_checkpoint_decision_seconds_count") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert metric(metrics.url, "taskyard_checkpoints_requested_total") == 1
    # The gauge is read from the database by the api's checkpoint loop (every 0.2 s here).
    deadline = time.monotonic() + 10
    while metric(stack.api.url, "taskyard_checkpoints_pending", kind="approval") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)

"""Worker control from the API (drain, stop, pause all) and the audit log of admin actions."""

import time

import pytest

from tests.conftest import create_key
from tests.stack import wait_until


def submit(c, **body) -> dict:
    r = c.post("/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def worker_states(c, worker_id: str) -> str | None:
    for w in c.get("/api/v1/workers").json()["workers"]:
        if w["id"] == worker_id:
            return w["state"]
    return None


def the_worker(c) -> str:
    wait_until(lambda: len(c.get("/api/v1/workers").json()["workers"]) == 1, 30, "the worker's heartbeat")
    return c.get("/api/v1/workers").json()["workers"][0]["id"]


@pytest.mark.one_database(
    "sqlite", why="executor-side drain and stop; queue pause is a JetStream consumer pause"
)
def test_drain_over_the_api_finishes_or_hands_back_without_spending_an_attempt(stack):
    stack.start_api()
    worker = stack.start_executor(
        handlers="handlers_for_tests", slots=2, TASKYARD_EXECUTOR_DRAIN_GRACE_S="1.5"
    )
    with stack.http() as c:
        wid = the_worker(c)
        # One attempt only: were the hand-back counted as one, the next delivery would be dead.
        short = submit(c, type="async_sleep", payload={"seconds": 0.5}, max_attempts=1)
        long = submit(c, type="async_sleep", payload={"seconds": 4}, max_attempts=1)
        stack.wait_status(long["id"], "running")
        r = c.post(f"/api/v1/workers/{wid}/drain")
        assert r.status_code == 202, r.text
        seen = set()
        deadline = time.monotonic() + 30
        while worker.alive() and time.monotonic() < deadline:
            seen.add(worker_states(c, wid))
            time.sleep(0.05)
        assert not worker.alive(), "the drained worker exits by itself"
        assert worker.process.returncode == 0
        wait_until(lambda: worker_states(c, wid) == "gone", 15, "the worker to show as gone")
        assert "draining" in seen, seen
        done = stack.wait_status(short["id"], "succeeded")
        assert done["attempt"] == 1
        back = stack.wait_status(long["id"], "queued")
        assert [e["type"] for e in back["timeline"]].count("handed_back") == 1
        stack.start_executor(handlers="handlers_for_tests")
        finished = stack.wait_status(long["id"], {"succeeded", "dead", "failed"}, timeout=60)
        assert (finished["status"], finished["attempt"]) == ("succeeded", 1), finished
        audit = c.get("/api/v1/audit", params={"action": "worker.drain"}).json()["events"]
        assert [(e["target"], e["outcome"], e["actor"]["name"]) for e in audit] == [(wid, "ok", "admin")]
        assert audit[0]["client"] == "127.0.0.1"


@pytest.mark.one_database(
    "sqlite", why="executor-side drain and stop; queue pause is a JetStream consumer pause"
)
def test_stop_hands_running_jobs_back_at_once_and_exits(stack):
    stack.start_api()
    worker = stack.start_executor(
        handlers="handlers_for_tests", slots=1, TASKYARD_EXECUTOR_DRAIN_GRACE_S="60"
    )
    with stack.http() as c:
        wid = the_worker(c)
        job = submit(c, type="async_sleep", payload={"seconds": 30}, max_attempts=1)
        stack.wait_status(job["id"], "running")
        t0 = time.monotonic()
        assert c.post(f"/api/v1/workers/{wid}/stop").status_code == 202
        wait_until(lambda: not worker.alive(), 20, "the stopped worker to exit")
        assert time.monotonic() - t0 < 20  # not the 60 s drain grace, nor the 30 s job
        back = stack.wait_status(job["id"], "queued")
        assert (back["attempt"], back["worker_id"]) == (1, None)
        assert c.post(f"/api/v1/workers/{wid}/stop").status_code == 404  # gone: nobody to tell
        assert c.post("/api/v1/workers/no-such-worker/drain").status_code == 404


@pytest.mark.one_database(
    "sqlite", why="executor-side drain and stop; queue pause is a JetStream consumer pause"
)
def test_pause_all_queues_and_resume(stack):
    stack.start_api()
    stack.start_executor()
    with stack.http() as c:
        for queue in ("default", "other"):
            submit(c, type="noop", queue=queue)
        r = c.post("/api/v1/queues:pause")
        assert r.status_code == 200 and {"default", "other"} <= set(r.json()["queues"]), r.text
        assert all(q["paused"] for q in c.get("/api/v1/queues").json()["queues"])
        job = submit(c, type="noop")
        time.sleep(1.5)
        paused = c.get(f"/api/v1/jobs/{job['id']}").json()
        assert paused["status"] == "queued" and paused["waiting_reason"]["code"] == "queue_paused"
        assert paused["eta_seconds"] is None and paused["eta_range"] is None  # no ETA while paused
        assert c.post("/api/v1/queues:resume").status_code == 200
        stack.wait_status(job["id"], "succeeded")
        actions = [e["action"] for e in c.get("/api/v1/audit").json()["events"]]
        assert actions[:2] == ["queues.resume_all", "queues.pause_all"]


def test_viewers_and_submitters_may_not_control_and_each_refusal_is_audited(stack):
    stack.start_api(TASKYARD_API_FORWARDED_ALLOW_IPS="127.0.0.1")
    stack.start_executor()
    with stack.http() as c:
        wid = the_worker(c)
    tries = [
        ("POST", f"/api/v1/workers/{wid}/drain", "worker.drain"),
        ("POST", f"/api/v1/workers/{wid}/stop", "worker.stop"),
        ("POST", "/api/v1/queues/default/pause", "queue.pause"),
        ("POST", "/api/v1/queues:pause", "queues.pause_all"),
        ("GET", "/api/v1/audit", "audit.read"),
    ]
    for role in ("viewer", "submitter"):
        key = create_key(stack.db_url, f"a-{role}", role)
        with stack.http(key) as c:
            for method, path, _ in tries:
                r = c.request(method, path, headers={"X-Forwarded-For": "203.0.113.9"})
                assert r.status_code == 403, (role, path, r.text)
    with stack.http() as c:
        assert worker_states(c, wid) == "healthy"  # nothing reached the worker
        refused = c.get("/api/v1/audit", params={"outcome": "refused", "limit": 500}).json()["events"]
        got = sorted((e["actor"]["name"], e["action"]) for e in refused)
        wanted = sorted((f"a-{role}", action) for role in ("viewer", "submitter") for _, _, action in tries)
        assert got == wanted
        # From where: the proxy is trusted here, so the forwarded client is on the record.
        assert {e["client"] for e in refused} == {"203.0.113.9"}
        # Paging and filters.
        page = c.get("/api/v1/audit", params={"actor": "a-viewer", "limit": 2}).json()
        assert len(page["events"]) == 2 and page["next_cursor"]
        rest = c.get("/api/v1/audit", params={"actor": "a-viewer", "cursor": page["next_cursor"]}).json()
        assert len(page["events"]) + len(rest["events"]) == len(tries) and rest["next_cursor"] is None
        assert c.get("/api/v1/audit", params={"since": str(time.time() + 60)}).json()["events"] == []


def test_key_changes_are_audited(stack):
    stack.start_api()
    with stack.http() as c:
        made = c.post("/api/v1/keys", json={"name": "ci", "role": "submitter"}).json()
        assert c.delete(f"/api/v1/keys/{made['id']}").status_code == 204
        events = c.get("/api/v1/audit", params={"action": "key."}).json()["events"]
        assert [(e["action"], e["target"], e["detail"]["name"]) for e in events] == [
            ("key.revoke", made["id"], "ci"),
            ("key.create", made["id"], "ci"),
        ]

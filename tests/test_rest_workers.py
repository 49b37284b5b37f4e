"""Workers in any language over REST: the bash + curl worker of docs/rest-workers.md, strict
priority for REST claims, and what a wrong lease or queue gets (real nats-server, database, api)."""

import os
import re
import signal
import subprocess
import threading
import time
from datetime import datetime

from .conftest import create_key
from .stack import ROOT, Stack, wait_until

DOC = ROOT / "docs" / "rest-workers.md"


def worker_script(tmp_path) -> str:
    """The bash worker exactly as the docs show it."""
    text = DOC.read_text()
    block = re.search(r"<!-- rest-worker-begin -->\n```bash\n(.*?)```\n<!-- rest-worker-end -->", text, re.S)
    assert block, "docs/rest-workers.md lost its worker script"
    path = tmp_path / "rest-worker.sh"
    path.write_text(block.group(1))
    return str(path)


def start_bash_worker(stack: Stack, tmp_path, name: str, queue: str, lease_s: int) -> subprocess.Popen:
    env = {
        "PATH": os.environ["PATH"],
        "TASKYARD_URL": stack.api.url,
        "TASKYARD_KEY": stack.admin_key,
        "QUEUE": queue,
        "WORKER": name,
        "TYPES": '["echo"]',
        "LEASE_S": str(lease_s),
    }
    out = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        ["bash", worker_script(tmp_path)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def rest_worker(c, suffix: str) -> dict | None:
    for w in c.get("/api/v1/workers").json()["workers"]:
        if w["id"] == f"rest-admin-{suffix}":
            return w
    return None


def submit(c, payload: dict, queue: str, priority: str = "normal", max_attempts: int = 3) -> dict:
    body = {
        "type": "echo",
        "queue": queue,
        "priority": priority,
        "payload": payload,
        "max_attempts": max_attempts,
    }
    r = c.post("/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_bash_worker_claims_logs_asks_completes_and_a_killed_one_hands_the_job_back(stack, tmp_path):
    stack.start_api()
    bash = start_bash_worker(stack, tmp_path, "bash1", "rest", lease_s=3)
    try:
        with stack.http() as c:
            # Its first claim registers it: a worker of the queue, with one slot, running nothing.
            wait_until(lambda: rest_worker(c, "bash1") is not None, 15, "the REST worker in GET /workers")
            w = rest_worker(c, "bash1")
            assert w["state"] == "healthy" and w["queues"] == ["rest"] and w["slots"] == 1
            assert w["handlers"] == ["echo"] and w["running"] == []
            payload = {"question": "Which region?", "choices": ["eu", "us"], "work_s": 1}
            job = submit(c, payload, "rest")
            ck: dict = {}

            def asked() -> bool:
                nonlocal ck
                pending = c.get("/api/v1/checkpoints", params={"status": "pending", "job_id": job["id"]})
                found = pending.json()["checkpoints"]
                ck = found[0] if found else {}
                return bool(found)

            wait_until(asked, 20, "the bash worker's question in the inbox")
            assert (
                ck["kind"] == "question"
                and ck["message"] == "Which region?"
                and ck["choices"] == ["eu", "us"]
            )
            running = c.get(f"/api/v1/jobs/{job['id']}").json()
            assert running["status"] == "running" and running["worker_id"] == "rest-admin-bash1"
            assert [r["id"] for r in rest_worker(c, "bash1")["running"]] == [job["id"]]
            time.sleep(4)  # longer than the lease: the ask long-poll keeps it alive
            assert (
                c.post(f"/api/v1/checkpoints/{ck['id']}/answer", json={"answer": "mars"}).status_code == 422
            )
            r = c.post(f"/api/v1/checkpoints/{ck['id']}/answer", json={"answer": "eu"})
            assert r.status_code == 200, r.text
            done = stack.wait_status(job["id"], "succeeded", timeout=30)
            assert done["result"] == {"answer": "eu", "by": "bash1"}
            thread = c.get(f"/api/v1/jobs/{job['id']}/messages").json()["messages"]
            assert [(m["author_kind"], m["checkpoint_id"]) for m in thread] == [
                ("job", ck["id"]),
                ("person", ck["id"]),
            ], thread  # the worker's question and its answer, on the job's thread
            assert thread[1]["text"] == "eu"
            assert done["attempt"] == 1 and done["worker_id"] == "rest-admin-bash1"
            kinds = [e["type"] for e in done["timeline"]]
            assert kinds[0] == "queued" and kinds[-1] == "succeeded" and "decided" in kinds
            assert kinds.count("started") == 1 and "worker_lost" not in kinds
            lines = [x["line"] for x in c.get(f"/api/v1/jobs/{job['id']}/logs").json()["lines"]]
            assert lines == [f"bash worker bash1 took job {job['id']}", "the answer was eu"]

            # Kill -9 mid-job: the lease (3 s) expires, the job goes back with its attempt counted
            # and succeeds on a Python executor.
            long = submit(c, {"work_s": 60, "n": 2}, "rest")
            wait_until(
                lambda: c.get(f"/api/v1/jobs/{long['id']}").json()["status"] == "running",
                20,
                "the second job",
            )
            wait_until(lambda: rest_worker(c, "bash1")["running"], 5, "the heartbeat listing it")
            # Its slot counts: a job queued behind it waits because all slots (its one) are busy.
            third = submit(c, {"n": 3}, "rest")
            reason = c.get(f"/api/v1/jobs/{third['id']}").json()["waiting_reason"]
            assert reason["code"] == "all_busy", reason
            assert reason["message"].startswith(
                "All 1 slots on 1 worker(s) serving `rest` are busy; position 0"
            )
            time.sleep(1.5)  # a heartbeat or two
            bash.send_signal(signal.SIGKILL)
            bash.wait(10)
            killed_at = time.time()
            os.killpg(bash.pid, signal.SIGKILL)  # its `sleep` child too
            stack.start_executor(queues="rest", handlers="handlers_for_tests", slots=1)
            after = stack.wait_status(long["id"], "succeeded", timeout=40)
            assert after["result"] == {"work_s": 60, "n": 2}
            assert stack.wait_status(third["id"], "succeeded")["result"] == {"n": 3}
            assert after["attempt"] == 2 and not after["worker_id"].startswith("rest-")
            rows = after["timeline"]
            lost = [e for e in rows if e["type"] == "worker_lost"]
            assert len(lost) == 1 and lost[0]["worker_id"] == "rest-admin-bash1" and lost[0]["attempt"] == 1
            second_start = next(e for e in rows if e["type"] == "started" and e["attempt"] == 2)
            # Not before the lease ran out (3 s after the last heartbeat, which was < 1 s before the kill).
            waited = datetime.fromisoformat(second_start["at"]).timestamp() - killed_at
            assert waited >= 3 - 1.2, (waited, rows)
            wait_until(lambda: rest_worker(c, "bash1")["running"] == [], 10, "the lease off its heartbeat")
    finally:
        if bash.poll() is None:
            os.killpg(bash.pid, signal.SIGKILL)
    out = (tmp_path / "bash1.out").read_text()
    print(out)
    assert f"claimed job {job['id']} (attempt 1)" in out and 'answered: "eu"' in out
    assert f"completed job {job['id']}" in out and f"claimed job {long['id']} (attempt 1)" in out


def claim(c, queue: str, **body) -> tuple[int, dict]:
    r = c.post(f"/api/v1/queues/{queue}/claim", json={"worker": "py", "types": ["echo"]} | body)
    return r.status_code, (r.json() if r.content else {})


def test_rest_claims_take_high_before_older_normal_jobs_and_long_poll(stack):
    stack.start_api()
    with stack.http() as c:
        started = time.monotonic()
        assert claim(c, "prio", create=True, wait_s=0.5) == (204, {})  # registers the type, empty
        assert time.monotonic() - started >= 0.5
        normals = [submit(c, {"n": i}, "prio")["id"] for i in range(3)]
        high = submit(c, {"n": "high"}, "prio", priority="high")["id"]
        low = submit(c, {"n": "low"}, "prio", priority="low")["id"]
        order = []
        for _ in range(5):
            code, got = claim(c, "prio", wait_s=0)
            assert code == 200, got
            order.append(got["job"]["id"])
            assert got["job"]["attempt"] == 1
            r = c.post(f"/api/v1/leases/{got['lease']['id']}/complete", json={"result": {"ok": True}})
            assert r.status_code == 200, r.text
        assert order == [high, *normals, low]
        for job_id in order:
            stack.wait_status(job_id, "succeeded")
        # Long-poll: a claim waiting when the job is submitted gets it at once (no waiting out wait_s).
        box: dict = {}

        def waiting_claim() -> None:
            with stack.http() as c2:
                box["answer"] = claim(c2, "prio", wait_s=20)
                box["ended"] = time.monotonic()

        thread = threading.Thread(target=waiting_claim)
        thread.start()
        time.sleep(1.0)
        submitted = time.monotonic()
        late = submit(c, {"n": "late"}, "prio")["id"]
        thread.join(25)
        code, got = box["answer"]
        assert code == 200 and got["job"]["id"] == late
        # Answered after the submit (it waited), and well before its 20 s were up.
        assert submitted < box["ended"] < submitted + 3, box["ended"] - submitted
        assert c.post(f"/api/v1/leases/{got['lease']['id']}/complete", json={}).status_code == 200
        # An admin stops the REST worker: its job goes back at once with no attempt spent, and it
        # may claim no more; another worker takes the job as attempt 1.
        held = submit(c, {"n": "held"}, "prio")["id"]
        code, got = claim(c, "prio", wait_s=5)
        assert code == 200 and got["job"]["id"] == held
        assert c.post("/api/v1/workers/rest-admin-py/stop").status_code == 202
        wait_until(
            lambda: stack.wait_status(held, {"queued", "running"})["status"] == "queued", 10, "hand-back"
        )
        r = c.post(f"/api/v1/leases/{got['lease']['id']}/heartbeat")
        assert r.status_code == 409 and "handed_back" in r.json()["detail"], r.text
        code, body = claim(c, "prio", wait_s=0)
        assert code == 409 and "draining" in body["detail"], body
        assert rest_worker(c, "py")["state"] == "draining"
        code, got = claim(c, "prio", wait_s=5, worker="py2")
        assert code == 200 and got["job"]["id"] == held and got["job"]["attempt"] == 1
        assert c.post(f"/api/v1/leases/{got['lease']['id']}/complete", json={}).status_code == 200
        kinds = [e["type"] for e in stack.wait_status(held, "succeeded")["timeline"]]
        assert kinds == ["queued", "started", "handed_back", "started", "succeeded"], kinds


def test_bad_input_unknown_queue_another_keys_lease_and_an_expired_lease(stack):
    stack.start_api()
    other = create_key(stack.db_url, "mallory", "submitter")
    with stack.http() as c, stack.http(other) as m:
        # An unknown queue: 404 naming it; no queue is created by asking.
        code, body = claim(c, "no-such-queue", wait_s=0)
        assert code == 404 and "no-such-queue" in body["detail"], body
        assert "no-such-queue" not in [q["queue"] for q in c.get("/api/v1/queues").json()["queues"]]
        code, body = claim(c, "bad queue!", wait_s=0)
        assert code == 422 and "queue" in body["detail"], body
        assert claim(c, "work", create=True, wait_s=0)[0] == 204
        # A worker of one slot claiming twice at once: the second is refused while the first waits.
        first: dict = {}
        waiting = threading.Thread(
            target=lambda: first.update(r=claim(c, "work", worker="solo", slots=1, wait_s=2))
        )
        waiting.start()
        wait_until(
            lambda: rest_worker(c, "solo") is not None,
            5,
            "solo claiming",
        )
        code, body = claim(c, "work", worker="solo", slots=1, wait_s=0)
        assert code == 409 and "1 claims waiting" in body["detail"], body
        waiting.join(10)
        assert first["r"] == (204, {})
        job = submit(c, {"n": 1}, "work")
        code, got = claim(c, "work", wait_s=5, lease_s=2)
        assert code == 200
        lease = got["lease"]["id"]
        # Another key's calls on the lease: 403, and the lease and the job are untouched.
        for action, body in [("heartbeat", {}), ("complete", {"result": 1}), ("log", {"lines": ["x"]})]:
            r = m.post(f"/api/v1/leases/{lease}/{action}", json=body)
            assert r.status_code == 403 and "another API key" in r.json()["detail"], r.text
        assert (
            c.post(f"/api/v1/leases/{lease}/heartbeat", json={"pct": 50, "message": "half"}).status_code
            == 200
        )
        assert c.post("/api/v1/leases/ls_unknown/heartbeat").status_code == 404
        r = c.post(f"/api/v1/leases/{lease}/fail", json={"error": {}})
        assert r.status_code == 422 and "error.message" in r.json()["detail"], r.text
        r = c.post(f"/api/v1/leases/{lease}/log", json={"lines": ["one"], "stream": "nope"})
        assert r.status_code == 422 and "stream" in r.json()["detail"], r.text
        running = stack.wait_status(job["id"], "running")
        assert running["progress"]["message"] == "half"
        # Silent past the lease: expired. Heartbeat/complete/fail then get 409, nothing changes.
        time.sleep(3)
        for action, body in [
            ("heartbeat", {}),
            ("complete", {"result": 1}),
            ("fail", {"error": {"message": "x"}}),
        ]:
            r = c.post(f"/api/v1/leases/{lease}/{action}", json=body)
            assert r.status_code == 409 and "expired" in r.json()["detail"], r.text
        # The job went back with its attempt counted: the next claim gets attempt 2.
        code, again = claim(c, "work", wait_s=5)
        assert code == 200 and again["job"]["id"] == job["id"] and again["job"]["attempt"] == 2
        assert (
            c.post(f"/api/v1/leases/{again['lease']['id']}/complete", json={"result": "ok"}).status_code
            == 200
        )
        done = stack.wait_status(job["id"], "succeeded")
        assert done["result"] == "ok" and done["attempt"] == 2
        lost = [e for e in done["timeline"] if e["type"] == "worker_lost"]
        assert len(lost) == 1 and lost[0]["attempt"] == 1
        # A finished lease: 409 too.
        r = c.post(f"/api/v1/leases/{again['lease']['id']}/complete", json={"result": "twice"})
        assert r.status_code == 409 and "completed" in r.json()["detail"]
        assert stack.wait_status(job["id"], "succeeded")["result"] == "ok"
        # A job cancelled while a REST worker holds it: the lease ends, its next call says so.
        doomed = submit(c, {"n": "doomed"}, "work")
        code, got = claim(c, "work", wait_s=5)
        assert code == 200 and got["job"]["id"] == doomed["id"]
        assert c.post(f"/api/v1/jobs/{doomed['id']}/cancel").status_code == 200
        wait_until(
            lambda: c.post(f"/api/v1/leases/{got['lease']['id']}/heartbeat").status_code == 409,
            5,
            "the cancelled job's lease ending",
        )
        r = c.post(f"/api/v1/leases/{got['lease']['id']}/complete", json={"result": "late"})
        assert r.status_code == 409 and "cancelled" in r.json()["detail"], r.text
        assert stack.wait_status(doomed["id"], "cancelled")["result"] is None
        # Held past the job's timeout_s (heartbeats or not): timed out and retried, as an executor does.
        r = c.post(
            "/api/v1/jobs",
            json={"type": "echo", "queue": "work", "payload": {}, "timeout_s": 1, "backoff": {"base_s": 60}},
        )
        slow = r.json()
        code, got = claim(c, "work", wait_s=5)
        assert code == 200 and got["job"]["id"] == slow["id"] and got["job"]["timeout_s"] == 1
        wait_until(
            lambda: c.post(f"/api/v1/leases/{got['lease']['id']}/heartbeat").status_code == 409,
            5,
            "the timeout",
        )
        retrying = stack.wait_status(slow["id"], "retrying")
        assert retrying["error"]["message"] == "timed out after 1s" and retrying["attempt"] == 1


def test_an_answer_outlives_the_lease_that_asked(stack):
    """Asked, answered, then the lease lost: the next holder gets the answer from the job's journal
    (on the claim and on asking again) without a second question in the inbox."""
    stack.start_api()
    with stack.http() as c:
        assert claim(c, "ask", create=True, wait_s=0)[0] == 204
        job = submit(c, {"n": 1}, "ask")
        code, got = claim(c, "ask", wait_s=5, lease_s=2)
        assert code == 200 and got["job"]["answers"] == {}
        lease = got["lease"]["id"]
        question = {
            "question": "Which library?",
            "name": "lib",
            "choices": ["httpx", "requests"],
            "wait_s": 0,
        }
        asked = c.post(f"/api/v1/leases/{lease}/ask", json=question).json()
        assert asked["status"] == "pending" and asked["checkpoint_id"].startswith("ck_")
        ck = c.get(f"/api/v1/checkpoints/{asked['checkpoint_id']}").json()
        assert ck["job_id"] == job["id"] and ck["kind"] == "question" and ck["status"] == "pending"
        assert c.post(f"/api/v1/checkpoints/{ck['id']}/answer", json={"answer": "httpx"}).status_code == 200
        answered = c.post(f"/api/v1/leases/{lease}/ask", json=question).json()
        assert (answered["status"], answered["answer"], answered["by"]) == ("answered", "httpx", "admin")
        assert stack.wait_status(job["id"], "running")["status"] == "running"  # the decision moved nothing
        time.sleep(3)  # the lease runs out
        code, again = claim(c, "ask", wait_s=10)
        assert code == 200 and again["job"]["id"] == job["id"] and again["job"]["attempt"] == 2
        assert again["job"]["answers"] == {"lib": "httpx"}
        replay = c.post(f"/api/v1/leases/{again['lease']['id']}/ask", json=question).json()
        assert (replay["status"], replay["answer"], replay["checkpoint_id"]) == (
            "answered",
            "httpx",
            ck["id"],
        )
        assert len(c.get("/api/v1/checkpoints", params={"job_id": job["id"]}).json()["checkpoints"]) == 1
        assert (
            c.post(f"/api/v1/leases/{again['lease']['id']}/complete", json={"result": "httpx"}).status_code
            == 200
        )
        kinds = [e["type"] for e in stack.wait_status(job["id"], "succeeded")["timeline"]]
        # (the second `started` and the `worker_lost` it reveals share a time: either order)
        assert kinds[:3] == ["queued", "started", "decided"] and kinds[-1] == "succeeded", kinds
        assert sorted(kinds[3:5]) == ["started", "worker_lost"], kinds

"""Workers in any language over REST: the bash + curl worker of docs/rest-workers.md, strict
priority for REST claims, and what a wrong lease or queue gets (real nats-server, database, api)."""

import math
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


def start_bash_worker(
    stack: Stack, tmp_path, name: str, queue: str, lease_s: int, types: str = '["echo"]'
) -> subprocess.Popen:
    env = {
        "PATH": os.environ["PATH"],
        "TASKYARD_URL": stack.api.url,
        "TASKYARD_KEY": stack.admin_key,
        "QUEUE": queue,
        "WORKER": name,
        "TYPES": types,
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
            payload = {"question": "Which region?", "choices": ["eu", "us"], "work_s": 1, "cost_usd": 0.02}
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
            # What it cost: the worker's reported spend, and the lease's wall time (it waited > 4 s).
            (spent,) = c.get(f"/api/v1/jobs/{job['id']}/costs").json()["attempts"]
            assert (spent["outcome"], spent["measured"], spent["cpu_s"]) == ("succeeded", "lease", 0)
            assert spent["wall_s"] >= 5 and spent["costs"] == [
                {"unit": "usd", "kind": "llm_tokens", "amount": 0.02}
            ], spent

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
            view = c.get(f"/api/v1/jobs/{third['id']}").json()
            reason = view["waiting_reason"]
            assert reason["code"] == "all_busy", reason
            seen = reason["evidence"]
            assert (seen["slots"], seen["busy"], seen["workers"], view["queue_position"]) == (1, 1, 1, 0)
            # The ETA counts the REST worker's starts too (the first job, a few seconds ago).
            assert view["eta_seconds"] is not None and "next free slot expected" in reason["message"], view
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
        for action, body in [
            ("heartbeat", {}),
            ("complete", {"result": 1}),
            ("fail", {"error": {"message": "x"}, "retry": False}),
            ("log", {"lines": ["x"]}),
            ("ask", {"question": "Mine?", "wait_s": 0}),
        ]:
            r = m.post(f"/api/v1/leases/{lease}/{action}", json=body)
            assert r.status_code == 403 and "another API key" in r.json()["detail"], r.text
        assert c.get(f"/api/v1/jobs/{job['id']}/logs").json()["lines"] == []
        assert c.get("/api/v1/checkpoints", params={"job_id": job["id"]}).json()["checkpoints"] == []
        assert c.get(f"/api/v1/jobs/{job['id']}/messages").json()["messages"] == []
        assert (
            c.post(f"/api/v1/leases/{lease}/heartbeat", json={"pct": 50, "message": "half"}).status_code
            == 200
        )
        assert c.post("/api/v1/leases/ls_unknown/heartbeat").status_code == 404
        r = c.post(f"/api/v1/leases/{lease}/fail", json={"error": {}})
        assert r.status_code == 422 and "error.message" in r.json()["detail"], r.text
        r = c.post(f"/api/v1/leases/{lease}/log", json={"lines": ["one"], "stream": "nope"})
        assert r.status_code == 422 and "stream" in r.json()["detail"], r.text
        # The heartbeat's progress reaches the job through EVENTS and the projector: it shows soon
        # after the 200, not with it (the job was `running` before it).
        running = wait_until(
            lambda: (job_now := c.get(f"/api/v1/jobs/{job['id']}").json())["progress"] and job_now,
            5,
            "the heartbeat's progress on the job",
        )
        assert running["status"] == "running" and running["progress"]["message"] == "half"
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


def test_rest_attempts_count_in_a_batchs_costs_retries_included(stack):
    """A REST worker's complete and fail carry what the attempt used and spent; the api adds the
    lease's wall time. A batch's totals are the sums over its attempts' outcome events, the failed
    first attempts included; a lease that expired reports nothing (a lost worker); bad figures are
    a 422 that leaves the lease and the job as they were."""
    stack.start_api()
    with stack.http() as c:
        assert claim(c, "costly", create=True, wait_s=0)[0] == 204
        jobs = [
            {
                "type": "echo",
                "queue": "costly",
                "payload": {"n": i},
                "labels": {"team": "agents"},
                "backoff": {"base_s": 0.05, "factor": 1, "max_s": 0.05},
            }
            for i in range(3)
        ]
        created = c.post("/api/v1/batches", json={"jobs": jobs, "name": "rest-costs"})
        assert created.status_code == 201, created.text
        batch_id = created.json()["batch_id"]
        ids = {j["id"] for j in created.json()["jobs"]}

        # The first holder of job n=0 goes silent: its lease expires, its attempt reports nothing.
        code, lost = claim(c, "costly", wait_s=5, lease_s=2)
        assert code == 200 and lost["job"]["attempt"] == 1
        bad = [
            {"result": 1, "costs": [{"amount": -1}]},
            {"result": 1, "usage": {"cpu_s": 1, "wall_s": 9}},
            {"result": 1, "costs": [{"amount": 1, "unit": "US dollars"}]},
        ]
        for body in bad:
            r = c.post(f"/api/v1/leases/{lost['lease']['id']}/complete", json=body)
            assert r.status_code == 422, r.text
        assert stack.wait_status(lost["job"]["id"], "running")["attempt"] == 1  # nothing changed
        time.sleep(3)

        spent_by: dict[str, list[tuple[int, str]]] = {}
        while len(spent_by) < 3 or any(len(v) < 2 for v in spent_by.values()):
            code, got = claim(c, "costly", wait_s=10)
            assert code == 200, got
            job, lease = got["job"], got["lease"]["id"]
            time.sleep(0.2)  # some wall time on the lease
            attempts = spent_by.setdefault(job["id"], [])
            if not attempts:  # each job's first attempt it runs fails, spending 0.1 usd and 500 tokens
                body = {
                    "error": {"message": "flaky provider"},
                    "usage": {"cpu_s": 0.5},
                    "costs": [{"amount": 0.1}, {"amount": 500, "unit": "tokens"}],
                }
                r = c.post(f"/api/v1/leases/{lease}/fail", json=body)
                assert r.status_code == 200 and r.json()["outcome"] == "retrying", r.text
            else:  # then it succeeds, spending 0.2 usd in two reports, with CPU and RSS
                body = {
                    "result": {"n": job["payload"]["n"]},
                    "usage": {"cpu_s": 1.25, "peak_rss_bytes": 50_000_000},
                    "costs": [{"amount": 0.15}, {"amount": 0.05}],
                }
                r = c.post(f"/api/v1/leases/{lease}/complete", json=body)
                assert r.status_code == 200, r.text
            attempts.append((job["attempt"], "retrying" if not attempts else "succeeded"))
        assert set(spent_by) == ids
        assert spent_by[lost["job"]["id"]] == [(2, "retrying"), (3, "succeeded")]
        for job_id in ids:
            stack.wait_status(job_id, "succeeded")

        reported = []
        for job_id in ids:
            job = c.get(f"/api/v1/jobs/{job_id}").json()
            entries = [e for e in job["timeline"] if "usage" in e["data"]]
            assert [e["type"] for e in entries] == ["retrying", "succeeded"], job["timeline"]
            assert all(e["data"]["usage"]["wall_s"] >= 0.2 for e in entries), entries
            per_attempt = c.get(f"/api/v1/jobs/{job_id}/costs").json()["attempts"]
            assert [(a["outcome"], a["measured"], a["cpu_s"]) for a in per_attempt] == [
                ("retrying", "worker", 0.5),
                ("succeeded", "worker", 1.25),
            ], per_attempt
            assert per_attempt[1]["peak_rss_bytes"] == 50_000_000
            reported += entries

        def batch_group() -> dict | None:
            groups = c.get("/api/v1/costs", params={"since": "1h", "by": "batch"}).json()["groups"]
            return next((g for g in groups if g["key"] == batch_id), None)

        group = wait_until(lambda: (g := batch_group()) and g["attempts"] == 6 and g, 10, "the costs")
        assert group["jobs"] == 3
        assert math.isclose(group["cpu_s"], 3 * (0.5 + 1.25))
        assert math.isclose(
            group["wall_s"], sum(e["data"]["usage"]["wall_s"] for e in reported), abs_tol=1e-5
        )
        amounts = {(x["unit"], x["kind"]): x["amount"] for x in group["costs"]}
        assert math.isclose(amounts[("usd", "llm_tokens")], 3 * 0.3)
        assert math.isclose(amounts[("tokens", "llm_tokens")], 3 * 500)
        team = c.get("/api/v1/costs", params={"since": "1h", "by": "label:team"}).json()["groups"]
        assert [(g["key"], g["attempts"]) for g in team] == [("agents", 6)]

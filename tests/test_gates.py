"""Work made of many jobs, end to end: dependencies, workflows and batches on real processes."""

import time

from .invariants import query, wait_all_final
from .stack import wait_until

HANDLERS = "handlers_for_tests"


def _timeline_types(job: dict) -> list[str]:
    return [e["type"] for e in job["timeline"]]


def test_a_diamond_workflow_joins_both_results_into_the_last_node(stack):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS)
    spec = {
        "nodes": [
            {"id": "scan", "type": "echo", "payload": {"findings": ["a", "b"]}},
            {"id": "compliance", "type": "echo", "payload": {"ok": True}, "needs": ["scan"],
             "inputs": {"found": "scan/findings/1"}},
            {"id": "review", "type": "echo", "payload": {"by": "vera"}, "needs": ["scan"]},
            {"id": "notify", "type": "echo", "needs": ["compliance", "review", "scan"],
             "inputs": {"compliance": "compliance/ok", "review": "review/by", "all": "scan"}},
        ]
    }  # fmt: skip
    with stack.http() as c:
        created = c.post("/api/v1/workflows", json=spec)
        assert created.status_code == 201, created.text
        workflow = created.json()
        nodes = {n["id"]: n for n in workflow["nodes"]}
        assert nodes["scan"]["status"] in ("queued", "running", "succeeded")
        assert nodes["notify"]["status"] == "blocked"
        wait_until(
            lambda: c.get(f"/api/v1/workflows/{workflow['id']}").json()["status"] == "succeeded",
            30,
            "the workflow to succeed",
        )
        done = {n["id"]: n for n in c.get(f"/api/v1/workflows/{workflow['id']}").json()["nodes"]}
        notify = c.get(f"/api/v1/jobs/{done['notify']['job_id']}").json()
    assert notify["result"] == {"compliance": True, "review": "vera", "all": {"findings": ["a", "b"]}}
    assert done["compliance"]["result"] == {"ok": True, "found": "b"}
    # notify started only after both of its parents had ended.
    assert notify["started_at"] >= max(done["compliance"]["finished_at"], done["review"]["finished_at"])
    assert {p["name"] for p in notify["parents"]} == {"compliance", "review", "scan"}


def test_a_blocked_job_names_its_open_parents_and_a_skipped_one_the_parent_that_failed(stack):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS)  # registers the test handlers; serves `default` only
    with stack.http() as c:
        parent = c.post("/api/v1/jobs", json={"type": "always_fails", "max_attempts": 1, "queue": "held"})
        assert parent.status_code == 201, parent.text
        parent = parent.json()
        batch = c.post(
            "/api/v1/jobs:batch",
            json={"jobs": [
                {"type": "noop", "name": "child", "depends_on": [parent["id"]]},
                {"type": "noop", "name": "grandchild", "depends_on": ["child"]},
                {"type": "noop", "name": "anyway", "depends_on": [{"job": parent["id"], "on": "finished"}]},
            ]},
        )  # fmt: skip
        assert batch.status_code == 201, batch.text
        child, grandchild, anyway = batch.json()["jobs"]
        assert child["status"] == "blocked" and batch.json()["batch_id"]
        seen = c.get(f"/api/v1/jobs/{child['id']}").json()
        reason = seen["waiting_reason"]
        assert reason["code"] == "blocked", reason
        assert f"{parent['id']} (queued, position 0" in reason["message"], reason
        assert reason["evidence"]["parents"][0]["status"] == "queued"
        # Nobody serves `held` yet: the parent waits at position 0; now someone does.
        stack.start_executor(queues="held", handlers=HANDLERS)
        stack.wait_status(parent["id"], "dead")
        skipped = stack.wait_status(child["id"], "skipped")
        assert skipped["error"]["parent"] == parent["id"]
        assert f"parent {parent['id']} dead" in skipped["error"]["message"]
        cascaded = stack.wait_status(grandchild["id"], "skipped")
        assert cascaded["error"]["parent"] == child["id"]
        stack.wait_status(anyway["id"], "succeeded")  # `on: finished` runs whatever the outcome


def test_retrying_a_failed_middle_node_reruns_it_and_its_descendants_only(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS)
    flag = tmp_path / "may-succeed"
    spec = {
        "nodes": [
            {"id": "top", "type": "echo", "payload": {}},
            {"id": "sibling", "type": "echo", "payload": {}, "needs": ["top"]},
            {"id": "middle", "type": "fails_until_file", "payload": {"path": str(flag)}, "max_attempts": 1,
             "needs": ["top"]},
            {"id": "bottom", "type": "echo", "needs": ["middle"]},
            {"id": "after-sibling", "type": "echo", "needs": ["sibling"]},
        ],
        "on_failure": "continue",
    }  # fmt: skip
    with stack.http() as c:
        workflow = c.post("/api/v1/workflows", json=spec).json()
        url = f"/api/v1/workflows/{workflow['id']}"
        wait_until(lambda: c.get(url).json()["status"] == "failed", 30, "the middle node to fail")
        nodes = {n["id"]: n for n in c.get(url).json()["nodes"]}
        assert nodes["bottom"]["status"] == "skipped" and nodes["after-sibling"]["status"] == "succeeded"
        # A skipped node names the parent that failed by its node name beside its id.
        assert nodes["bottom"]["error"]["parent_name"] == "middle"
        assert f"parent 'middle' ({nodes['middle']['job_id']}) dead" in nodes["bottom"]["error"]["message"]
        flag.write_text("yes")
        retried = c.post(f"{url}/retry", json={"node": "middle"})
        assert retried.status_code == 200, retried.text
        wait_until(lambda: c.get(url).json()["status"] == "succeeded", 30, "the workflow to succeed")
        ids = {n["id"]: n["job_id"] for n in c.get(url).json()["nodes"]}
    runs = dict(
        query(
            stack.db_url,
            "SELECT j.node, COUNT(e.id) FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id "
            f"AND e.type = 'started' WHERE j.workflow_id = '{workflow['id']}' GROUP BY j.node",
        )
    )
    assert runs == {"top": 1, "sibling": 1, "after-sibling": 1, "middle": 2, "bottom": 1}, runs
    assert len(ids) == 5


def test_a_batch_with_five_failures_reports_them_calls_back_once_and_retries_only_those(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS, slots=16)
    flag = tmp_path / "fixed"
    jobs = [
        {"type": "fails_until_file", "payload": {"path": str(flag)}, "max_attempts": 1}
        if i % 40 == 7
        else {"type": "noop"}
        for i in range(200)
    ]
    body = {"jobs": jobs, "name": "nightly", "on_complete": {"type": "echo", "payload": {"note": "done"}}}
    with stack.http() as c:
        created = c.post("/api/v1/batches", json=body)
        assert created.status_code == 201, created.text
        batch_id = created.json()["batch_id"]
        failing = {
            j["id"] for j, spec in zip(created.json()["jobs"], jobs, strict=True) if spec["type"] != "noop"
        }
        assert len(failing) == 5
        wait_until(lambda: c.get(f"/api/v1/batches/{batch_id}").json()["done"] == 200, 60, "the batch to end")
        progress = c.get(f"/api/v1/batches/{batch_id}").json()
        assert (progress["succeeded"], progress["total"], progress["percent"]) == (195, 200, 100.0)
        [group] = progress["failures"]
        assert group["count"] == 5 and {e["id"] for e in group["examples"]} == failing

        # The callback ran once, given the summary naming the five.
        def callback() -> list:
            return query(stack.db_url, "SELECT id, payload FROM jobs WHERE node = 'on_complete'")

        wait_until(lambda: len(callback()) == 1, 30, "the on_complete callback")
        cb_id = callback()[0][0]
        cb = stack.wait_status(cb_id, "succeeded")
        named = {e["id"] for g in cb["result"]["batch"]["failures"] for e in g["examples"]}
        assert named == failing and cb["result"]["note"] == "done"
        flag.write_text("ok")
        retried = c.post(f"/api/v1/batches/{batch_id}/retry").json()
        assert retried == {"retried": 5, "refused": []}
        wait_until(lambda: c.get(f"/api/v1/batches/{batch_id}").json()["succeeded"] == 200, 60, "all 200")
    started = dict(
        query(
            stack.db_url,
            "SELECT j.id, COUNT(*) FROM jobs j JOIN job_events e ON e.job_id = j.id AND e.type = 'started' "
            f"WHERE j.batch_id = '{batch_id}' GROUP BY j.id",
        )
    )
    assert {i for i, n in started.items() if n == 2} == failing
    assert all(n == 1 for i, n in started.items() if i not in failing) and len(started) == 200
    time.sleep(1)
    assert len(callback()) == 1  # once per completion: the retry's second completion has none


def test_bad_graphs_are_422s_naming_the_node_and_store_nothing(stack):
    stack.start_api()
    cases = [
        ({"nodes": [{"id": "a", "type": "noop", "needs": ["b"]}, {"id": "b", "type": "noop", "needs": ["a"]}]},
         "nodes[0].needs: a cycle (a → b → a)"),
        ({"nodes": [{"id": "a", "type": "noop", "needs": ["ghost"]}]},
         "nodes[0].needs: unknown 'ghost' (neither a job id nor a name in this request)"),
        ({"nodes": [{"id": "a", "type": "no-such-type"}]}, "nodes[0].type: unknown job type 'no-such-type'"),
        ({"nodes": [{"id": "a\u0000b", "type": "noop"}]}, "nodes[0].id: NUL character not allowed"),
        ({"nodes": [{"id": "a", "type": "noop"}, {"id": "a", "type": "noop"}]}, "nodes[1].id: 'a' is used twice"),
    ]  # fmt: skip
    with stack.http() as c:
        for body, message in cases:
            r = c.post("/api/v1/workflows", json=body)
            assert r.status_code == 422 and r.json()["detail"].startswith(message), (message, r.text)
    assert query(stack.db_url, "SELECT COUNT(*) FROM jobs")[0][0] == 0
    assert query(stack.db_url, "SELECT COUNT(*) FROM workflows")[0][0] == 0
    assert wait_all_final(stack.db_url, 0, 1) == {}


def test_a_map_node_fans_out_caps_its_items_and_joins_their_results_in_order(stack):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS, slots=8)
    spec = {
        "nodes": [
            {"id": "scan", "type": "echo", "payload": {"files": ["a.csv", "b.csv", "c.csv"]}},
            {"id": "each", "type": "sleep_echo", "payload": {"seconds": 0.5}, "needs": ["scan"],
             "map": {"over": "scan/files", "parallel": 2}},
            {"id": "report", "type": "echo", "needs": ["each"], "inputs": {"all": "each", "second": "each/1/item"}},
        ]
    }  # fmt: skip
    with stack.http() as c:
        created = c.post("/api/v1/workflows", json=spec)
        assert created.status_code == 201, created.text
        url = f"/api/v1/workflows/{created.json()['id']}"
        # Sampled while it runs: never more than `parallel` items queued or running at once.
        peak, status, deadline = 0, "running", time.monotonic() + 30
        while status == "running" and time.monotonic() < deadline:
            workflow = c.get(url).json()
            status = workflow["status"]
            items = [n for n in workflow["nodes"] if n["id"].startswith("each[")]
            peak = max(peak, sum(n["status"] in ("queued", "running") for n in items))
            time.sleep(0.02)
        assert status == "succeeded", workflow
        assert peak == 2, peak
        nodes = {n["id"]: n for n in workflow["nodes"]}
        report = c.get(f"/api/v1/jobs/{nodes['report']['job_id']}").json()
    items = [{"seconds": 0.5, "item": f, "index": i} for i, f in enumerate(["a.csv", "b.csv", "c.csv"])]
    assert report["result"] == {"all": items, "second": "b.csv"}
    assert nodes["each"]["result"] == items and nodes["each"]["map"]["total"] == 3
    assert [nodes[f"each[{i}]"]["status"] for i in range(3)] == ["succeeded"] * 3
    # The third item started only once the first had ended (its slot).
    assert nodes["each[2]"]["started_at"] >= nodes["each[0]"]["finished_at"]
    assert report["started_at"] >= max(nodes[f"each[{i}]"]["finished_at"] for i in range(3))
    # Each item ran once.
    runs = query(
        stack.db_url,
        "SELECT j.node, COUNT(e.id) FROM jobs j JOIN job_events e ON e.job_id = j.id AND e.type = 'started' "
        f"WHERE j.workflow_id = '{workflow['id']}' GROUP BY j.node",
    )
    assert dict(runs) == {"scan": 1, "each[0]": 1, "each[1]": 1, "each[2]": 1, "report": 1}


def test_a_map_over_something_that_is_not_a_list_fails_the_map_node_naming_it(stack):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS)
    spec = {
        "nodes": [
            {"id": "scan", "type": "echo", "payload": {"files": "a.csv"}},
            {"id": "each", "type": "echo", "needs": ["scan"], "map": {"over": "scan/files"}},
            {"id": "after", "type": "echo", "needs": ["each"]},
        ]
    }
    with stack.http() as c:
        unneeded = {"nodes": [spec["nodes"][0], {**spec["nodes"][1], "needs": []}]}
        refused = c.post("/api/v1/workflows", json=unneeded)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"].startswith("nodes[1].map.over: 'scan' is not among its needs")
        url = f"/api/v1/workflows/{c.post('/api/v1/workflows', json=spec).json()['id']}"
        wait_until(lambda: c.get(url).json()["status"] == "failed", 30, "the workflow to fail")
        nodes = {n["id"]: n for n in c.get(url).json()["nodes"]}
    assert nodes["each"]["status"] == "failed"
    assert nodes["each"]["error"] == {
        "type": "InputMissing",
        "message": "map.over 'scan/files' is str, not a list",
    }
    assert nodes["after"]["status"] == "skipped" and nodes["after"]["error"]["parent_name"] == "each"
    assert set(nodes) == {"scan", "each", "after"}  # no item was stored


def test_retrying_a_failed_map_node_reruns_its_failed_items_only_and_joins_again(stack, tmp_path):
    stack.start_api()
    stack.start_executor(handlers=HANDLERS, slots=8)
    there, later = tmp_path / "there", tmp_path / "later"
    there.write_text("x")
    paths = [str(there), str(later), str(there)]
    spec = {
        "on_failure": "continue",
        "nodes": [
            {"id": "scan", "type": "echo", "payload": {"paths": paths}},
            {"id": "each", "type": "item_file_exists", "max_attempts": 1, "needs": ["scan"],
             "map": {"over": "scan/paths"}},
            {"id": "report", "type": "echo", "needs": ["each"], "inputs": {"found": "each"}},
        ],
    }  # fmt: skip
    with stack.http() as c:
        workflow = c.post("/api/v1/workflows", json=spec).json()
        url = f"/api/v1/workflows/{workflow['id']}"
        wait_until(lambda: c.get(url).json()["status"] == "failed", 30, "the map node to fail")
        nodes = {n["id"]: n for n in c.get(url).json()["nodes"]}
        assert nodes["each"]["status"] == "failed" and nodes["each"]["error"]["type"] == "MapItemFailed"
        assert nodes["each"]["error"]["items"] == [
            {"index": 1, "id": nodes["each[1]"]["job_id"], "status": "dead", "error": "JobError"}
        ], nodes["each"]["error"]
        assert nodes["report"]["status"] == "skipped"
        later.write_text("x")
        retried = c.post(f"{url}/retry", json={"node": "each"})
        assert retried.status_code == 200, retried.text
        # It waits for its item again; a quick item may have ended and joined it already.
        assert retried.json()["status"] in ("blocked", "succeeded"), retried.json()
        wait_until(lambda: c.get(url).json()["status"] == "succeeded", 30, "the workflow to succeed")
        nodes = {n["id"]: n for n in c.get(url).json()["nodes"]}
        again = c.post(f"{url}/retry", json={"node": "each"})
        assert again.status_code == 409, again.text
    assert nodes["report"]["result"] == {"found": [{"found": p} for p in paths]}
    runs = query(
        stack.db_url,
        "SELECT j.node, COUNT(e.id) FROM jobs j JOIN job_events e ON e.job_id = j.id AND e.type = 'started' "
        f"WHERE j.workflow_id = '{workflow['id']}' GROUP BY j.node",
    )
    assert dict(runs) == {"scan": 1, "each[0]": 1, "each[1]": 2, "each[2]": 1, "report": 1}


def test_cancelling_and_retrying_a_batch_of_1000_members_moves_them_all_in_pages(stack):
    stack.start_api()  # no executor serves `parked`: every member waits in JOBS
    with stack.http() as c:
        created = c.post("/api/v1/batches", json={"jobs": [{"type": "noop", "queue": "parked"}] * 1000})
        assert created.status_code == 201, created.text
        batch_id = created.json()["batch_id"]
        started = time.monotonic()
        assert c.post(f"/api/v1/batches/{batch_id}/cancel").json() == {"cancelled": 1000, "refused": []}
        cancel_s = time.monotonic() - started
        batch = c.get(f"/api/v1/batches/{batch_id}").json()
        assert (batch["counts"], batch["done"], batch["completed_at"] is not None) == (
            {"cancelled": 1000},
            1000,
            True,
        )

        # Their messages left JOBS with them: nothing waits in `parked` any more (the queue
        # listing samples consumers at most every queue_state_cache_s).
        def depth() -> int:
            return next(
                q["depth"] for q in c.get("/api/v1/queues").json()["queues"] if q["queue"] == "parked"
            )

        wait_until(lambda: depth() == 0, 5, "the cancelled members' messages to leave JOBS")
        assert c.post(f"/api/v1/batches/{batch_id}/retry").json() == {"retried": 1000, "refused": []}
        assert c.get(f"/api/v1/batches/{batch_id}").json()["counts"] == {"queued": 1000}
    print(f"cancelled 1,000 members in {cancel_s:.2f} s")

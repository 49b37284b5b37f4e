"""Strict priority, queue subsets, concurrent slots."""

import time
from datetime import datetime


def started_at(job: dict) -> float:
    [start] = [e["at"] for e in job["timeline"] if e["type"] == "started"]
    return datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()


def finished_at(job: dict) -> float:
    return datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")).timestamp()


def test_strict_priority_within_a_queue(stack):
    stack.start_api()
    order = ["low", "normal", "high"] * 4
    with stack.http() as c:
        batch = [{"type": "noop", "priority": p, "labels": {"i": str(i)}} for i, p in enumerate(order)]
        jobs = c.post("/api/v1/jobs:batch", json={"jobs": batch}).json()["jobs"]
    stack.start_executor(slots=1)
    done = [stack.wait_status(j["id"], "succeeded") for j in jobs]
    ran = sorted(done, key=started_at)
    assert [j["priority"] for j in ran] == ["high"] * 4 + ["normal"] * 4 + ["low"] * 4
    for prio in ("high", "normal", "low"):  # FIFO within a priority
        ids = [j["id"] for j in ran if j["priority"] == prio]
        assert ids == sorted(ids)


def test_executor_serves_only_its_queues(stack):
    stack.start_api()
    stack.start_executor(queues="alpha")
    with stack.http() as c:
        a = c.post("/api/v1/jobs", json={"type": "noop", "queue": "alpha"}).json()
        b = c.post("/api/v1/jobs", json={"type": "noop", "queue": "beta"}).json()
        stack.wait_status(a["id"], "succeeded")
        time.sleep(1)
        assert c.get(f"/api/v1/jobs/{b['id']}").json()["status"] == "queued"
    stack.start_executor(queues="beta,gamma")
    stack.wait_status(b["id"], "succeeded")


def test_slots_run_async_and_blocking_handlers_concurrently(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests", slots=4)
    with stack.http() as c:
        specs = [{"type": "async_sleep", "payload": {"seconds": 1.5}} for _ in range(2)]
        specs += [{"type": "blocking_sleep", "payload": {"seconds": 1.5}} for _ in range(2)]
        jobs = c.post("/api/v1/jobs:batch", json={"jobs": specs}).json()["jobs"]
    done = [stack.wait_status(j["id"], "succeeded") for j in jobs]
    # All four ran at the same time: each started before any of them finished.
    assert max(started_at(j) for j in done) < min(finished_at(j) for j in done)

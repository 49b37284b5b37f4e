"""Strict priority, queue subsets, concurrent slots."""

import time
from datetime import datetime

import pytest

from .stack import run_async

pytestmark = pytest.mark.one_database(
    "sqlite", why="executor-side: which consumer an executor pulls from and how many it arms"
)


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


def test_an_idle_worker_takes_a_stored_job_without_waiting_for_a_wake_up(stack):
    # No API, so no wake-up: the job is published straight to JOBS. The idle poll is 30 s, so only
    # the worker's armed long pull can start it within the 10 s allowed.
    stack.start_executor(TASKYARD_EXECUTOR_IDLE_POLL_S="30")
    time.sleep(0.5)  # the first round found every consumer empty and armed them

    async def publish_and_wait() -> list[str]:
        import nats

        from taskyard_common.coalesce import parts
        from taskyard_common.schemas import JobSpec, message_events
        from taskyard_common.settings import NatsSettings
        from taskyard_common.topology import Topology

        topo = Topology(NatsSettings(prefix=stack.prefix))
        nc = await nats.connect(stack.nats.url)
        try:
            js = nc.jetstream()
            events = await js.subscribe(topo.event_subject(">"), ordered_consumer=True)
            spec = JobSpec(id="direct-1", type="noop", priority="low")
            await js.publish(
                topo.job_subject("default", "low"),
                spec.model_dump_json().encode(),
                headers={"Nats-Msg-Id": spec.id},
            )
            seen: list[str] = []
            while "succeeded" not in seen:
                msg = await events.next_msg(timeout=10)
                sent = message_events(msg.data, topo.is_batch_subject(msg.subject))
                seen += [e.type for one in sent if one.job_id == "direct-1" for e in parts(one)]
            return seen
        finally:
            await nc.close()

    assert run_async(publish_and_wait()) == ["started", "succeeded"]


def test_armed_pulls_never_take_more_jobs_than_free_slots(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests", slots=2)
    time.sleep(0.5)  # idle: long pulls armed on two consumers (high, normal), one per free slot
    specs = [
        {"type": "async_sleep", "payload": {"seconds": 0.4}, "priority": p}
        for p in ["low", "normal", "high"] * 2
    ]
    with stack.http() as c:
        jobs = c.post("/api/v1/jobs:batch", json={"jobs": specs}).json()["jobs"]
    done = [stack.wait_status(j["id"], "succeeded") for j in jobs]
    spans = [(started_at(j), finished_at(j)) for j in done]
    most = max(sum(1 for s, f in spans if s <= at < f) for at, _ in spans)
    assert most <= 2, spans


@pytest.mark.serial  # the armed pull it checks depends on the executor's 1 s timing: run alone
def test_under_a_backlog_an_empty_higher_priority_is_armed_and_its_job_starts_next(stack):
    """With 16 slots or more, a `high` consumer found empty while `normal` has a backlog holds a
    long pull (rounds then skip its round trip): a high job stored mid-backlog is handed over at
    once, ahead of every normal job still queued."""
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests", slots=16)
    with stack.http() as c:
        backlog = c.post(
            "/api/v1/jobs:batch", json={"jobs": [{"type": "async_sleep", "payload": {"seconds": 0.05}}] * 800}
        ).json()["jobs"]
        stack.wait_status(backlog[20]["id"], "succeeded")
        # Past the first second: the long pulls an idle executor armed before the backlog came
        # (1 s, TASKYARD_EXECUTOR_ARMED_PULL_S) have expired by now.
        time.sleep(1.2)

        async def high_waiting_pulls() -> int:
            import nats

            from taskyard_common.settings import NatsSettings
            from taskyard_common.topology import Topology

            topo = Topology(NatsSettings(prefix=stack.prefix))
            nc = await nats.connect(stack.nats.url)
            try:
                info = await nc.jetstream().consumer_info(
                    topo.jobs_stream, topo.exec_durable("default", "high")
                )
                return info.num_waiting
            finally:
                await nc.close()

        assert run_async(high_waiting_pulls()) == 1  # the armed pull, while normal jobs run
        high = c.post("/api/v1/jobs", json={"type": "noop", "priority": "high"}).json()
        done = stack.wait_status(high["id"], "succeeded")
        normal = [stack.wait_status(j["id"], "succeeded", timeout=60) for j in backlog]
    stored = datetime.fromisoformat(high["created_at"].replace("Z", "+00:00")).timestamp()
    after = [j for j in normal if started_at(j) > stored]
    assert len(after) > 100  # the backlog was still there when the high job was stored
    # Only jobs delivered before it was stored (at most one round's pull) start between its
    # submit and its start.
    assert sum(1 for j in after if started_at(j) < started_at(done)) <= 16

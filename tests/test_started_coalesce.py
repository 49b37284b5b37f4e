"""A quick job's `started` rides in its outcome: one EVENTS message from the executor, and the
timeline still reads queued, started, outcome. Slower jobs, a zero window and a crash inside the
window behave as before (docs/architecture.md, "Lifecycle events")."""

import time

import httpx

from .stack import run_async, wait_until


def submit(stack, **body) -> dict:
    with stack.http() as c:
        r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()


def raw_events(stack, job_id: str) -> list[dict]:
    """The job's messages in EVENTS, in stream order: what its executors sent, on its own subject or in
    their batches (the API's `queued` is an announcement of the whole publish burst, not read here)."""

    async def go() -> list[dict]:
        import nats

        from taskyard_common.nats_util import read_subject
        from taskyard_common.schemas import message_events
        from taskyard_common.settings import NatsSettings
        from taskyard_common.topology import Topology

        topo = Topology(NatsSettings(prefix=stack.prefix))
        nc = await nats.connect(stack.nats.url)
        try:
            own = await read_subject(nc, topo.events_stream, topo.event_subject(job_id))
            batched = await read_subject(nc, topo.events_stream, topo.batch_subjects)
            sent = [(m.seq, i, e) for m in own for i, e in enumerate(message_events(m.data, False))]
            sent += [(m.seq, i, e) for m in batched for i, e in enumerate(message_events(m.data, True))]
            return [
                e.model_dump(mode="json")
                for _, _, e in sorted(sent, key=lambda t: t[:2])
                if e.job_id == job_id
            ]
        finally:
            await nc.close()

    return run_async(go())


def running_in_heartbeats(stack) -> set[str]:
    async def go() -> set[str]:
        import nats

        from taskyard_common.heartbeats import HeartbeatReader
        from taskyard_common.settings import NatsSettings
        from taskyard_common.topology import Topology

        nc = await nats.connect(stack.nats.url)
        try:
            beats = await HeartbeatReader(nc.jetstream(), Topology(NatsSettings(prefix=stack.prefix))).read()
            return {job.id for beat in beats for job in beat.running}
        finally:
            await nc.close()

    return run_async(go())


def assert_timeline_in_order(job: dict, outcome: str) -> dict:
    types = [e["type"] for e in job["timeline"]]
    assert types == ["queued", "started", outcome], types
    queued, started, ended = job["timeline"]
    assert queued["at"] <= started["at"] <= ended["at"]
    assert (started["attempt"], started["worker_id"]) == (1, job["worker_id"])
    assert job["started_at"] == started["at"] and job["attempt"] == 1
    return started


def test_a_quick_job_costs_one_executor_message_and_keeps_its_whole_timeline(stack):
    stack.start_api()
    executor = stack.start_executor()
    ids = [submit(stack, type="noop")["id"] for _ in range(10)]
    for job_id in ids:
        done = stack.wait_status(job_id, "succeeded")
        started = assert_timeline_in_order(done, "succeeded")
        assert started["data"]["wait_s"] >= 0  # what `started` carried, kept
        sent = raw_events(stack, job_id)
        assert [e["type"] for e in sent] == ["succeeded"], sent
        # The carried start names no attempt or worker of its own: they are the outcome's.
        assert sent[0]["worker_id"] == done["worker_id"]
        assert not {"attempt", "worker_id"} & set(sent[0]["data"]["started"])
    scraped = httpx.get(f"{executor.url}/metrics").text
    assert (
        "taskyard_executor_starts_coalesced 10.0" in scraped
        and "taskyard_executor_starts_alone 0.0" in scraped
    )


def test_a_job_slower_than_the_window_reports_started_on_its_own(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    job = submit(stack, type="async_sleep", payload={"seconds": 2})
    # The window (50 ms) passes long before the job ends: the job shows running meanwhile. (With
    # 0.6 s, a loaded box once projected `started` too late for any poll to see it running.)
    stack.wait_status(job["id"], "running", timeout=10)
    done = stack.wait_status(job["id"], "succeeded")
    assert_timeline_in_order(done, "succeeded")
    sent = raw_events(stack, job["id"])
    assert [e["type"] for e in sent] == ["started", "succeeded"]
    assert "started" not in sent[-1]["data"]


def test_a_zero_window_publishes_every_started_at_once(stack):
    stack.start_api()
    stack.start_executor(TASKYARD_EXECUTOR_STARTED_COALESCE_S="0")
    job = submit(stack, type="noop")
    done = stack.wait_status(job["id"], "succeeded")
    assert_timeline_in_order(done, "succeeded")
    assert [e["type"] for e in raw_events(stack, job["id"])] == ["started", "succeeded"]


def test_quick_retries_and_failures_coalesce_in_order(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    job = submit(stack, type="flaky", payload={"succeed_on": 2}, max_attempts=3, backoff={"base_s": 0.05})
    failed = submit(stack, type="always_fails", max_attempts=1)
    done = stack.wait_status(job["id"], "succeeded")
    types = [(e["type"], e["attempt"]) for e in done["timeline"]]
    assert types == [("queued", 0), ("started", 1), ("retrying", 1), ("started", 2), ("succeeded", 2)], types
    # The redelivery's start is journaled before its handler runs (journal.attempt_of counts
    # attempts from it); the first delivery's `started` rode in its outcome's batch.
    assert [e["type"] for e in raw_events(stack, job["id"])] == ["retrying", "started", "succeeded"]
    dead = stack.wait_status(failed["id"], {"failed", "dead"})
    assert [e["type"] for e in dead["timeline"]] == ["queued", "started", dead["status"]]


def test_an_executor_killed_inside_the_window_loses_nothing(stack):
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "2"
    stack.start_api()
    # A window longer than the job's sleep so far: its `started` is still held when the kill comes.
    first = stack.start_executor(handlers="handlers_for_tests", TASKYARD_EXECUTOR_STARTED_COALESCE_S="1")
    job = submit(stack, type="async_sleep", payload={"seconds": 0.8})

    def sleeping() -> bool:
        with stack.http() as c:
            lines = c.get(f"/api/v1/jobs/{job['id']}/logs").json()["lines"]
        return any("sleeping" in line["line"] for line in lines)

    wait_until(sleeping, timeout=10, what="the job to start")
    # The heartbeat shows it running at once, though its `started` is not on EVENTS yet.
    wait_until(lambda: job["id"] in running_in_heartbeats(stack), timeout=2, what="heartbeat")
    assert raw_events(stack, job["id"]) == []
    first.kill9()
    stack.start_executor(handlers="handlers_for_tests")
    done = stack.wait_status(job["id"], "succeeded", timeout=30)
    assert done["attempt"] == 2 and done["result"] == {"slept": 0.8}
    timeline = [(e["type"], e["attempt"]) for e in done["timeline"]]
    # Attempt 1 never reported; attempt 2's start shows it was lost, then the job ends.
    assert timeline == [("queued", 0), ("started", 2), ("worker_lost", 1), ("succeeded", 2)], timeline
    time.sleep(0.2)
    assert [e["type"] for e in raw_events(stack, job["id"])] == ["started", "succeeded"]


def test_quick_jobs_have_no_events_subject_of_their_own_and_a_journaled_job_keeps_one(stack):
    """nats-server keeps every EVENTS subject in memory for the stream's retention (issue 19):
    quick jobs' events ride in their executor's batches; a job whose later deliveries read its
    journal (here a retry) has its own subject, and its outcome is there for them to find."""
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    ids = [submit(stack, type="noop")["id"] for _ in range(30)]
    flaky = submit(stack, type="flaky", payload={"succeed_on": 2}, max_attempts=3, backoff={"base_s": 0.05})
    for job_id in ids:
        assert_timeline_in_order(stack.wait_status(job_id, "succeeded"), "succeeded")
    stack.wait_status(flaky["id"], "succeeded")

    async def subjects() -> dict[str, int]:
        import nats

        from taskyard_common.settings import NatsSettings
        from taskyard_common.topology import Topology

        topo = Topology(NatsSettings(prefix=stack.prefix))
        nc = await nats.connect(stack.nats.url)
        try:
            info = await nc.jetstream().stream_info(topo.events_stream, subjects_filter=">")
            return info.state.subjects or {}
        finally:
            await nc.close()

    by_subject = run_async(subjects())
    per_job = {s.rsplit(".", 1)[-1] for s in by_subject if not s.split(".")[2].startswith("_")}
    assert per_job == {flaky["id"]}, by_subject
    assert len(by_subject) <= 3, by_subject  # the flaky job's, one executor's batches, the announcements
    assert [e["type"] for e in raw_events(stack, flaky["id"])] == ["retrying", "started", "succeeded"]
    own = [count for s, count in by_subject.items() if s.endswith(flaky["id"])]
    assert own == [2]  # its second delivery's journaled start and outcome; the first one's were batched

"""Retries, dead letters, permanent errors, worker loss, drain and the outbox under faults."""

import asyncio
import time

import httpx
import pytest

from .invariants import query, wait_all_final
from .stack import run_async, wait_until


def submit(stack, **body) -> dict:
    with stack.http() as c:
        r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()


def types_of(job: dict) -> list[str]:
    return [e["type"] for e in job["timeline"]]


def test_retries_with_backoff_then_succeeds(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    job = submit(
        stack, type="flaky", payload={"succeed_on": 3}, max_attempts=5, backoff={"base_s": 0.1, "max_s": 0.3}
    )
    done = stack.wait_status(job["id"], "succeeded")
    assert done["result"] == {"attempt": 3} and done["attempt"] == 3
    retrying = [e for e in done["timeline"] if e["type"] == "retrying"]
    assert [e["attempt"] for e in retrying] == [1, 2]
    assert all(0 <= e["data"]["delay_s"] <= 0.3 for e in retrying)
    assert "flaky failure on attempt 2" in retrying[1]["data"]["error"]["message"]


def test_a_burst_of_retries_all_run_again(stack):
    # Each retry replays its job's events. With an ephemeral consumer per replay, ~1,000 of them hit
    # JetStream's consumer limit; the other retries then died as "worker lost" after 2 × ack_wait.
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "5"
    stack.start_api()
    for _ in range(2):
        stack.start_executor(handlers="handlers_for_tests", slots=32)
    spec = {"type": "chaos", "payload": {"fail_attempts": 1}, "max_attempts": 3, "backoff": {"base_s": 0.05}}
    with stack.http() as c:
        for _ in range(4):
            r = c.post("/api/v1/jobs:batch", json={"jobs": [spec] * 500})
            assert r.status_code == 201, r.text
    counts = wait_all_final(stack.db_url, 2000, timeout=120)
    assert counts == {"succeeded": 2000}, counts
    assert query(stack.db_url, "SELECT MIN(attempt), MAX(attempt) FROM jobs") == [(2, 2)]

    async def consumers_on_events() -> int:
        import nats

        nc = await nats.connect(stack.nats.url)
        info = await nc.jetstream().stream_info(f"{stack.prefix.upper()}_EVENTS")
        await nc.close()
        return info.state.consumer_count

    assert run_async(consumers_on_events()) == 1  # the api's projector


def test_out_of_attempts_is_dead_and_inspectable(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    job = submit(stack, type="always_fails", max_attempts=2, backoff={"base_s": 0.05, "max_s": 0.1})
    dead = stack.wait_status(job["id"], "dead")
    assert dead["attempt"] == 2
    assert (
        dead["error"]["message"] == "RuntimeError: this job never works"
        and "Traceback" in dead["error"]["traceback"]
    )
    assert types_of(dead).count("started") == 2

    async def dead_letter():
        import nats

        nc = await nats.connect(stack.nats.url)
        js = nc.jetstream()
        msg = await js.get_last_msg(f"{stack.prefix.upper()}_DEAD", f"{stack.prefix}.dead.default")
        await nc.close()
        return msg

    msg = run_async(dead_letter())
    assert job["id"].encode() in msg.data and msg.headers["Taskyard-Attempts"] == "2"


def test_permanent_error_fails_without_retry(stack):
    stack.start_api()
    stack.start_executor(handlers="handlers_for_tests")
    job = submit(stack, type="refuses", max_attempts=5)
    failed = stack.wait_status(job["id"], "failed")
    assert failed["attempt"] == 1 and failed["error"]["type"] == "PermanentError"
    assert "retrying" not in types_of(failed)


def test_outbox_crash_between_insert_and_publish_runs_job_exactly_once(stack):
    stack.start_api(TASKYARD_API_FAULT_CRASH_AFTER_INSERT="true")
    with stack.http() as c, pytest.raises(httpx.HTTPError):
        c.post("/api/v1/jobs", json={"type": "noop", "idempotency_key": "outbox-1"})
    stack.api.process.wait(10)
    assert stack.api.process.returncode == 99  # died after the commit, before the publish
    stack.start_api(TASKYARD_API_OUTBOX_GRACE_S="0.2", TASKYARD_API_OUTBOX_INTERVAL_S="0.2")
    stack.start_executor()
    with stack.http() as c:
        [pending] = c.get("/api/v1/jobs").json()["jobs"]
    done = stack.wait_status(pending["id"], "succeeded")
    time.sleep(1.5)  # give a duplicate delivery time to show up if there were one
    with stack.http() as c:
        again = c.get(f"/api/v1/jobs/{pending['id']}").json()
        assert c.get("/api/v1/jobs").json()["jobs"].__len__() == 1
    assert types_of(again).count("started") == 1 and types_of(again).count("succeeded") == 1
    assert done["attempt"] == 1


def test_outbox_resending_a_stored_job_stores_no_second_queued_event(stack):
    stack.start_api()
    job = submit(stack, type="noop")
    stack.wait_status(job["id"], "queued")
    stack.api.terminate()

    async def back_to_due() -> None:
        # As if the api had died after its publish, before recording the stream sequence.
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(stack.db_url)
        async with engine.begin() as conn:
            # The sequence and the `queued` row are recorded in one transaction: neither is there.
            await conn.execute(
                text("UPDATE jobs SET stream_seq = NULL, outbox_at = 0 WHERE id = :id"), {"id": job["id"]}
            )
            await conn.execute(text("DELETE FROM job_events WHERE job_id = :id"), {"id": job["id"]})
        await engine.dispose()

    run_async(back_to_due())
    api = stack.start_api(TASKYARD_API_OUTBOX_GRACE_S="0.2", TASKYARD_API_OUTBOX_INTERVAL_S="0.2")
    wait_until(lambda: "outbox: publishing 1 due jobs" in api.output(), what="the outbox's resend")
    stack.start_executor()
    done = stack.wait_status(job["id"], "succeeded")
    time.sleep(0.5)  # the projector's coalescing pause: a second `queued` would be in by now
    with stack.http() as c:
        done = c.get(f"/api/v1/jobs/{job['id']}").json()
    assert types_of(done) == ["queued", "started", "succeeded"]


def test_same_idempotency_key_returns_same_job(stack):
    stack.start_api()
    with stack.http() as c:
        first = c.post("/api/v1/jobs", json={"type": "noop", "idempotency_key": "k-1"})
        second = c.post("/api/v1/jobs", json={"type": "noop", "idempotency_key": "k-1"})
        other = c.post("/api/v1/jobs", json={"type": "noop", "idempotency_key": "k-2"})
        assert (first.status_code, second.status_code, other.status_code) == (201, 200, 201)
        assert first.json()["id"] == second.json()["id"] != other.json()["id"]
        assert len(c.get("/api/v1/jobs").json()["jobs"]) == 2


def test_kill_9_executor_mid_job_is_redelivered_and_timeline_shows_lost_worker(stack):
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "2"
    stack.start_api()
    first = stack.start_executor(handlers="handlers_for_tests")
    job = submit(stack, type="async_sleep", payload={"seconds": 1.5})
    running = stack.wait_status(job["id"], "running")
    first.kill9()
    stack.start_executor(handlers="handlers_for_tests")
    done = stack.wait_status(job["id"], "succeeded", timeout=30)
    assert done["attempt"] == 2 and done["worker_id"] != running["worker_id"]
    lost = [e for e in done["timeline"] if e["type"] == "worker_lost"]
    assert len(lost) == 1 and lost[0]["worker_id"] == running["worker_id"] and lost[0]["attempt"] == 1


def test_sigterm_drains_running_job_and_hands_back_the_rest(stack):
    stack.start_api()
    worker = stack.start_executor(
        handlers="handlers_for_tests", slots=2, TASKYARD_EXECUTOR_DRAIN_GRACE_S="1.5"
    )
    short = submit(stack, type="async_sleep", payload={"seconds": 0.8})
    long = submit(stack, type="async_sleep", payload={"seconds": 20})
    stack.wait_status(short["id"], "running")
    stack.wait_status(long["id"], "running")
    t0 = time.monotonic()
    assert worker.terminate() == 0
    assert time.monotonic() - t0 < 10
    assert stack.wait_status(short["id"], "succeeded")["attempt"] == 1
    # The long job was handed back at once (nak), not after ack_wait (30 s): a new worker gets it.
    stack.start_executor(handlers="handlers_for_tests")
    second = stack.wait_status(long["id"], "running", timeout=10)
    # A hand-back is no attempt: the job runs its first attempt again, and says where it was.
    assert second["attempt"] == 1
    assert "handed_back" in types_of(second)


def test_api_stopped_mid_projection_leaves_no_event_for_redelivery(stack):
    stack.start_api()
    stack.start_executor(slots=64)
    with stack.http() as c:
        ids = []
        for _ in range(4):
            r = c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop"}] * 500})
            ids += [j["id"] for j in r.json()["jobs"]]
    # Events are flowing: stop the api while its projector holds a batch.
    assert stack.api.terminate() in (0, -15), stack.api.output()[-2000:]

    async def projector_ack_pending() -> int:
        import nats

        from taskyard_common.settings import NatsSettings
        from taskyard_common.topology import Topology

        topo = Topology(NatsSettings(prefix=stack.prefix))
        nc = await nats.connect(stack.nats.url)
        try:
            info = await nc.jetstream().consumer_info(topo.events_stream, topo.projector_durable)
            return info.num_ack_pending
        finally:
            await nc.close()

    # What the projector had fetched was projected and acked, so the next api does not wait for
    # ack_wait (60 s) to see it again.
    assert run_async(projector_ack_pending()) == 0
    assert "Traceback" not in stack.api.output()
    stack.start_api()
    unfinished = [("status", s) for s in ("queued", "running")] + [("limit", "1")]
    with stack.http() as c:

        def unfinished_jobs() -> list:
            r = c.get("/api/v1/jobs", params=unfinished)
            assert r.status_code == 200, r.text
            return r.json()["jobs"]

        wait_until(lambda: unfinished_jobs() == [], 30, "all projected")
        bad = [("status", s) for s in ("failed", "dead", "cancelled")]
        assert c.get("/api/v1/jobs", params=bad).json()["jobs"] == []


def _swallow(stack, deliveries: int, ack_wait_s: float) -> None:
    """Take the default queue's next message `deliveries` times and never ack it, as a client
    behind a hung node does: each delivery counts for JetStream, none reaches a worker."""
    import nats

    async def go() -> None:
        nc = await nats.connect(stack.nats.url)
        try:
            sub = await nc.jetstream().pull_subscribe_bind(
                f"{stack.prefix}_exec_default_normal", stream=f"{stack.prefix.upper()}_JOBS"
            )
            for n in range(1, deliveries + 1):
                [msg] = await sub.fetch(1, timeout=ack_wait_s + 5)
                assert msg.metadata.num_delivered == n
                await asyncio.sleep(ack_wait_s + 0.2)  # its ack_wait runs out: delivered again
        finally:
            await nc.close()

    run_async(go())


def test_deliveries_that_never_reached_a_worker_spend_no_attempt(stack):
    """Four deliveries swallowed (more than the job's 3 attempts), then an executor takes the
    fifth: it is the job's second attempt (its first delivery's start is not journaled, so it is
    counted as one), and it runs. Counted from JetStream's delivery count it was attempt 5, and the
    job went `dead` as WorkerLost without ever running (docs/scaling.md)."""
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "1"
    stack.start_api()
    job = submit(stack, type="noop", max_attempts=3)
    _swallow(stack, 4, ack_wait_s=1.0)
    stack.start_executor()
    done = stack.wait_status(job["id"], {"succeeded", "dead"}, timeout=30)
    assert (done["status"], done["attempt"]) == ("succeeded", 2), (done["status"], done["error"])


def test_a_job_that_kills_its_worker_every_time_still_ends_dead_after_its_attempts(stack):
    """Each redelivery's start is journaled before its handler runs, so a poison job that kills
    the executor under it spends an attempt each time and goes `dead` (WorkerLost) after 3, not
    after JetStream's max_deliver (100)."""
    stack.extra_env["TASKYARD_NATS_ACK_WAIT_S"] = "1"
    stack.start_api()
    executor = stack.start_executor(handlers="handlers_for_tests")  # registers the job type
    job = submit(stack, type="kills_its_worker", max_attempts=3)
    for attempt in (1, 2, 3):
        assert executor.process.wait(30) == 137, f"attempt {attempt} did not kill its worker"
        # Not waited for: it takes the job (and dies) before it could answer /readyz.
        executor = stack.start_executor(handlers="handlers_for_tests", wait=False)
    done = stack.wait_status(job["id"], {"dead", "succeeded", "failed"}, timeout=30)
    assert done["status"] == "dead" and done["error"]["type"] == "WorkerLost", done["error"]
    starts = [e["attempt"] for e in done["timeline"] if e["type"] == "started"]
    # Attempt 1's `started` may have died with its executor inside the start-hold window.
    assert starts in ([1, 2, 3], [2, 3]), done["timeline"]

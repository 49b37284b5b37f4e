"""The reconciler makes up for what a crash took from JOBS or from the database (docs/operations.md,
"Durability"): a queued job whose message vanished is sent again and runs once; a running job whose
message and worker vanished is queued again as a lost attempt; a JOBS message whose row vanished
gets its row back. Faults are made by hand here (delete a message, kill a worker, delete a row);
A decision whose `decided` event is missing from the job's journal (an api killed between its
commit and its publish) is sent again, and a job that ran without it and parked again is resumed. tests/test_machine_crash.py and
tests/test_checkpoint_crash.py make them with a real crash."""

import shutil
import sqlite3
import time
from pathlib import Path

import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from .stack import metric, run_async, wait_until

# Judge a row once it has not moved for 2 s; a round every 0.5 s.
FAST = {"TASKYARD_API_RECONCILE_INTERVAL_S": "0.5", "TASKYARD_API_RECONCILE_MIN_AGE_S": "2"}


def short_window(stack) -> None:
    """A message deleted by hand keeps its id in JOBS' duplicate window (a store that loses a
    message loses its id with it), and a resend within it is a no-op: a 1 s window has passed by
    the time the reconciler judges the job (2 s)."""
    stack.extra_env["TASKYARD_NATS_DUPLICATE_WINDOW_S"] = "1"


def submit(stack, **body) -> dict:
    with stack.http() as c:
        r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()


def get(stack, job_id: str) -> dict:
    with stack.http() as c:
        return c.get(f"/api/v1/jobs/{job_id}").json()


def kinds(job: dict) -> list[str]:
    return [e["type"] for e in job["timeline"]]


def delete_message(stack, seq: int) -> None:
    """What a crash that lost the message does to JOBS (the executor's ack does the same)."""

    async def go() -> None:
        nc = await nats.connect(stack.nats.url)
        try:
            assert await nc.jetstream().delete_msg(f"{stack.prefix.upper()}_JOBS", seq)
        finally:
            await nc.close()

    run_async(go())


def test_a_queued_job_whose_message_vanished_is_republished_and_runs_once(stack):
    short_window(stack)
    stack.start_api(**FAST)
    lost = submit(stack, type="noop")
    kept = submit(stack, type="noop")
    assert lost["stream_seq"] and kept["stream_seq"]
    delete_message(stack, lost["stream_seq"])
    again = wait_until(
        lambda: (job := get(stack, lost["id"]))["stream_seq"] not in (None, lost["stream_seq"]) and job,
        timeout=15,
        what="the lost job republished",
    )
    [row] = [e for e in again["timeline"] if e["type"] == "reconciled"]
    assert row["data"]["action"] == "republished" and row["data"]["stream_seq"] == lost["stream_seq"]
    stack.start_executor()
    done = stack.wait_status(lost["id"], "succeeded")
    other = stack.wait_status(kept["id"], "succeeded")
    time.sleep(1.5)  # two more rounds: a false positive on the finished jobs would show
    done = get(stack, lost["id"])
    assert kinds(done) == ["queued", "reconciled", "queued", "started", "succeeded"]
    assert "reconciled" not in kinds(get(stack, kept["id"])) and other["attempt"] == 1
    with stack.http() as c:
        metrics = c.get("/metrics").text
    assert 'taskyard_api_reconciled_total{action="republished"} 1.0' in metrics


def test_a_running_job_whose_message_and_worker_vanished_is_requeued_as_a_lost_attempt(stack):
    short_window(stack)
    stack.start_api(**FAST)
    worker = stack.start_executor(handlers="handlers_for_tests")
    job = submit(stack, type="async_sleep", payload={"seconds": 60})
    running = stack.wait_status(job["id"], "running")
    worker.kill9()
    delete_message(stack, job["stream_seq"])  # its message lost too: no redelivery will come
    requeued = wait_until(  # queued again, and its new message published (the outbox's step)
        lambda: (j := get(stack, job["id"]))["status"] == "queued" and j["stream_seq"] is not None and j,
        timeout=20,  # the heartbeat expires (3 s at a 1 s interval), then two rounds
        what="the lost attempt requeued and published",
    )
    [row] = [e for e in requeued["timeline"] if e["type"] == "reconciled"]
    assert row["data"]["action"] == "requeued" and row["data"]["was"] == "running"
    assert row["worker_id"] == running["worker_id"] and row["attempt"] == 1
    assert requeued["stream_seq"] not in (None, job["stream_seq"])
    stack.start_executor(handlers="handlers_for_tests")
    again = wait_until(
        lambda: (j := get(stack, job["id"]))["status"] == "running" and j, timeout=15, what="started again"
    )
    assert kinds(again)[:4] == ["queued", "started", "reconciled", "queued"]
    assert kinds(again).count("started") == 2 and again["worker_id"] != running["worker_id"]


async def write(db_url: str, *statements: tuple[str, dict]) -> None:
    """Change the database behind the api's back, in one transaction."""
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            for sql, params in statements:
                await conn.execute(text(sql), params)
    finally:
        await engine.dispose()


async def forget(db_url: str, job_id: str) -> None:
    ids = {"id": job_id}
    await write(
        db_url, ("DELETE FROM job_events WHERE job_id = :id", ids), ("DELETE FROM jobs WHERE id = :id", ids)
    )


def republish_with_the_whole_id(stack, seq: int, job_id: str) -> int:
    """What an api from before 2026-12-07 left in JOBS: the job's message with the whole job id as
    its Nats-Msg-Id (now the id's 16-character tail). Returns the copy's stream sequence."""

    async def go() -> int:
        nc = await nats.connect(stack.nats.url)
        try:
            js, stream = nc.jetstream(), f"{stack.prefix.upper()}_JOBS"
            msg = await js.get_msg(stream, seq)
            ack = await js.publish(msg.subject, msg.data, headers={"Nats-Msg-Id": job_id})
            return ack.seq
        finally:
            await nc.close()

    copy = run_async(go())
    delete_message(stack, seq)
    return copy


def test_a_message_published_before_the_short_message_ids_is_still_the_jobs(stack, db_url):
    """An upgrade finds queued jobs whose messages carry the whole job id: the reconciler takes
    them for theirs (schemas.message_ids) and sends none again, so none runs twice."""
    stack.start_api(**FAST)
    job = submit(stack, type="noop")
    seq = republish_with_the_whole_id(stack, job["stream_seq"], job["id"])
    run_async(
        write(db_url, ("UPDATE jobs SET stream_seq = :seq WHERE id = :id", {"seq": seq, "id": job["id"]}))
    )
    time.sleep(3)  # rounds of the reconciler (2 s min age, 0.5 s interval): a resend would show
    assert "reconciled" not in kinds(get(stack, job["id"]))
    stack.start_executor()
    done = stack.wait_status(job["id"], "succeeded")
    assert kinds(done) == ["queued", "started", "succeeded"] and done["stream_seq"] == seq


def test_a_jobs_message_whose_row_vanished_gets_its_row_back_and_runs(stack):
    stack.start_api(**FAST)
    job = submit(stack, type="noop", labels={"team": "a"})
    stack.api.terminate()
    # As if SQLite had lost the commit that stored it (its message is in JOBS).
    run_async(forget(stack.db_url, job["id"]))
    stack.start_api(**FAST)  # the orphan scan runs at start
    back = wait_until(
        lambda: get(stack, job["id"]).get("status") == "queued", timeout=15, what="the row back"
    )
    assert back
    stack.start_executor()
    done = stack.wait_status(job["id"], "succeeded")
    assert done["labels"] == {"team": "a"} and done["stream_seq"] == job["stream_seq"]
    assert kinds(done) == ["reconciled", "started", "succeeded"]
    assert done["timeline"][0]["data"]["action"] == "recreated"


async def decide_and_die(db_url: str, job_id: str, ck_id: str) -> None:
    """What an api killed between a decision's commit and its publish leaves: the checkpoint
    approved and the job queued for its continuation (checkpoints.decide, lifecycle `Decided`),
    no `decided` event in the job's journal, the continuation due in the outbox."""
    now = time.time()
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE checkpoints SET status = 'approved', decided_at = :now, decided_by = 'admin',"
                    " reason = 'ok' WHERE id = :ck"
                ),
                {"now": now, "ck": ck_id},
            )
            await conn.execute(
                text(
                    "UPDATE jobs SET status = 'queued', resume = resume + 1, worker_id = NULL,"
                    " stream_seq = NULL, outbox_at = :now, updated_at = :now WHERE id = :id"
                ),
                {"now": now, "id": job_id},
            )
    finally:
        await engine.dispose()


def test_a_decision_missing_from_the_journal_is_sent_again_and_the_job_parked_again_resumes(stack, tmp_path):
    # 8 s: the job runs without its decision and parks again before the reconciler judges it.
    stack.extra_env.update(
        {**FAST, "TASKYARD_API_RECONCILE_MIN_AGE_S": "8", "TASKYARD_API_OUTBOX_GRACE_S": "0.5"}
    )
    stack.start_api()
    passes = tmp_path / "passes.log"
    stack.start_executor(handlers="handlers_for_tests")
    job = submit(stack, type="checkpoint_probe", payload={"log": str(passes)})
    ck = stack.wait_status(job["id"], "waiting")["checkpoint"]
    stack.api.kill9()
    run_async(decide_and_die(stack.db_url, job["id"], ck["id"]))
    stack.start_api()
    parked = wait_until(
        lambda: (j := get(stack, job["id"]))["status"] == "waiting" and kinds(j).count("waiting") == 2 and j,
        timeout=15,
        what="parked again",
    )
    assert "reconciled" not in kinds(parked), "the reconciler acted before the job parked again"
    done = stack.wait_status(job["id"], "succeeded", timeout=30)
    assert done["result"] == {"status": "approved", "reason": "ok"}
    assert passes.read_text().count("passed ") == 1
    rows = [e["data"] for e in done["timeline"] if e["type"] == "reconciled"]
    assert [r["action"] for r in rows] == ["decision_republished", "resumed"], rows
    assert {r["checkpoint_id"] for r in rows} == {ck["id"]}
    assert kinds(done).count("waiting") == 2 and kinds(done).count("decided") == 1
    with stack.http() as c:
        metrics = c.get("/metrics").text
    assert 'taskyard_api_reconciled_total{action="decision_republished"} 1.0' in metrics
    assert 'taskyard_api_reconciled_total{action="resumed"} 1.0' in metrics


@pytest.mark.one_database("sqlite", why="a restore is a file copy here; the replay's SQL is the projector's")
def test_a_database_restored_from_a_backup_gets_its_outcomes_back_without_running_again(stack, db_url):
    """The database goes back to a backup taken while 20 jobs were queued; they ran since, and the
    projector acked their outcomes. At start it projects those events again from EVENTS
    (Projector.catch_up): each job is `succeeded` once more, with a `reconciled` (replayed) row,
    and none is sent again to run a second time (before: the reconciler found their JOBS messages
    gone and republished all 20)."""
    path = db_url.split("///", 1)[1]
    api = stack.start_api(**FAST)
    with stack.http() as c:
        r = c.post("/api/v1/jobs:batch", json={"jobs": [{"type": "noop"}] * 20})
        ids = [job["id"] for job in r.json()["jobs"]]
    with sqlite3.connect(path) as live, sqlite3.connect(f"{path}.bak") as backup:
        live.backup(backup)
    stack.start_executor()
    for job_id in ids:
        stack.wait_status(job_id, "succeeded")
    api.kill9()
    for suffix in ("-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    shutil.copy(f"{path}.bak", path)
    api = stack.start_api(**FAST)
    for job_id in ids:
        stack.wait_status(job_id, "succeeded")
    time.sleep(3)  # rounds of the reconciler (2 s min age, 0.5 s interval): a resend would show
    for job_id in ids:
        job = get(stack, job_id)
        assert kinds(job) == ["queued", "started", "succeeded", "reconciled"], kinds(job)
        assert job["timeline"][-1]["data"]["action"] == "replayed" and job["attempt"] == 1
    assert metric(api.url, "taskyard_api_reconciled_total", action="replayed") == 20
    assert metric(api.url, "taskyard_api_reconciled_total", action="republished") == 0

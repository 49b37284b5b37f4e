"""Retention: finished jobs leave the database once they are older than the configured age."""

import secrets
import time

import httpx
from sqlalchemy import func, insert, select

from taskyard_api.db import make_engine, make_sessionmaker
from taskyard_api.ids import first_id_at, new_id
from taskyard_api.models import ApiKey, Checkpoint, Job, JobEventRow, ScheduleFire
from taskyard_api.retention import PRUNE_BATCH, prune_finished
from taskyard_common.settings import DbSettings

from .stack import run_async, wait_until

DAY = 86400.0


def _job(job_id: str, status: str, created: float, finished: float | None) -> dict:
    return dict(
        id=job_id, type="noop", queue="default", priority="normal", status=status, timeout_s=60,
        max_attempts=3, backoff={}, labels={}, owner_id="k1", generation=0, resume=0, attempt=1,
        last_event_seq=0, created_at=created, updated_at=finished or created, finished_at=finished,
    )  # fmt: skip


def _id_at(at: float) -> str:
    """A job id minted at `at` (new_id never goes back in time: it is monotonic per process)."""
    return first_id_at(at)[:10] + "".join(
        secrets.choice("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for _ in range(16)
    )


def test_first_id_at_orders_with_the_ids_minted_around_it():
    before = time.time()
    minted = new_id()
    assert first_id_at(before - 0.002) < minted < first_id_at(time.time() + 0.002)
    assert first_id_at(before) <= _id_at(before) < first_id_at(before + 0.002)


def test_prune_deletes_old_finished_jobs_with_their_timelines_and_keeps_the_rest(db_url):
    now = time.time()
    cutoff = now - 30 * DAY
    old = [_id_at(now - 40 * DAY) for _ in range(PRUNE_BATCH * 2 + 7)]  # three batches
    kept = {
        _id_at(now - 40 * DAY): ("queued", None),  # old but never ran
        _id_at(now - 40 * DAY): ("waiting", None),  # paused for a person for 40 days
        _id_at(now - 40 * DAY): ("failed", now - DAY),  # retried by hand last month, failed yesterday
        _id_at(now - 10 * DAY): ("succeeded", now - 10 * DAY),  # younger than the age
    }
    rows = [_job(i, ("succeeded", "dead")[n % 2], now - 40 * DAY, now - 35 * DAY) for n, i in enumerate(old)]
    rows += [_job(i, s, now - 40 * DAY, finished) for i, (s, finished) in kept.items()]

    async def go() -> tuple[int, int, set, int, int, int]:
        engine = make_engine(DbSettings(url=db_url))
        sessions = make_sessionmaker(engine)
        try:
            async with sessions() as session:
                await session.execute(
                    insert(ApiKey), [dict(id="k1", name="k", role="admin", key_hash="h", created_at=now)]
                )
                await session.execute(insert(Job), rows)
                await session.execute(
                    insert(JobEventRow),
                    [dict(job_id=r["id"], type="queued", at=now, attempt=0, data={}) for r in rows],
                )
                await session.execute(
                    insert(Checkpoint),
                    [
                        dict(
                            id=f"ck-{r['id']}",
                            job_id=r["id"],
                            generation=0,
                            name="deploy",
                            kind="approval",
                            message="",
                            approvers=["admin"],
                            on_reject="fail",
                            status="approved",
                            created_at=now,
                            expires_at=now,
                        )  # fmt: skip
                        for r in rows
                    ],
                )
                await session.execute(
                    insert(ScheduleFire),
                    [
                        dict(
                            schedule_id="S",
                            fire_at=n,
                            kind="timer",
                            outcome="created",
                            job_id=r["id"],
                            at=now,
                        )
                        for n, r in enumerate(rows)
                    ],
                )
                await session.commit()
            first = await prune_finished(sessions, cutoff)
            again = await prune_finished(sessions, cutoff)
            async with sessions() as session:
                left = set(await session.scalars(select(Job.id)))
                events = await session.scalar(select(func.count()).select_from(JobEventRow))
                checkpoints = await session.scalar(select(func.count()).select_from(Checkpoint))
                fires = await session.scalar(select(func.count()).select_from(ScheduleFire))
            return first, again, left, events, checkpoints, fires
        finally:
            await engine.dispose()

    first, again, left, events, checkpoints, fires = run_async(go())
    assert (first, again) == (len(old), 0)
    assert left == set(kept)
    assert events == checkpoints == fires == len(kept)


def test_the_api_prunes_finished_jobs_and_leaves_queued_ones(stack):
    stack.start_api(TASKYARD_API_FINISHED_JOBS_MAX_AGE_S="1", TASKYARD_API_PRUNE_INTERVAL_S="0.2")
    with stack.http() as c:
        waiting = c.post("/api/v1/jobs", json={"type": "noop", "queue": "nobody"}).json()
        stack.start_executor()
        done = c.post("/api/v1/jobs", json={"type": "noop"}).json()
        stack.wait_status(done["id"], "succeeded")
        wait_until(lambda: c.get(f"/api/v1/jobs/{done['id']}").status_code == 404, 15, "the job pruned")
        assert done["id"] not in {j["id"] for j in c.get("/api/v1/jobs").json()["jobs"]}
        # Queued for longer than the age, but not finished: kept, with its timeline and position.
        left = c.get(f"/api/v1/jobs/{waiting['id']}").json()
        assert left["status"] == "queued" and left["queue_position"] == 0
        assert [e["type"] for e in left["timeline"]] == ["queued"]
    metrics = httpx.get(f"{stack.api.url}/metrics", timeout=5).text
    assert "taskyard_api_jobs_pruned_total 1.0" in metrics

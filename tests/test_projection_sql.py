"""The projector's cached UPDATE, run for many rows through the driver on a real database."""

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskyard_api.db import make_engine
from taskyard_api.models import ApiKey
from taskyard_api.projector import _jobs, _update_jobs
from taskyard_common.settings import DbSettings

from .stack import run_async


def _row(job_id: str, status: str) -> dict:
    return dict(
        id=job_id, type="noop", queue="q", priority="normal", status=status, timeout_s=1,
        max_attempts=1, backoff={}, labels={}, owner_id="o", generation=0, resume=0, attempt=0,
        last_event_seq=0, created_at=0.0, updated_at=0.0,
    )  # fmt: skip


def test_a_non_final_outcome_leaves_rows_made_final_meanwhile_alone(db_url):
    async def body() -> dict:
        engine = make_engine(DbSettings(url=db_url))
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(ApiKey.__table__).values(
                        id="o", name="o", role="admin", key_hash="h", created_at=0
                    )
                )
                await conn.execute(
                    insert(_jobs), [_row("a", "queued"), _row("b", "cancelled"), _row("c", "queued")]
                )
            async with AsyncSession(engine) as session:
                # Several rows at once: the statement must work for many rows (an expanding IN did not).
                params = [{"b_id": i, "b_status": "running", "b_last_event_seq": 7} for i in "abc"]
                await _update_jobs(("status", "last_event_seq"), unless_final=True).run(session, params)
                # A final outcome is not guarded: `succeeded` may land on a row the API cancelled.
                await _update_jobs(("status",), unless_final=False).run(
                    session, [{"b_id": "b", "b_status": "succeeded"}]
                )
                await session.commit()
            async with engine.connect() as conn:
                return dict((await conn.execute(select(_jobs.c.id, _jobs.c.status))).all())
        finally:
            await engine.dispose()

    assert run_async(body()) == {"a": "running", "b": "succeeded", "c": "running"}

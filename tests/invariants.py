"""What must hold after any fault: every accepted job is final once, nothing lost or doubled."""

import asyncio
import concurrent.futures
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

FINAL = {"succeeded", "failed", "dead", "cancelled"}


async def _query(db_url: str, sql: str) -> list:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).all()
    finally:
        await engine.dispose()


def query(db_url: str, sql: str) -> list:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _query(db_url, sql)).result()


def wait_all_final(db_url: str, expected: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = dict(query(db_url, "SELECT status, COUNT(*) FROM jobs GROUP BY status"))
        if sum(counts.values()) == expected and set(counts) <= FINAL:
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"not all {expected} jobs final after {timeout}s: {counts}")
        time.sleep(0.5)


def assert_invariants(db_url: str, submitted: set[str], allow_cancel_race: bool = False) -> dict[str, int]:
    """Counts match the submissions; no job has two `succeeded` (or two final) events projected."""
    ids = {row[0] for row in query(db_url, "SELECT id FROM jobs")}
    assert ids == submitted, f"{len(submitted - ids)} lost, {len(ids - submitted)} unexpected"
    doubled = query(
        db_url,
        "SELECT job_id, type, COUNT(*) FROM job_events WHERE type IN ('succeeded', 'failed', 'dead') "
        "GROUP BY job_id, type HAVING COUNT(*) > 1",
    )
    assert not doubled, f"final events projected twice: {doubled[:5]}"
    if not allow_cancel_race:
        mixed = query(
            db_url,
            "SELECT job_id FROM job_events WHERE type IN ('succeeded', 'failed', 'dead', 'cancelled') "
            "GROUP BY job_id HAVING COUNT(*) > 1",
        )
        assert not mixed, f"jobs with two final events: {mixed[:5]}"
    stray = query(db_url, "SELECT COUNT(*) FROM job_events WHERE job_id NOT IN (SELECT id FROM jobs)")
    assert stray[0][0] == 0
    return dict(query(db_url, "SELECT status, COUNT(*) FROM jobs GROUP BY status"))

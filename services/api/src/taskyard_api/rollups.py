"""Per-minute rollups of what happened to jobs, per queue: the charts' and queue counts' source.

The projector tallies each batch's moves (`Tally.moved`) and adds them with one UPSERT per
(minute, queue, kind, error class, wait bucket) in the batch's own transaction, so a replayed
event (which moves nothing) is never counted twice and a rollup never runs ahead of the jobs.
Kinds: the outcomes succeeded / failed / dead / cancelled / retrying (failures with their error
class), and `started` with the job's queue wait in one of WAIT_BUCKETS (percentiles are read from
those buckets, so a p95 is "at most the bucket's upper bound").
"""

import bisect
import time
from collections import Counter
from typing import Any

from sqlalchemy import delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Insert

from .driver_sql import Many
from .failures import Invalid
from .lifecycle import JobRecord
from .models import rollups_table
from .schemas import iso

rollups = rollups_table
# Upper bounds (seconds) of the queue-wait buckets; the last one catches everything longer.
WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 86400)
OUTCOMES = ("succeeded", "failed", "dead", "cancelled", "retrying")
FAILED = ("failed", "dead")
# window → (span in minutes, minutes per bucket): 60, 96 and 84 bars.
WINDOWS = {"1h": (60, 1), "24h": (1440, 15), "7d": (10080, 120)}
KEEP_DAYS = 8
Key = tuple[int, str, str, str, int]  # minute, queue, kind, error class, wait bucket


def wait_bucket(seconds: float) -> int:
    return min(bisect.bisect_left(WAIT_BUCKETS, max(0.0, seconds)), len(WAIT_BUCKETS) - 1)


def error_class(job: JobRecord) -> str:
    kind = (job.error or {}).get("type")
    return str(kind)[:100] if kind else "unknown"


class Tally:
    """What one projected batch adds to the rollups."""

    def __init__(self) -> None:
        self.counts: Counter[Key] = Counter()

    def moved(self, old: JobRecord, new: JobRecord, at: float) -> None:
        """Count a job's move from `old` to `new` (made by an event at `at`), if it is one we count."""
        if new.status == old.status and new.attempt == old.attempt:
            return
        minute = int(at // 60)
        if new.status == "running" and old.status == "queued":
            # The wait from being queued (submitted, retried or resumed) to starting.
            self.counts[(minute, new.queue, "started", "", wait_bucket(at - old.updated_at))] += 1
        elif new.status in OUTCOMES and new.status != old.status:
            cls = error_class(new) if new.status in (*FAILED, "retrying") else ""
            self.counts[(minute, new.queue, new.status, cls, -1)] += 1

    def rows(self) -> list[dict[str, Any]]:
        # Sorted: two API processes upserting the same rows lock them in the same order.
        return [
            {"minute": k[0], "queue": k[1], "kind": k[2], "error_class": k[3], "wait_bucket": k[4], "n": n}
            for k, n in sorted(self.counts.items())
        ]


def _upsert(dialect: str) -> Insert:
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(rollups)
    return stmt.on_conflict_do_update(
        index_elements=["minute", "queue", "kind", "error_class", "wait_bucket"],
        set_={"n": rollups.c.n + stmt.excluded.n},
    )


# Built and compiled once: the projector adds a tally at every batch, often of one job.
_ADD = Many(_upsert)


async def add(session: AsyncSession, tally: Tally) -> None:
    """Add a batch's tally (one executemany UPSERT), inside the caller's transaction."""
    if tally.counts:
        await _ADD.run(session, tally.rows())


def percentile(histogram: list[int], p: float) -> float | None:
    """The upper bound of the wait bucket holding the p-th quantile (None without starts)."""
    total = sum(histogram)
    if not total:
        return None
    seen = 0
    for i, n in enumerate(histogram):
        seen += n
        if seen >= p * total:
            return float(WAIT_BUCKETS[i])
    return float(WAIT_BUCKETS[-1])


def window_of(window: str) -> tuple[int, int]:
    if window not in WINDOWS:
        raise Invalid(f"window: one of {', '.join(WINDOWS)}, not {window!r}")
    return WINDOWS[window]


async def series(sessions: async_sessionmaker[AsyncSession], window: str, queue: str | None) -> dict:
    """Per-bucket throughput by outcome, queue wait p50/p95 and failures by error class."""
    span, step = window_of(window)
    now_min = int(time.time() // 60)
    first = (now_min // step - (span // step - 1)) * step  # whole buckets, the last one running now
    # Integers spelled into the SQL: a bound parameter in GROUP BY is not "the same expression"
    # as the one in the select list to PostgreSQL.
    bucket = (rollups.c.minute // literal_column(str(int(step)))).label("b")
    query = (
        select(bucket, rollups.c.kind, rollups.c.error_class, rollups.c.wait_bucket, func.sum(rollups.c.n))
        .where(rollups.c.minute >= first)
        .group_by(bucket, rollups.c.kind, rollups.c.error_class, rollups.c.wait_bucket)
    )
    if queue:
        query = query.where(rollups.c.queue == queue)
    async with sessions() as session:
        rows = list(await session.execute(query))
    n_buckets = span // step
    counts: list[Counter[str]] = [Counter() for _ in range(n_buckets)]
    waits = [[0] * len(WAIT_BUCKETS) for _ in range(n_buckets)]
    by_error: Counter[str] = Counter()
    for b, kind, cls, wb, n in rows:
        i = int(b) - first // step
        if not 0 <= i < n_buckets:
            continue
        counts[i][kind] += int(n)
        if kind == "started":
            waits[i][wb] += int(n)
        elif kind in FAILED:
            by_error[cls] += int(n)
    buckets = [
        {
            "at": iso((first + i * step) * 60),
            **{kind: counts[i][kind] for kind in (*OUTCOMES, "started")},
            "wait_p50_s": percentile(waits[i], 0.5),
            "wait_p95_s": percentile(waits[i], 0.95),
        }
        for i in range(n_buckets)
    ]
    return {
        "window": window,
        "queue": queue,
        "bucket_s": step * 60,
        "buckets": buckets,
        "failures_by_error": dict(by_error.most_common(20)),
    }


async def recent_counts(sessions: async_sessionmaker[AsyncSession]) -> dict[str, dict[str, dict[str, int]]]:
    """queue → {"1h": {succeeded, failed, dead}, "24h": {...}} from the rollups."""
    now_min = int(time.time() // 60)
    last_hour = rollups.c.minute >= literal_column(str(now_min - 59))
    query = (
        select(rollups.c.queue, rollups.c.kind, last_hour, func.sum(rollups.c.n))
        .where(rollups.c.minute >= now_min - 1439, rollups.c.kind.in_(("succeeded", "failed", "dead")))
        .group_by(rollups.c.queue, rollups.c.kind, last_hour)
    )
    async with sessions() as session:
        rows = list(await session.execute(query))
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for queue, kind, last_hour, n in rows:
        per = counts.setdefault(queue, empty_counts())
        per["24h"][kind] += int(n)
        if last_hour:
            per["1h"][kind] += int(n)
    return counts


def empty_counts() -> dict[str, dict[str, int]]:
    return {w: {"succeeded": 0, "failed": 0, "dead": 0} for w in ("1h", "24h")}


async def prune(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Drop rollups older than KEEP_DAYS (the longest chart is 7 days)."""
    async with sessions() as session:
        await session.execute(
            delete(rollups).where(rollups.c.minute < (time.time() - KEEP_DAYS * 86400) // 60)
        )
        await session.commit()

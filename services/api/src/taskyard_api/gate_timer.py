"""One timer for every gate that opens at a time: a job's `run_at`, a rate key's next token, ….

Each source says when its next gate is due (one indexed query, not a scan) and opens what is due
when asked. The timer sleeps until the earliest due time over all sources, or until the API stores
something with an earlier time (`wake`), and at most `max_sleep_s`: another api process may have
stored it. Opening is guarded by the lifecycle core's guarded writes, so two api processes whose
timers fire together open each gate once.
"""

import asyncio
import logging
import time
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .http_metrics import GATE_DUE_LAG
from .job_store import JobStore, record_of
from .jobs import JobService
from .lifecycle import Due, JobRecord, transition
from .models import jobs_table

log = logging.getLogger("taskyard.api.gate_timer")

# Most due jobs one transaction opens; the next round (at once) takes the rest.
DUE_PAGE = 500


class TimerSource(Protocol):
    name: str

    async def next_due(self) -> float | None:
        """Epoch seconds of this source's next due gate, None when it has none."""
        ...

    async def fire(self, now: float) -> None:
        """Open what is due at `now` (a page of it: the next round takes the rest)."""
        ...


class GateTimer:
    def __init__(self, sources: list[TimerSource], wake: asyncio.Event, max_sleep_s: float = 1.0) -> None:
        self.sources, self.wake, self.max_sleep_s = list(sources), wake, max_sleep_s
        self._stopping = False

    def add(self, source: TimerSource) -> None:
        self.sources.append(source)
        self.wake.set()

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()

    async def run(self) -> None:
        """Supervised: fire what is due, sleep until the next due time, repeat."""
        while not self._stopping:
            # Cleared before reading the due times: a job stored while they are read wakes the
            # next sleep at once instead of being missed.
            self.wake.clear()
            sleep_s = await self.round()
            if sleep_s > 0:
                try:
                    await asyncio.wait_for(self.wake.wait(), sleep_s)
                except TimeoutError:
                    pass

    async def round(self) -> float:
        """Fire every due source; seconds until the next due gate (capped at max_sleep_s)."""
        nearest = self.max_sleep_s
        fired = False
        for source in self.sources:
            now = time.time()
            due = await source.next_due()
            if due is not None and due <= now:
                await source.fire(now)
                fired = True  # what is due next is read by the next round, right away
            elif due is not None:
                nearest = min(nearest, due - time.time())
        return 0.0 if fired else max(0.0, nearest)


class DueJobs:
    """Scheduled jobs (`run_at`, `delay_s`, a retry with a delay) whose time has come."""

    name = "run_at"

    def __init__(self, sessions: async_sessionmaker[AsyncSession], jobs: JobService) -> None:
        self.sessions, self.jobs = sessions, jobs

    async def next_due(self) -> float | None:
        j = jobs_table.c
        async with self.sessions() as session:
            due = await session.scalar(
                select(func.min(j.run_at)).where(j.status == "scheduled", j.run_at.is_not(None))
            )
        return float(due) if due is not None else None

    async def fire(self, now: float) -> None:
        j = jobs_table.c
        moved: list[JobRecord] = []
        async with self.sessions() as session:
            query = (
                select(jobs_table)
                .where(j.status == "scheduled", j.run_at <= now)
                .order_by(j.run_at, j.id)
                .limit(DUE_PAGE)
            )
            if session.get_bind().dialect.name == "postgresql":
                # One read that locks what it returns; another api process firing at the same
                # moment takes the next rows instead of waiting for these.
                query = query.with_for_update(skip_locked=True)
            for job in [record_of(row) for row in await session.execute(query)]:
                new = transition(job, Due(now))
                # `new is job`: another api process opened it first (or it was cancelled).
                if new is not job and await JobStore.save(session, job, new):
                    moved.append(new)
            await session.commit()
        for job in moved:
            if job.run_at is not None:
                GATE_DUE_LAG.observe(max(0.0, now - job.run_at))
        # Not waited for: the timer opens what is due next meanwhile (a publish and its recording
        # take longer than jobs due 10 ms apart leave).
        self.jobs.publisher.background.spawn(self._follow(moved))

    async def _follow(self, moved: list[JobRecord]) -> None:
        """Publish what opened (committed first: a crash before the publish leaves it due in the
        outbox) and hand the rest to their next gates."""
        try:
            await self.jobs.publish([job for job in moved if job.status == "queued"])
            await self.jobs.after_gates([job for job in moved if job.status != "queued"])
        except Exception:  # noqa: BLE001 - the outbox and the gate sweeper take over
            log.exception("gate timer: publishing %d opened jobs failed (the outbox retries)", len(moved))

"""Retention: finished jobs leave the database `finished_jobs_max_age_s` after they ended.

Without it the jobs table and the timelines only grow, and every listing and count with them.
The streams keep their own limits (EVENTS and LOGS: TASKYARD_NATS_*_MAX_AGE_S); a job's row is
kept at least as long by default, so its timeline outlives its log lines.
"""

import asyncio
import logging
import time

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.schemas import FINAL_STATES

from .http_metrics import JOBS_PRUNED
from .ids import first_id_at
from .models import Checkpoint, Job, JobEventRow, JobMessage, JobNotify, Notification, ScheduleFire

log = logging.getLogger("taskyard.api.retention")
# Jobs per transaction: SQLite statements run on the api's event loop, so a batch is a pause
# every request waits out; this keeps one well under 100 ms.
PRUNE_BATCH = 500
_FINAL = sorted(FINAL_STATES)


async def prune_finished(sessions: async_sessionmaker[AsyncSession], ended_before: float) -> int:
    """Delete the jobs that reached a final state before `ended_before` (epoch s), with their
    timelines, checkpoints, threads and schedule fires. Returns how many jobs went."""
    # A job is created before it ends, so its id is below the first id of `ended_before`: the
    # (status, id) index finds the candidates without a scan of the table.
    below = first_id_at(ended_before)
    pruned = 0
    while True:
        async with sessions() as session:
            # The row goes first, re-checked in the same statement: a job retried meanwhile is
            # not final any more and keeps its row and its timeline.
            gone = delete(Job).where(
                Job.id.in_(
                    select(Job.id)
                    .where(Job.status.in_(_FINAL), Job.id < below, Job.finished_at < ended_before)
                    .order_by(Job.id)
                    .limit(PRUNE_BATCH)
                    .scalar_subquery()
                ),
                Job.status.in_(_FINAL),
            )
            ids = list(await session.scalars(gone.returning(Job.id)))
            if ids:
                await session.execute(delete(JobEventRow).where(JobEventRow.job_id.in_(ids)))
                await session.execute(delete(Checkpoint).where(Checkpoint.job_id.in_(ids)))
                await session.execute(delete(JobMessage).where(JobMessage.job_id.in_(ids)))
                await session.execute(delete(Notification).where(Notification.job_id.in_(ids)))
                await session.execute(delete(JobNotify).where(JobNotify.job_id.in_(ids)))
                await session.execute(delete(ScheduleFire).where(ScheduleFire.job_id.in_(ids)))
            await session.commit()
        pruned += len(ids)
        JOBS_PRUNED.inc(len(ids))
        if len(ids) < PRUNE_BATCH:
            return pruned
        await asyncio.sleep(0)  # let requests in between batches


async def prune_old(sessions: async_sessionmaker[AsyncSession], max_age_s: float) -> None:
    """One retention round (every prune_interval_s, run by the api's Supervisor)."""
    cutoff = time.time() - max_age_s
    if pruned := await prune_finished(sessions, cutoff):
        log.info("retention: deleted %d jobs that ended more than %.0f s ago", pruned, max_age_s)
    # Schedule fires that created no job (skipped, failed) go as old as a job's would.
    async with sessions() as session:
        await session.execute(
            delete(ScheduleFire).where(ScheduleFire.job_id.is_(None), ScheduleFire.at < cutoff)
        )
        await session.commit()

"""Bulk actions by filter: retry, cancel or discard every job a search matches.

Done in pages of PAGE jobs, server-side, in id order up to the newest job that matched when the
action began (a job submitted meanwhile is not swept up, and none is visited twice). Retry and
cancel go through the lifecycle core (JobService.retry_many / cancel_many: guarded writes, one
transaction and one publish burst per page); discard deletes finished jobs as retention does.
Every action is recorded by `record_action`, the one place that writes who did it.
"""

import logging
import time
from typing import Literal

from pydantic import BaseModel, Field, StrictBool
from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.schemas import FINAL_STATES, JobState

from .auth import Principal
from .failures import Invalid
from .job_search import JobFilter, where
from .jobs import JobService
from .lifecycle import RETRYABLE_STATES
from .models import Checkpoint, JobEventRow
from .models import jobs_table as jobs

log = logging.getLogger("taskyard.api.bulk")
PAGE = 500
Action = Literal["retry", "cancel", "discard"]
# The states each action applies to: the rest of a filter's matches are left alone.
APPLIES_TO: dict[str, frozenset[str]] = {
    "retry": RETRYABLE_STATES,
    "cancel": frozenset(JobState) - FINAL_STATES,
    "discard": frozenset(FINAL_STATES),
}


class BulkRequest(BaseModel):
    model_config = {"extra": "forbid"}
    action: Action
    filter: JobFilter
    dry_run: StrictBool = Field(False, description="Only count the jobs the action would change")


def _matching(f: JobFilter, action: str, dialect: str) -> list:
    return [*where(f, dialect), jobs.c.status.in_(sorted(APPLIES_TO[action]))]


async def record_action(
    session: AsyncSession, who: Principal, action: str, f: JobFilter, job_ids: list[str]
) -> None:
    """Who did which bulk action, on the timeline of each job it changed (the audit trail until
    there is an audit log: switch this one function over to it). A discarded job has no timeline
    left, so a discard is logged instead."""
    if action == "discard":
        log.warning(
            "bulk discard by %s (%s): %d jobs, filter %s",
            who.name,
            who.id,
            len(job_ids),
            f.model_dump(exclude_defaults=True),
        )
        return
    if not job_ids:
        return
    data = {
        "by": who.name,
        "key_id": who.id,
        "action": action,
        "filter": f.model_dump(mode="json", exclude_defaults=True),
    }
    now = time.time()
    await session.execute(
        insert(JobEventRow),
        [{"job_id": i, "type": f"bulk_{action}", "at": now, "attempt": 0, "data": data} for i in job_ids],
    )


class BulkService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], jobs_service: JobService) -> None:
        self.sessions, self.jobs = sessions, jobs_service

    async def run(self, request: BulkRequest, who: Principal) -> dict:
        f, action = request.filter, request.action
        if f.is_empty():
            raise Invalid("filter: give at least one condition (a bulk action over every job is refused)")
        async with self.sessions() as session:
            dialect = session.get_bind().dialect.name
            conditions = _matching(f, action, dialect)
            matched, newest = (
                await session.execute(select(func.count(), func.max(jobs.c.id)).where(*conditions))
            ).one()
        answer = {"action": action, "dry_run": request.dry_run, "matched": int(matched), "changed": 0}
        if not matched:
            states = ", ".join(sorted(APPLIES_TO[action]))
            return answer | {
                "message": f"no job matches this filter in a state {action} applies to ({states}); nothing changed"
            }
        if request.dry_run:
            return answer | {"message": f"{matched} jobs would be {_done(action)}"}
        changed, after = 0, ""
        while True:
            async with self.sessions() as session:
                page = list(
                    await session.scalars(
                        select(jobs.c.id)
                        .where(*conditions, jobs.c.id > after, jobs.c.id <= newest)
                        .order_by(jobs.c.id)
                        .limit(PAGE)
                    )
                )
            if not page:
                break
            after = page[-1]
            changed += len(await self._apply(action, page, f, who))
        log.info("bulk %s by %s: %d of %d matched jobs changed", action, who.name, changed, matched)
        return answer | {"changed": changed, "message": f"{changed} of {matched} jobs {_done(action)}"}

    async def _apply(self, action: str, page: list[str], f: JobFilter, who: Principal) -> list[str]:
        if action == "retry":
            done = [job.id for job in await self.jobs.retry_many(page, who)]
        elif action == "cancel":
            done = [job.id for job in await self.jobs.cancel_many(page, who)]
        else:
            done = await self._discard(page)
        async with self.sessions() as session:
            await record_action(session, who, action, f, done)
            await session.commit()
        return done

    async def _discard(self, page: list[str]) -> list[str]:
        """Delete the finished jobs of a page with their timelines and checkpoints (as retention)."""
        final = sorted(FINAL_STATES)
        async with self.sessions() as session:
            gone = delete(jobs).where(jobs.c.id.in_(page), jobs.c.status.in_(final)).returning(jobs.c.id)
            ids = list(await session.scalars(gone))
            if ids:
                await session.execute(delete(JobEventRow).where(JobEventRow.job_id.in_(ids)))
                await session.execute(delete(Checkpoint).where(Checkpoint.job_id.in_(ids)))
            await session.commit()
        return ids


def _done(action: str) -> str:
    return {"retry": "retried", "cancel": "cancelled", "discard": "discarded"}[action]

"""Job records in the database: load, insert, and write back what the lifecycle core decided.

Every write of a decision is guarded by what the decision was made from (the job's status,
generation and resume), so two API processes, or the API and its projector, never overwrite each
other's move: a guard that no longer matches writes nothing, and the caller decides again.
"""

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from sqlalchemy import Row, Select, Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from . import approvals
from .db import listed, one_of
from .driver_sql import DriverInsert, Many
from .lifecycle import COLUMNS, JobRecord, changes, record_from, record_maker
from .models import checkpoints_table, events_table, jobs_table

_BY_ID = select(jobs_table).where(jobs_table.c.id == bindparam("job_id"))
_MARK_PUBLISHED = Many(
    lambda _dialect: (
        update(jobs_table)
        .where(
            jobs_table.c.id == bindparam("b_id"),
            jobs_table.c.generation == bindparam("b_generation"),
            jobs_table.c.resume == bindparam("b_resume"),
        )
        .values(stream_seq=bindparam("b_seq"), outbox_at=None)
    )
)
_TIMELINE = Many(lambda _dialect: insert(events_table))
# A checkpoint's id is one per job generation (and per question): writing it twice stores it once.
CHECKPOINTS_ONCE = Many.insert_ignoring(checkpoints_table, "id")


# A row of `select(jobs_table)` has the table's columns in the table's order.
_TABLE_ORDER = tuple(column.name for column in jobs_table.columns)
_from_table_row = record_maker(_TABLE_ORDER)


def record_of(row: Row[Any]) -> JobRecord:
    """The record of a row of `select(jobs_table)` (every column, in the table's order), or of a
    join's row with more columns (read by name; the extra ones are left out)."""
    if len(row) == len(_TABLE_ORDER):
        return _from_table_row(row)
    mapping = row._mapping
    return record_from(mapping[name] for name in COLUMNS)


def _queued_row(job: JobRecord, at: float) -> dict[str, Any]:
    """The timeline row of a message that reached JOBS (the API's own record, not an event)."""
    return {
        "job_id": job.id,
        "stream_seq": None,
        "type": "queued",
        "at": at,
        "attempt": 0,
        "worker_id": None,
        "data": {"generation": job.generation},
        "message": None,
    }


@cache
def _by_ids(dialect: str, lock: bool) -> Select:
    """The jobs of a list of ids (`one_of`); `lock`: locked for the transaction on PostgreSQL, in
    id order (so two transactions never wait on each other in a circle)."""
    query = select(jobs_table).where(one_of(jobs_table.c.id, dialect))
    if lock:
        query = query.order_by(jobs_table.c.id)
        if dialect == "postgresql":
            query = query.with_for_update()
    return query


@cache
def _due(dialect: str) -> Select:
    """Which of a list of jobs still wait for their sequence (mark_published), locked on PostgreSQL."""
    j = jobs_table.c
    query = select(j.id, j.generation, j.resume, j.status, j.started_at).where(
        one_of(j.id, dialect), j.outbox_at.is_not(None)
    )
    return query.with_for_update() if dialect == "postgresql" else query


def row_of(job: JobRecord) -> dict[str, Any]:
    return {name: getattr(job, name) for name in COLUMNS}


class JobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        # The submit path's INSERT goes straight through the driver (driver_sql).
        self._insert = DriverInsert(engine)

    async def insert(
        self, jobs: list[JobRecord], *others: tuple[Table, list[dict[str, Any]]]
    ) -> Callable[[], Awaitable[None]]:
        """New jobs and what comes with them (their edges, batch, workflow), in one transaction or
        not at all (IntegrityError on a taken idempotency key). Returns `durable` (DriverInsert):
        await it before answering."""
        asks = [approvals.checkpoint_row(job) for job in jobs if approvals.entered(None, job)]
        return await self._insert(
            (jobs_table, [row_of(job) for job in jobs]), *others, (checkpoints_table, asks)
        )

    @staticmethod
    async def add(session: AsyncSession, jobs: list[JobRecord]) -> None:
        """New jobs inside the session's transaction (callbacks created by the gate keeper)."""
        if jobs:
            await session.execute(insert(jobs_table), [row_of(job) for job in jobs])
            await _approval_asked(session, [job for job in jobs if approvals.entered(None, job)])

    @staticmethod
    async def get(session: AsyncSession, job_id: str) -> JobRecord | None:
        row = (await session.execute(_BY_ID, {"job_id": job_id})).first()
        return record_of(row) if row is not None else None

    @staticmethod
    async def get_many(session: AsyncSession, ids: list[str]) -> dict[str, JobRecord]:
        dialect = session.get_bind().dialect.name
        rows = await session.execute(_by_ids(dialect, False), {"ids": listed(ids, dialect)})
        return {row.id: record_of(row) for row in rows}

    @staticmethod
    async def lock_many(session: AsyncSession, ids: set[str]) -> dict[str, JobRecord]:
        """The jobs, their rows locked for this transaction on PostgreSQL (in id order, so two
        transactions never wait on each other in a circle); SQLite has one writer anyway."""
        if not ids:
            return {}
        dialect = session.get_bind().dialect.name
        rows = await session.execute(_by_ids(dialect, True), {"ids": listed(ids, dialect)})
        return {row.id: record_of(row) for row in rows}

    @staticmethod
    async def save(session: AsyncSession, old: JobRecord, new: JobRecord) -> bool:
        """Write `new` if the row is still `old` as far as a decision goes; False if it moved."""
        values = changes(old, new)
        if not values:
            return True
        done = await session.execute(
            update(jobs_table)
            .where(
                jobs_table.c.id == old.id,
                jobs_table.c.status == old.status,
                jobs_table.c.generation == old.generation,
                jobs_table.c.resume == old.resume,
            )
            .values(values)
        )
        if done.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
            return False
        # A job that waits for approval has its checkpoint from the same commit, whichever path
        # moved it there (released from its parents, its time came, retried); one that stops
        # waiting without a decision (cancelled) takes its question out of the inbox.
        if approvals.entered(old, new):
            await _approval_asked(session, [new])
        elif approvals.left(old, new):
            await _approval_withdrawn(session, old, new)
        return True

    @staticmethod
    async def mark_published(session: AsyncSession, jobs: list[JobRecord], at: float) -> list[JobRecord]:
        """Record the stream sequences of published messages (outbox done) and their `queued`
        timeline rows; returns the jobs this call recorded. One already recorded (by another api
        process, or before a crash and a resend), or retried or resumed meanwhile (a newer message
        is due), is left as it is: each message gets its sequence and its `queued` row once."""
        if not jobs:
            return []
        dialect = session.get_bind().dialect.name
        found = await session.execute(_due(dialect), {"ids": listed([job.id for job in jobs], dialect)})
        due = {(i, g, r): None if status == "queued" else started for i, g, r, status, started in found}
        marked = [job for job in jobs if (job.id, job.generation, job.resume) in due]
        if marked:
            params = [
                {"b_id": j.id, "b_generation": j.generation, "b_resume": j.resume, "b_seq": j.stream_seq}
                for j in marked
            ]
            await _MARK_PUBLISHED.run(session, params)
            # A resend after a crash can find the job started already (by the first message): its
            # `queued` then goes no later than its start, so the timeline stays in order.
            rows = []
            for job in marked:
                started = due[(job.id, job.generation, job.resume)]
                rows.append(_queued_row(job, min(at, started) if started is not None else at))
            await _TIMELINE.run(session, rows)
        return marked

    @staticmethod
    async def outbox_due(session: AsyncSession, before: float, limit: int = 1000) -> list[JobRecord]:
        """Jobs whose current message has waited for publishing since before `before`."""
        rows = await session.execute(
            select(jobs_table)
            .where(jobs_table.c.outbox_at < before)
            .order_by(jobs_table.c.outbox_at)
            .limit(limit)
        )
        return [record_of(row) for row in rows]

    @staticmethod
    async def by_idempotency_key(
        session: AsyncSession, owner_id: str, keys: list[str]
    ) -> dict[str, JobRecord]:
        if not keys:
            return {}
        rows = await session.execute(
            select(jobs_table).where(
                jobs_table.c.owner_id == owner_id, jobs_table.c.idempotency_key.in_(keys)
            )
        )
        return {row.idempotency_key: record_of(row) for row in rows}


async def _approval_asked(session: AsyncSession, jobs: list[JobRecord]) -> None:
    if not jobs:
        return
    await CHECKPOINTS_ONCE.run(session, [approvals.checkpoint_row(job) for job in jobs])


async def _approval_withdrawn(session: AsyncSession, old: JobRecord, new: JobRecord) -> None:
    c = checkpoints_table.c
    await session.execute(
        update(checkpoints_table)
        .where(c.id == approvals.checkpoint_id(old), c.status == "pending")
        .values(status="expired", decided_at=new.updated_at, decided_by="system", reason=f"job {new.status}")
    )

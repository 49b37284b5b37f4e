"""EVENTS sequences that go back: what the projector does after a crash took messages it had seen.

The projector's idempotency rests on EVENTS sequences only growing: a timeline row is keyed by its
event's place in EVENTS (unique), and a job moves only for events above its `last_event_seq`. A
machine crash can break that: JetStream acknowledges before it flushes (`sync_interval`), so a
stream can come back with its tail gone, or not at all (its metadata was never flushed either, and
whoever starts first creates it again from sequence 1). New events then reuse sequences the
database has already recorded: their timeline rows collide with old ones and are dropped, and a
job that had events before the crash ignores every event after it, forever (the crash test found
a requeued job whose second run never reached its row).

So the projector maps each raw sequence to an effective one. An epoch (`event_epochs` table) says:
raw sequences above `after_seq` get `shift` added. It is added when the projector (re)subscribes,
or sees a sequence at or below one it already saw, and finds the database holding an effective
sequence above the stream's last one: the stream went back. `after_seq` is where the messages the
database already recorded end: the stream still holds a prefix of what it had (what was flushed),
then what was published since the crash (executors may have run before the api came back). A
binary search finds the last raw sequence whose message is the one the database recorded at its
place (same job, type and time). The shift puts the next message right above everything
recorded. A raw sequence maps through the newest epoch whose `after_seq` it is above; messages at
or below keep the mapping they had, so they project as the replays they are.
"""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from .models import JobEventRow, epochs_table


@dataclass(frozen=True, slots=True)
class Epoch:
    after_seq: int
    shift: int


def effective(raw: int, epochs: list[Epoch]) -> int:
    """The sequence the projector records for EVENTS message `raw` (epochs oldest first)."""
    for epoch in reversed(epochs):
        if raw > epoch.after_seq:
            return raw + epoch.shift
    return raw


def raw_of(effective_seq: int, epochs: list[Epoch]) -> int:
    """The raw sequence of the message recorded at `effective_seq` (what `effective` maps back)."""
    for epoch in reversed(epochs):
        if effective_seq > epoch.after_seq + epoch.shift:
            return effective_seq - epoch.shift
    return effective_seq


async def recorded_max(session: AsyncSession, per_message: int) -> int:
    """The highest (effective) EVENTS message sequence the database has a timeline row of."""
    e = JobEventRow.__table__.c
    return (await session.scalar(select(func.max(e.stream_seq))) or 0) // per_message


def went_back(last_raw: int, recorded: int, epochs: list[Epoch]) -> bool:
    """Has the database recorded an effective message sequence above the stream's last one?"""
    return recorded > effective(last_raw, epochs)


async def last_recorded(first: int, last: int, recorded_here: Callable[[int], Awaitable[bool]]) -> int:
    """The highest raw sequence in [first − 1, last] up to which every message is the one the
    database recorded at its place (`recorded_here`, true of a prefix): a binary search."""
    low, high = max(first - 1, 0), last
    while low < high:
        mid = (low + high + 1) // 2
        if await recorded_here(mid):
            low = mid
        else:
            high = mid - 1
    return low


async def load(session: AsyncSession) -> list[Epoch]:
    c = epochs_table.c
    rows = await session.execute(select(c.after_seq, c.shift).order_by(c.id))
    return [Epoch(after, shift) for after, shift in rows]


# The first event of the message at (or after) a raw sequence: (raw seq, job id, type, at), or None.
Probe = Callable[[int], Awaitable[tuple[int, str, str, float] | None]]


async def check(
    session: AsyncSession, first_raw: int, last_raw: int, per_message: int, probe: Probe
) -> tuple[list[Epoch], Epoch | None]:
    """The epochs, and the one added if EVENTS went back (committed by the caller). One api
    process decides at a time (a transaction lock on PostgreSQL; SQLite has one writer)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('taskyard.event_epochs'))"))
    epochs = await load(session)
    e = JobEventRow.__table__.c
    recorded = await recorded_max(session, per_message)
    if not went_back(last_raw, recorded, epochs):
        return epochs, None

    async def recorded_here(raw: int) -> bool:
        found = await probe(raw)
        if found is None:
            return False
        seq, job_id, kind, at = found
        row = (
            await session.execute(
                select(e.job_id, e.type, e.at).where(e.stream_seq == effective(seq, epochs) * per_message)
            )
        ).first()
        return row is not None and (row.job_id, row.type) == (job_id, kind) and abs(row.at - at) < 1e-6

    after = await last_recorded(first_raw, last_raw, recorded_here)
    epoch = Epoch(after_seq=after, shift=recorded - after)
    await session.execute(insert(epochs_table).values(after_seq=after, shift=epoch.shift, at=time.time()))
    return [*epochs, epoch], epoch

"""The reconciler's decision check: a decided checkpoint whose `decided` event the stream lost.

A decision's API call answers once its row is committed (with the job's move); the `decided`
event it then publishes to the job's EVENTS subject is what the job's next run reads (its
journal). JetStream acknowledges before it flushes (`sync_interval`), so a machine crash can take
that event, and the job would run without its decision and park at the same checkpoint again, for
good. Each round (reconcile.py) reads the unfinished jobs that went past a checkpoint (`resume` >
0) and their decided checkpoints, reads each job's journal, and applies `decision_repair`: the
decision is sent again with its own message id (`decision_republished`), and a job parked again at
a decided checkpoint is queued again as the decision would have (`resumed`). Each is a
`reconciled` row on the job's timeline and a count in `taskyard_api_reconciled_total{action}`.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.nats_util import read_subject
from taskyard_common.schemas import FINAL_STATES
from taskyard_common.topology import Topology

from . import approvals
from .checkpoints import decided_event, decided_msg_id, decision_error
from .http_metrics import RECONCILED
from .job_store import JobStore, record_of
from .jobs import JobService
from .lifecycle import Decided, JobRecord, transition
from .models import Checkpoint, JobEventRow, jobs_table
from .reconcile_rule import decision_repair, row_key

log = logging.getLogger("taskyard.api.reconcile")
# Journals read at once.
CONCURRENT_READS = 32
# JetStream's duplicate window when a stream states none (EVENTS does not set one).
DEFAULT_WINDOW_S = 120.0


def timeline_row(job: JobRecord, at: float, data: dict, attempt: int, worker: str | None) -> dict:
    return {
        "job_id": job.id,
        "stream_seq": None,
        "type": "reconciled",
        "at": at,
        "attempt": attempt,
        "worker_id": worker,
        "data": data,
        "message": None,
    }


async def move_through_core(
    sessions: async_sessionmaker[AsyncSession], due: list[tuple[JobRecord, Any, dict, str | None]]
) -> list[JobRecord]:
    """Move each (job as a round read it, core event, `reconciled` row's data, its worker) through
    the lifecycle core, each with its timeline row, in one transaction; the jobs that moved. A job
    that moved since the round read it is left alone: the next round judges it again."""
    now = time.time()
    moved: list[JobRecord] = []
    async with sessions() as session:
        current = await JobStore.lock_many(session, {seen.id for seen, *_ in due})
        rows = []
        for seen, event, data, worker in due:
            job = current.get(seen.id)
            if job is None or row_key(job) != row_key(seen):
                continue
            new = transition(job, event)
            if new == job or not await JobStore.save(session, job, new):
                continue
            rows.append(timeline_row(job, now, data, job.attempt, worker))
            moved.append(new)
        if rows:
            await session.execute(insert(JobEventRow), rows)
        await session.commit()
    return moved


class DecisionCheck:
    def __init__(
        self,
        nc: NatsClient,
        topo: Topology,
        sessions: async_sessionmaker[AsyncSession],
        jobs: JobService,
        message_there: Callable[[JobRecord, asyncio.Semaphore], Awaitable[bool]],
        *,
        min_age_s: float,
        batch: int,
    ) -> None:
        self.nc, self.topo, self.sessions, self.jobs = nc, topo, sessions, jobs
        self.message_there = message_there
        self.min_age_s, self.batch = min_age_s, batch
        self._cursor = ""  # the last job id of the previous page
        # Checkpoint id → monotonic time before which its decision is not sent (its id is in
        # EVENTS' duplicate window), and that window (read once).
        self.quiet_until: dict[str, float] = {}
        self._window_s: float | None = None

    async def _page(self) -> tuple[list[JobRecord], list[Checkpoint], set[tuple[str, int]]]:
        """The next `batch` unfinished jobs past a checkpoint, their decided checkpoints, and
        which (job, generation) have a pending one."""
        j = jobs_table.c
        async with self.sessions() as session:
            rows = await session.execute(
                select(jobs_table)
                .where(j.status.not_in(sorted(FINAL_STATES)), j.resume > 0, j.id > self._cursor)
                .order_by(j.id)
                .limit(self.batch)
            )
            jobs = [record_of(row) for row in rows]
            self._cursor = jobs[-1].id if len(jobs) == self.batch else ""
            if not jobs:
                return [], [], set()
            found = list(
                await session.scalars(select(Checkpoint).where(Checkpoint.job_id.in_([x.id for x in jobs])))
            )
        decided = [ck for ck in found if ck.status != "pending"]
        pending = {(ck.job_id, ck.generation) for ck in found if ck.status == "pending"}
        return jobs, decided, pending

    async def _journal(self, job_id: str, gate: asyncio.Semaphore) -> set[str]:
        """The checkpoint ids whose `decided` event the job's EVENTS subject holds."""
        async with gate:
            stored = await read_subject(
                self.nc, self.topo.events_stream, self.topo.event_subject(job_id), leader=True
            )
        ids = set()
        for message in stored:
            event = json.loads(message.data)
            if event.get("type") == "decided":
                ids.add(event.get("data", {}).get("checkpoint_id"))
        return ids

    async def run_once(self) -> int:
        jobs, decided, pending = await self._page()
        if not decided:
            return 0
        by_id = {job.id: job for job in jobs}
        now = time.time()
        quiet = time.monotonic()
        self.quiet_until = {i: t for i, t in self.quiet_until.items() if t > quiet}
        gate = asyncio.Semaphore(CONCURRENT_READS)
        # Only the jobs that may need something: a decision old enough, of their generation.
        due = [
            ck
            for ck in decided
            if ck.generation == by_id[ck.job_id].generation
            and not approvals.is_gate(ck)
            and ck.decided_at is not None
            and now - ck.decided_at >= self.min_age_s
            and ck.id not in self.quiet_until
        ]
        if not due:
            return 0
        names = sorted({ck.job_id for ck in due})
        journals = dict(
            zip(names, await asyncio.gather(*(self._journal(i, gate) for i in names)), strict=True)
        )
        continuation: dict[str, bool] = {}
        republish: list[tuple[JobRecord, Checkpoint]] = []
        resume: dict[str, tuple[JobRecord, Checkpoint]] = {}
        for ck in due:
            job = by_id[ck.job_id]
            waiting_again = job.status == "waiting" and (job.id, job.generation) not in pending
            if waiting_again and job.id not in continuation:
                continuation[job.id] = job.outbox_at is not None or (
                    job.stream_seq is not None and await self.message_there(job, gate)
                )
            repair = decision_repair(
                job,
                ck_generation=ck.generation,
                ck_status=ck.status,
                gate=approvals.is_gate(ck),
                decided_at=ck.decided_at,
                in_journal=ck.id in journals[job.id],
                pending_here=(job.id, job.generation) in pending,
                continuation_due=continuation.get(job.id, False),
                goes_on=decision_error(ck, ck.status, ck.decided_by or "system", ck.reason) is None,
                now=now,
                min_age_s=self.min_age_s,
            )
            if repair.republish:
                republish.append((job, ck))
            if repair.resume:
                resume[job.id] = (job, ck)
        sent = await self._republish(republish) if republish else set()
        # A job whose decision could not be sent waits: a run now would not see it either.
        failed = {job.id for job, ck in republish if ck.id not in sent}
        again = [pair for job_id, pair in resume.items() if job_id not in failed]
        return len(sent) + (await self._resume(again) if again else 0)

    async def _republish(self, due: list[tuple[JobRecord, Checkpoint]]) -> set[str]:
        """Send the decisions again; returns the checkpoint ids sent."""
        acks = await self.jobs.publisher.publish_events_once(
            [(decided_event(ck, job), decided_msg_id(ck.id)) for job, ck in due]
        )
        now = time.time()
        sent: set[str] = set()
        rows = []
        for (job, ck), ack in zip(due, acks, strict=True):
            if ack is None:
                continue
            if ack.duplicate:
                # EVENTS still knows the message id (a crash takes the id with the message; a
                # message deleted by hand leaves it): the send goes through once the window passed.
                log.warning("reconciler: %s's decision is in EVENTS' duplicate window; again after it", ck.id)
                self.quiet_until[ck.id] = time.monotonic() + await self._duplicate_window()
                continue
            sent.add(ck.id)
            data = {
                "action": "decision_republished",
                "checkpoint_id": ck.id,
                "name": ck.name,
                "decision": ck.status,
                "why": "its decision was gone from the job's journal (lost in a crash): sent again",
            }
            rows.append(timeline_row(job, now, data, job.attempt, job.worker_id))
        if rows:
            async with self.sessions() as session:
                await session.execute(insert(JobEventRow), rows)
                await session.commit()
            RECONCILED.labels("decision_republished").inc(len(rows))
            log.warning("reconciler: sent %d decisions again that the jobs' journals had lost", len(rows))
        return sent

    async def _duplicate_window(self) -> float:
        if self._window_s is None:
            info = await self.nc.jetstream().stream_info(self.topo.events_stream)
            self._window_s = float(info.config.duplicate_window or DEFAULT_WINDOW_S)
        return self._window_s

    async def _resume(self, due: list[tuple[JobRecord, Checkpoint]]) -> int:
        """Queue again, through the core, jobs parked at a checkpoint already decided."""
        now = time.time()
        why = "it ran without its decision (lost in a crash) and parked again: queued again"
        moved = await move_through_core(
            self.sessions,
            [
                (
                    job,
                    Decided(ck.generation, now, None),
                    {
                        "action": "resumed",
                        "checkpoint_id": ck.id,
                        "name": ck.name,
                        "decision": ck.status,
                        "why": why,
                    },
                    None,
                )
                for job, ck in due
            ],
        )
        if moved:
            RECONCILED.labels("resumed").inc(len(moved))
            log.warning("reconciler: queued again %d jobs parked at a decided checkpoint", len(moved))
            await self.jobs.publish(moved)
        return len(moved)

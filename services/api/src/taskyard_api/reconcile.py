"""The reconciler: make up for what a machine crash took from JOBS or from the database.

Supervised (app.py: `reconciler`, at start and every `reconcile_interval_s`), one api process at
a time. Three checks, each a repair through the one lifecycle core and the one publish path:

- **Rows whose message is gone** (JetStream acknowledged it, then lost it before its flush): the
  rule is `reconcile_rule` (two rounds and the projector's progress tell "lost" from "taken by an
  executor"); the job is sent again with the same message id.
- **Messages whose row is gone** (SQLite lost its last commits: with
  TASKYARD_DB_SQLITE_SYNCHRONOUS=NORMAL the WAL is fsynced at checkpoints only; or a database
  restored from an older backup than JetStream's): the row is re-created from the message, which
  carries everything an executor needs, so the job runs and its events have a row to move. The
  message does not carry its submitter: the re-created row belongs to the oldest admin key. Read
  at start and then every `reconcile_orphan_scan_s`, in pages, as it reads all of JOBS.

- **Decisions whose `decided` event is gone** from the job's journal: sent again, and a job that
  parked again at its decided checkpoint queued again (reconcile_decisions).

Each repair is a `reconciled` row on the job's timeline and a count in
`taskyard_api_reconciled_total{action}`.
"""

import asyncio
import json
import logging
import time

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.nats_util import read_subject
from taskyard_common.schemas import JobSpec, message_ids
from taskyard_common.topology import Topology

from .db import one_process_at_a_time
from .http_metrics import RECONCILED
from .job_store import JobStore, record_of
from .jobs import JobService
from .lifecycle import RESENDABLE_STATES, JobRecord, Resend
from .models import ApiKey, JobEventRow, jobs_table
from .reconcile_decisions import DecisionCheck, move_through_core, timeline_row
from .reconcile_rule import Suspect, checked, row_key, verdict
from .workers import WorkerRegistry

log = logging.getLogger("taskyard.api.reconcile")
# Direct Gets in flight at once while checking a page of rows.
CONCURRENT_GETS = 128
# What a resend is called on the timeline and in the metric, and why it was done.
DONE = {"republish": "republished", "requeue": "requeued"}
WHY = {
    "republish": "its message was gone from JOBS (lost in a crash) and nothing had taken it: sent again",
    "requeue": "its message, its events and its worker were gone: the attempt is lost, queued again",
}
# JOBS messages read per page by the orphan scan.
SCAN_PAGE = 1000


def recreated(spec: JobSpec, seq: int, owner_id: str, now: float) -> JobRecord:
    """The row of a job the database lost, from its JOBS message: queued, its message in JOBS."""
    files = spec.inputs or spec.outputs
    return JobRecord(
        id=spec.id,
        type=spec.type,
        queue=spec.queue,
        priority=spec.priority,
        status="queued",
        payload=spec.payload,
        labels=spec.labels,
        timeout_s=spec.timeout_s,
        max_attempts=spec.max_attempts,
        backoff=spec.backoff.model_dump(),
        idempotency_key=None,
        owner_id=owner_id,
        created_at=spec.submitted_at,
        updated_at=now,
        generation=spec.generation,
        resume=spec.resume,
        stream_seq=seq,
        artifacts={"inputs": [i.model_dump() for i in spec.inputs], "outputs": spec.outputs}
        if files
        else None,
    )


class Reconciler:
    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        topo: Topology,
        sessions: async_sessionmaker[AsyncSession],
        jobs: JobService,
        workers: WorkerRegistry,
        *,
        min_age_s: float,
        batch: int,
        orphan_scan_s: float,
    ) -> None:
        self.nc, self.js, self.topo, self.sessions = nc, js, topo, sessions
        self.jobs, self.workers = jobs, workers
        self.min_age_s, self.batch, self.orphan_scan_s = min_age_s, batch, orphan_scan_s
        self.suspects: dict[str, Suspect] = {}
        # Job id → monotonic time before which it is not judged (its resend met JOBS' dedupe).
        self.quiet_until: dict[str, float] = {}
        self.duplicate_window_s = topo.settings.duplicate_window_s
        self._cursor = ""  # the last job id of the previous page: each round checks the next page
        self._next_scan = 0.0  # monotonic time of the next orphan scan (0: at the first round)
        # The projector's catch-up (Projector.caught_up): before it has projected again what the
        # database lost, the durable's ack floor overstates what the rows reflect.
        self.projector_caught_up: asyncio.Event | None = None
        self.decisions = DecisionCheck(
            nc, topo, sessions, jobs, self._message_there, min_age_s=min_age_s, batch=batch
        )

    async def run_once(self) -> int:
        """One round: check a page of rows (and the suspects), and JOBS for orphans when due.
        Returns how many jobs it repaired."""
        async with one_process_at_a_time(self.sessions, "reconciler") as mine:
            if not mine:
                self.suspects.clear()  # another process decides; notes of ours would be stale
                return 0
            repaired = 0
            if time.monotonic() >= self._next_scan:
                # First: at start, executors already take what JOBS holds, and a job whose message
                # is acked before its row is back stays without one (docs/operations.md).
                made, too_young = await self._recreate_orphans()
                repaired += made
                # A message too young to judge is judged as soon as it is old enough, not a whole
                # scan interval later (an api restarted within min_age_s of a lost commit).
                wait = self.orphan_scan_s
                if too_young is not None:
                    wait = min(wait, max(0.0, too_young + self.min_age_s - time.time()))
                self._next_scan = time.monotonic() + wait
            # Decisions before rows: a continuation sent again should find its decision there.
            repaired += await self.decisions.run_once()
            return repaired + await self._check_rows()

    # -- rows whose message is gone ------------------------------------------------------------

    async def _page(self, now: float) -> list[JobRecord]:
        """The suspects' rows, and the next `batch` rows old enough to check after the cursor."""
        j = jobs_table.c
        old_enough = [
            j.status.in_(sorted(RESENDABLE_STATES)),
            j.stream_seq.is_not(None),
            j.outbox_at.is_(None),
            j.updated_at < now - self.min_age_s,
        ]
        async with self.sessions() as session:
            rows = await session.execute(
                select(jobs_table).where(*old_enough, j.id > self._cursor).order_by(j.id).limit(self.batch)
            )
            page = [record_of(row) for row in rows]
            self._cursor = page[-1].id if len(page) == self.batch else ""  # wrap around at the end
            known = {job.id for job in page}
            if wanted := [i for i in self.suspects if i not in known]:
                page += (await JobStore.get_many(session, wanted)).values()
        return page

    async def _message_there(self, job: JobRecord, gate: asyncio.Semaphore) -> bool:
        """Does JOBS hold the job's current message at its stream sequence? A stream that lost its
        tail reuses sequences, so the message there must carry the job's message id (either form:
        `schemas.message_ids`)."""
        body = json.dumps({"seq": job.stream_seq}).encode()
        async with gate:
            reply = await self.nc.request(f"$JS.API.DIRECT.GET.{self.topo.jobs_stream}", body, timeout=5)
        headers = reply.headers or {}
        if status := headers.get("Status"):
            if status == "404":
                return False
            raise NatsError(
                f"direct get from {self.topo.jobs_stream}: {status} {headers.get('Description', '')}"
            )
        return headers.get("Nats-Msg-Id") in message_ids(job.id, job.generation, job.resume)

    async def _check_rows(self) -> int:
        now = time.time()
        quiet = time.monotonic()
        self.quiet_until = {i: t for i, t in self.quiet_until.items() if t > quiet}
        page = [job for job in await self._page(now) if checked(job) and job.id not in self.quiet_until]
        for gone in set(self.suspects) - {job.id for job in page}:
            del self.suspects[gone]  # moved on (finished, waiting, republished, pruned)
        if not page:
            return 0
        gate = asyncio.Semaphore(CONCURRENT_GETS)
        there = await asyncio.gather(*(self._message_there(job, gate) for job in page))
        missing = [job for job, present in zip(page, there, strict=True) if not present]
        for job, present in zip(page, there, strict=True):
            if present:
                self.suspects.pop(job.id, None)
        if not missing:
            return 0
        # Read after the messages were seen missing: every outcome stored before an ack that
        # removed one of them is at or below this sequence (reconcile_rule, step 2).
        watermark = (await self.js.stream_info(self.topo.events_stream)).state.last_seq
        projector = await self.js.consumer_info(self.topo.events_stream, self.topo.projector_durable)
        projected_upto = projector.ack_floor.stream_seq if projector.ack_floor else 0
        if self.projector_caught_up is not None and not self.projector_caught_up.is_set():
            projected_upto = 0  # its outcomes may be on their way back: judge nothing yet
        running = {r.id for view in await self.workers.workers() if view.live for r in view.heartbeat.running}
        due: list[tuple[JobRecord, str]] = []
        for job in missing:
            decided = verdict(
                job,
                message_there=False,
                worker_runs_it=job.id in running,
                suspect=self.suspects.get(job.id),
                projected_upto=projected_upto,
                now=now,
                min_age_s=self.min_age_s,
            )
            if decided == "suspect":
                self.suspects[job.id] = Suspect(row_key(job), watermark)
            elif decided in ("republish", "requeue"):
                due.append((job, decided))
            elif decided != "wait":
                self.suspects.pop(job.id, None)
        if due:
            await self._resend(due)
        return len(due)

    async def _resend(self, due: list[tuple[JobRecord, str]]) -> None:
        """Queue the jobs again through the core, each with its timeline row, in one transaction;
        then publish them (a crash before the publish leaves them due in the outbox)."""
        now = time.time()
        moved = await move_through_core(
            self.sessions,
            [
                (
                    seen,
                    Resend(now),
                    {
                        "action": DONE[action],
                        "stream_seq": seen.stream_seq,
                        "was": seen.status,
                        "why": WHY[action],
                    },
                    seen.worker_id,
                )
                for seen, action in due
            ],
        )
        done = {seen.id: DONE[action] for seen, action in due}
        counts: dict[str, int] = {}
        for job in moved:
            counts[done[job.id]] = counts.get(done[job.id], 0) + 1
        for action, count in counts.items():
            RECONCILED.labels(action).inc(count)
            log.warning("reconciler: %s %d jobs whose JOBS message was gone", action, count)
        for job in moved:
            self.suspects.pop(job.id, None)
        old_seq = {job.id: job.stream_seq for job, _ in due}
        for job in await self.jobs.publish(moved):
            if job.stream_seq is not None and job.stream_seq == old_seq[job.id]:
                # JetStream answered "duplicate" with the missing message's own sequence: its id is
                # still in the duplicate window (the message was deleted, or acked by an executor
                # whose outcome was lost; a store that lost the message lost its id too). The send
                # goes through once the window has passed: until then, leave the job be.
                log.warning(
                    "reconciler: job %s's message id is in JOBS' duplicate window; again after it", job.id
                )
                self.quiet_until[job.id] = time.monotonic() + self.duplicate_window_s

    # -- messages whose row is gone ------------------------------------------------------------

    async def _owner(self, session: AsyncSession) -> str | None:
        c = ApiKey.__table__.c
        return await session.scalar(
            select(c.id).where(c.role == "admin", c.revoked_at.is_(None)).order_by(c.created_at).limit(1)
        )

    async def _recreate_orphans(self) -> tuple[int, float | None]:
        """Read JOBS page by page; re-create the rows of messages older than min_age_s whose job the
        database does not know. Returns how many, and the oldest submit time of the messages it
        left for being too young (None: none)."""
        subject = f"{self.topo.prefix}.jobs.>"
        after, made = 0, 0
        too_young: float | None = None
        cutoff = time.time() - self.min_age_s
        while True:
            stored = await read_subject(self.nc, self.topo.jobs_stream, subject, after=after, limit=SCAN_PAGE)
            if not stored:
                return made, too_young
            after = stored[-1].seq
            parsed: dict[str, tuple[int, JobSpec]] = {}
            for message in stored:
                try:
                    spec = JobSpec.model_validate_json(message.data)
                except ValidationError:
                    continue  # not a job message: the executor terms it
                parsed[spec.id] = (message.seq, spec)
            # One lookup a page: a busy JOBS is full of jobs whose rows are there.
            async with self.sessions() as session:
                known = await JobStore.get_many(session, list(parsed))
            rowless = {job_id: found for job_id, found in parsed.items() if job_id not in known}
            old = {job_id: found for job_id, found in rowless.items() if found[1].submitted_at < cutoff}
            if old:
                made += await self._recreate(old)  # looks again in its own transaction
            for _, spec in rowless.values():
                if spec.submitted_at >= cutoff:
                    too_young = spec.submitted_at if too_young is None else min(too_young, spec.submitted_at)
            if len(stored) < SCAN_PAGE:
                return made, too_young

    async def _recreate(self, specs: dict[str, tuple[int, JobSpec]]) -> int:
        now = time.time()
        async with self.sessions() as session:
            known = await JobStore.get_many(session, list(specs))
            lost = [(seq, spec) for job_id, (seq, spec) in specs.items() if job_id not in known]
            if not lost:
                return 0
            owner = await self._owner(session)
            if owner is None:
                log.error(
                    "reconciler: %d JOBS messages have no row and there is no admin key to own them",
                    len(lost),
                )
                return 0
            jobs = [recreated(spec, seq, owner, now) for seq, spec in lost]
            await JobStore.add(session, jobs)
            why = (
                "the database had no row for this JOBS message (a commit lost in a crash): re-created from it"
            )
            await session.execute(
                insert(JobEventRow),
                [
                    timeline_row(
                        job, now, {"action": "recreated", "stream_seq": job.stream_seq, "why": why}, 0, None
                    )
                    for job in jobs
                ],
            )
            await session.commit()
        RECONCILED.labels("recreated").inc(len(jobs))
        log.warning(
            "reconciler: re-created %d jobs the database had lost from their JOBS messages", len(jobs)
        )
        return len(jobs)

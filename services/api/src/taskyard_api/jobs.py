"""Job lifecycle on the API side: submit (outbox), cancel, retry, and the outbox reconciler."""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

from fastapi import HTTPException
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskyard_common.schemas import FINAL_STATES, JobEvent
from taskyard_common.telemetry import current_traceparent, tracer, tracing_on
from taskyard_common.topology import QueueLimitReached

from .auth import Principal
from .driver_insert import DriverInsert
from .ids import JOB_ID, new_id
from .job_types import KnownTypes
from .models import Job
from .publisher import Publisher
from .schemas import JobCreate
from .settings import ApiSettings

log = logging.getLogger("taskyard.api.jobs")
_tracer = tracer("taskyard.api")

# Core (not ORM) UPDATE: an executemany with a status guard, so a row the projector already
# moved past `queued` is left alone.
_jobs = Job.__table__
_ALL_NULL = dict.fromkeys(_jobs.columns.keys())
_MARK_QUEUED = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("b_id"), _jobs.c.status == "pending")
    .values(status="queued", stream_seq=bindparam("b_seq"), updated_at=bindparam("b_now"))
)


def _queued_event(job: Job, at: float) -> JobEvent:
    # Sent before the publish ack, so without the stream sequence (the row gets it: QueuedMarker).
    return JobEvent.of(job, "queued", {"generation": job.generation}, at=at)


def _new_row(spec: JobCreate, owner: Principal, now: float) -> dict:
    """The `pending` row of a new job: every column a fresh job sets (the rest start NULL)."""
    row = spec.model_dump()
    row.update(
        id=new_id(now),
        status="pending",
        owner_id=owner.id,
        generation=0,
        resume=0,
        attempt=0,
        last_event_seq=0,
        created_at=now,
        updated_at=now,
    )
    row["traceparent"] = None
    if tracing_on():
        # The job's own span: its trace id is shown on the job and executors continue it.
        attrs = {"taskyard.job.id": row["id"], "taskyard.queue": row["queue"], "taskyard.type": row["type"]}
        with _tracer.start_as_current_span("taskyard.job.enqueue", attributes=attrs):
            row["traceparent"] = current_traceparent()
    return row


# How long queued-marking waits for more jobs before its UPDATE.
MARK_COALESCE_S = 0.05

# Most rows one grouped INSERT carries (like a jobs:batch request).
GROUP_MAX = 500


def _as_job(row: dict) -> SimpleNamespace:
    """A just-inserted row as plain attributes (what job_out and the publisher read): building ORM
    instances for rows that Core inserts cost ~8 % of the api's CPU on batch submits."""
    return SimpleNamespace(**{**_ALL_NULL, **row})


class SubmitGroup:
    """Group commit for single submits: requests that arrive while one INSERT is in flight share
    the next one (one transaction, one publish burst, one wake-up) instead of queueing for the
    database one by one. A lone request goes straight through.
    """

    def __init__(self, store: Callable[[list[dict]], Awaitable[list]]) -> None:
        self._store = store
        self._waiting: list[tuple[dict, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None  # the task writing groups, while there are any

    async def submit(self, row: dict) -> SimpleNamespace:
        """The job of `row`, once it is inserted and its publish was attempted (as for a batch)."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((row, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        return await done

    async def _write_all(self) -> None:
        # Ends (no await between the last check and returning) as soon as nobody waits, so a
        # later submit that finds it done starts a new one.
        while self._waiting:
            group, self._waiting = self._waiting[:GROUP_MAX], self._waiting[GROUP_MAX:]
            try:
                outcomes = await self._store([row for row, _ in group])
            except Exception as exc:  # noqa: BLE001 - every request of the group answers with it
                outcomes = [exc] * len(group)
            for (_, done), outcome in zip(group, outcomes, strict=True):
                if done.done():
                    continue  # that request was cancelled (client gone); its job still stands
                if isinstance(outcome, Exception):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)


class QueuedMarker:
    """After a job's publish is acked and its `queued` event sent: mark its row `queued`.

    Off the request path, and many jobs per transaction: a submit answers as soon as its message
    is in JOBS, and concurrent submits share one UPDATE. If this never happens (crash, database
    away) the row stays `pending`; the outbox reconciler republishes it (a no-op thanks to
    Nats-Msg-Id) and it comes back here.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], publisher: Publisher) -> None:
        self.sessions, self.publisher = sessions, publisher
        self._todo: list[Job] = []
        # Job id → stream seq of the jobs JetStream has acked whose rows are not marked yet.
        self._stored: dict[str, int] = {}
        self._events: list[asyncio.Future] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def add(self, jobs: list[Job], events: list[asyncio.Future]) -> None:
        """`events`: the publishes of these jobs' `queued` events, whose acks are checked here."""
        self._todo += jobs
        self._stored.update((job.id, job.stream_seq) for job in jobs)
        self._events += events
        self._wake.set()

    def stored_seq(self, job_id: str) -> int | None:
        """The stream seq of a job this API has published whose row still says `pending`: for
        up to MARK_COALESCE_S after its submit was answered `queued`."""
        return self._stored.get(job_id)

    async def run_forever(self) -> None:
        while True:
            await self._wake.wait()
            # Let a few submits gather: at 100 single submits/s one UPDATE per job was ~10 % of the
            # api's CPU (mostly event-loop turns for the driver's thread). The submits have
            # answered already; a cancel flushes first.
            await asyncio.sleep(MARK_COALESCE_S)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - rows stay pending; the reconciler retries them
                log.warning("marking jobs queued failed (the outbox will retry): %s", exc)
                await asyncio.sleep(1)

    async def flush(self) -> None:
        async with self._lock:
            self._wake.clear()
            todo, self._todo = self._todo, []
            events, self._events = self._events, []
            try:
                if todo:
                    now = time.time()
                    async with self.sessions() as session:
                        params = [{"b_id": j.id, "b_seq": j.stream_seq, "b_now": now} for j in todo]
                        await session.execute(_MARK_QUEUED, params)
                        await session.commit()
            finally:
                for job in todo:  # marked, or left `pending` for the outbox when the UPDATE failed
                    self._stored.pop(job.id, None)
                # Always: an unchecked publish whose ack never comes would hold a pending-ack slot.
                await self.publisher.events_stored(events)


class JobService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: Publisher,
        settings: ApiSettings,
        known_types: KnownTypes,
    ) -> None:
        self.sessions, self.publisher, self.settings = sessions, publisher, settings
        self.known_types = known_types
        self.marker = QueuedMarker(sessions, publisher)
        self._insert_jobs = DriverInsert(sessions.kw["bind"], _jobs)
        self._group = SubmitGroup(self._store_new)

    def _check_size(self, spec: JobCreate, where: str = "payload") -> None:
        size = spec.payload_size()
        if size > self.settings.max_payload_bytes:
            raise HTTPException(
                413, f"{where}: {size} bytes exceeds the limit of {self.settings.max_payload_bytes}"
            )

    async def submit(self, specs: list[JobCreate], owner: Principal) -> list[tuple[Job, bool]]:
        with _tracer.start_as_current_span("taskyard.submit", attributes={"taskyard.jobs": len(specs)}):
            return await self._submit(specs, owner)

    async def _submit(self, specs: list[JobCreate], owner: Principal) -> list[tuple[Job, bool]]:
        """Insert `pending` rows, publish them, mark them `queued`. Returns (job, created) in order.

        A crash after the insert leaves `pending` rows that the reconciler publishes later;
        Nats-Msg-Id = job id makes that republish a no-op if the first publish did land.
        """
        for i, spec in enumerate(specs):
            self._check_size(spec, "payload" if len(specs) == 1 else f"jobs[{i}].payload")
        # Checked for every item before anything is written: a batch is accepted whole or not at all.
        problems: list[str] = []
        for i, spec in enumerate(specs):
            problems += await self.known_types.problems(spec, None if len(specs) == 1 else i)
        if problems:
            raise HTTPException(422, "; ".join(problems[:10]))
        await self._check_queues(specs)
        now = time.time()
        if len(specs) == 1 and not specs[0].idempotency_key:
            return [(await self._group.submit(_new_row(specs[0], owner, now)), True)]
        async with self.sessions() as session:
            existing = await self._existing_by_key(session, specs, owner)
        results: list[tuple[Job, bool]] = []
        rows: list[dict] = []
        for spec in specs:
            if spec.idempotency_key and spec.idempotency_key in existing:
                results.append((existing[spec.idempotency_key], False))
                continue
            row = _new_row(spec, owner, now)
            job = _as_job(row)
            rows.append(row)
            results.append((job, True))
            if spec.idempotency_key:
                existing[spec.idempotency_key] = job
        try:
            await self._insert_jobs(rows)
        except IntegrityError:
            # A concurrent request inserted the same idempotency key first: answer with its job.
            if len(specs) != 1:
                raise HTTPException(409, "idempotency key submitted concurrently; retry the batch") from None
            async with self.sessions() as session:
                again = await self._existing_by_key(session, specs, owner)
            return [(again[specs[0].idempotency_key], False)]
        await self._after_insert([job for job, created in results if created])
        return results

    async def _check_queues(self, specs: list[JobCreate]) -> None:
        """A new queue gets its consumers before its first job is stored: past the install's queue
        limit the submit is refused and nothing is written (stored, it could never be published)."""
        first = {}
        for i, spec in enumerate(specs):
            first.setdefault(spec.queue, i)
        for queue, i in first.items():
            try:
                await self.publisher.ensure_queue(queue)
            except QueueLimitReached as exc:
                raise HTTPException(
                    409, f"{'queue' if len(specs) == 1 else f'jobs[{i}].queue'}: {exc}"
                ) from None
            except Exception as exc:  # noqa: BLE001 - NATS away: stored now, the outbox publishes it
                log.warning("could not create the consumers of queue %r (the outbox retries): %s", queue, exc)

    async def _store_new(self, rows: list[dict]) -> list[SimpleNamespace]:
        """SubmitGroup's writer: insert rows of jobs without idempotency keys, then publish them."""
        await self._insert_jobs(rows)
        jobs = [_as_job(row) for row in rows]
        await self._after_insert(jobs)
        return jobs

    async def _after_insert(self, jobs: list) -> None:
        if self.settings.fault_crash_after_insert:
            os._exit(99)
        await self.publish_pending(jobs)

    async def _existing_by_key(self, session: AsyncSession, specs: list[JobCreate], owner: Principal) -> dict:
        keys = [s.idempotency_key for s in specs if s.idempotency_key]
        if not keys:
            return {}
        rows = await session.scalars(
            select(Job).where(Job.owner_id == owner.id, Job.idempotency_key.in_(keys))
        )
        return {row.idempotency_key: row for row in rows}

    async def publish_pending(self, jobs: list[Job]) -> None:
        """Publish `pending` jobs; the acked ones are `queued` from then on (see QueuedMarker)."""
        if not jobs:
            return
        # The timeline's `queued` time is when the message went out: an executor may start the job
        # (and report `started`) before this API gets its publish acks back.
        published_at = time.time()
        seqs, events = await self.publisher.publish_jobs(
            jobs, [_queued_event(job, published_at) for job in jobs]
        )
        queued = [job for job in jobs if job.id in seqs]
        for job in queued:
            job.status, job.stream_seq = "queued", seqs[job.id]
        await self.publisher.wake(queued)
        self.marker.add(queued, events)

    async def get_owned(self, session: AsyncSession, job_id: str, who: Principal) -> Job:
        job = await session.get(Job, job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        if not who.at_least("admin") and job.owner_id != who.id:
            raise HTTPException(403, "only an admin or the job's submitter may change it")
        return job

    async def cancel(self, job_id: str, who: Principal) -> Job:
        """Cancel at once: drop the queued message and tell any executor running it to kill it."""
        await self.marker.flush()  # so a just-submitted job's row has its stream sequence
        async with self.sessions() as session:
            job = await self.get_owned(session, job_id, who)
            if job.status in FINAL_STATES:
                raise HTTPException(409, f"job {job_id} is already {job.status}")
            if job.stream_seq is not None:
                await self.publisher.delete_queued(job.stream_seq)
            await self.publisher.broadcast_cancel(job.id)
            now = time.time()
            job.status, job.finished_at, job.updated_at = "cancelled", now, now
            await session.commit()
        event = JobEvent.of(job, "cancelled", {"by": who.name}, attempt=job.attempt)
        await self.publisher.publish_events([event])
        return job

    async def retry(self, job_id: str, who: Principal) -> Job:
        """Run a finished job again as a new message generation (escapes the dedupe window)."""
        async with self.sessions() as session:
            job = await self.get_owned(session, job_id, who)
            if job.status not in ("failed", "dead", "cancelled"):
                raise HTTPException(
                    409, f"job {job_id} is {job.status}; only failed, dead or cancelled jobs retry"
                )
            job.generation += 1
            job.resume = 0
            job.status, job.attempt, job.error, job.result = "pending", 0, None, None
            job.finished_at, job.worker_id, job.updated_at = None, None, time.time()
            await session.commit()
        await self.publish_pending([job])
        return job

    async def reconcile_forever(self) -> None:
        """Outbox: republish rows left `pending` by a crash or a NATS outage."""
        while True:
            await asyncio.sleep(self.settings.outbox_interval_s)
            try:
                await self.reconcile_once()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive through DB/NATS outages
                log.warning("outbox reconcile failed, will retry: %s", exc)

    async def reconcile_once(self) -> int:
        cutoff = time.time() - self.settings.outbox_grace_s
        async with self.sessions() as session:
            rows = list(
                await session.scalars(
                    select(Job)
                    .where(Job.status == "pending", Job.updated_at < cutoff)
                    .order_by(Job.id)
                    .limit(1000)
                )
            )
        if rows:
            log.info("outbox: republishing %d pending jobs", len(rows))
            await self.publish_pending(rows)
        return len(rows)
